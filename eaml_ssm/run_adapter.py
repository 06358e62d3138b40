"""The run's Adapter, and the adaptation methods the pipeline and the control grid compare."""

from __future__ import annotations

from typing import Any

import torch

from eaml_ssm import protocol
from eaml_ssm.adaptation import Adapter, learned_inner_lrs
from eaml_ssm.config import RunConfig
from eaml_ssm.features import Normalizer
from eaml_ssm.maml import MetaMAML
from eaml_ssm.method_names import core_method, label, pipeline_keys
from eaml_ssm.run_data import Data
from eaml_ssm.runtime import resolve_device
from eaml_ssm.train import Trained


def adapter_for(
    cfg: RunConfig,
    maml: MetaMAML,
    store: Any,
    normalizer: Normalizer,
    device: torch.device,
    **extra: Any,
) -> Adapter:
    """The run's Adapter on ``maml.model`` (``extra``: AdaptationConfig fields on top)."""
    config = cfg.adaptation_config(maml, **extra)
    # the learned per-entry step sizes, unless the config sets the step sizes itself
    own = cfg.adapt_lr > 0 or "param_lrs" in extra
    lrs = {} if own else learned_inner_lrs(maml)
    return Adapter(maml.model, config, store, device, param_lrs=lrs, transform=normalizer)


def base_adapter(cfg: RunConfig, trained: Trained, data: Data, **extra: Any) -> Adapter:
    """The run's Adapter at the trained weights (``extra``: AdaptationConfig fields on top)."""
    device = resolve_device(cfg.device)
    return adapter_for(cfg, trained.maml, data.store, data.normalizer, device, **extra)


def methods(cfg: RunConfig, base: Adapter) -> dict[str, tuple[Adapter, bool]]:
    """label -> (adapter at the meta-learned weights, adapts?) for `pipeline_keys`.

    The hybrid method runs twice: with the default `replay_live` and with the other choice
    (replay of old tasks only, or also of the live stream written into the store)."""
    out = {}
    for key in pipeline_keys(cfg.experience_weight, base.config.replay_live):
        adapts, fields = core_method(key)
        out[label(key)] = (protocol.variant(base, **fields), adapts)
    return out
