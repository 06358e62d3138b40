"""The jointly trained (non-meta) baseline: an SSM trained with Adam on store windows, then
adapted like the meta-learned one (the `J_*` rows; `J_none` is the zero-shot reference)."""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import torch

from eaml_ssm.adaptation import Adapter
from eaml_ssm.config import RunConfig
from eaml_ssm.feed import StoreLoader, draw_seed
from eaml_ssm.models import build_model
from eaml_ssm.run_data import Data
from eaml_ssm.runtime import resolve_device
from eaml_ssm.ssm import SSM
from eaml_ssm.train import run_steps

if TYPE_CHECKING:
    from eaml_ssm.evaluate.trained import Models

_JOINT_TAG = 0x10E7  # seed-sequence tag of the joint baseline's batches


def train_joint(cfg: RunConfig, data: Data, steps: int, seq_len: int) -> SSM:
    """A non-meta SSM: Adam on store sequence windows, MSE from a zero state (the one
    training loop, `eaml_ssm.train.run_steps`, with a plain gradient step)."""
    device = resolve_device(cfg.device)
    model = build_model(cfg, data.family, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    batch = 4 * cfg.meta_batch_size
    # the one feed; draw k seeded by (seed, k, tag) so the batches do not depend on what
    # else used the store's generator before
    seed = draw_seed(cfg.seed, 0, _JOINT_TAG)
    with StoreLoader(data.store, device, data.normalizer, seed=seed) as loader:

        def update(step: int) -> float:
            x, y, _ = loader.sequences(batch, seq_len)  # (b, l, d), (b, l, o)
            pred, _ = model(x, model.init_hidden(batch))
            loss = torch.nn.functional.mse_loss(pred, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return float(loss.detach())

        run_steps(update, 0, steps, [], desc="joint", what="joint training", quiet=True)
    return model


def joint_adapter(models: Models, maml_base: Adapter) -> Adapter:
    """The joint model adapted the same way: same config, the meta-learned mean step size."""
    t0 = time.perf_counter()
    cfg = models.cfg
    model = train_joint(cfg, models.data, models.joint_steps, cfg.support_len + cfg.query_len)
    models.seconds["joint"] = round(time.perf_counter() - t0, 2)
    config = dataclasses.replace(maml_base.config, param_lrs=None, learning_rate=models.alpha)
    return Adapter(
        model,
        config,
        models.data.store,
        maml_base.device,
        transform=models.data.normalizer,
    )
