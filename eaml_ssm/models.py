"""The run's model and meta-learner, built from its RunConfig."""

from __future__ import annotations

import torch

from eaml_ssm.config import RunConfig
from eaml_ssm.maml import MetaMAML
from eaml_ssm.ssm import SSM
from eaml_ssm.tasks import TaskFamily


def build_model(cfg: RunConfig, family: TaskFamily, device: torch.device) -> SSM:
    """A freshly initialized SSM (from torch's global RNG) for the family's features."""
    return SSM.from_config(cfg.model_config(family.input_dim, family.target_dim)).to(device)


def build_maml(cfg: RunConfig, model: SSM, maml_class: type[MetaMAML] = MetaMAML) -> MetaMAML:
    """The meta-learner of ``model`` (``maml_class``: MetaMAML or a subclass of it)."""
    m = cfg.maml_config()
    return maml_class(
        model,
        inner_lr=m.inner_lr,
        outer_lr=m.outer_lr,
        first_order=m.first_order,
        num_inner_steps=m.num_inner_steps,
        learn_inner_lr=m.learn_inner_lr,
    )
