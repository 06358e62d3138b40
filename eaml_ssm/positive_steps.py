"""Meta-SGD with positive step sizes by construction: alpha = softplus(rho).

Meta-SGD learns one step size per parameter entry; unconstrained, a few come out negative.
For the two inner steps they were trained for that is harmless, but a continual stream
applies them update after update (gradient *ascent* on those entries). Two fixes compete:
clamp at test time (`AdaptationConfig(nonnegative_lrs=True)`) or meta-train a positive
parameterization, so the rest of the step sizes are learned knowing none can go negative.
This module is the second; `evaluate`'s `maml_softplus` model rows measure it against the
clamp (`maml_pos`) on the same units.

The raw tensors `inner_lrs` hold rho (the meta-optimizer trains them); every reader of a
step size (`_lrs`, `inner_lr_for`, hence `learned_inner_lrs` and the Adapter) gets alpha.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional

from eaml_ssm import pipeline
from eaml_ssm.artifacts import RunDir
from eaml_ssm.config import RunConfig
from eaml_ssm.maml import MetaMAML


def inverse_softplus(alpha: Tensor) -> Tensor:
    """rho with softplus(rho) = alpha (alpha > 0), stable for small and large alpha."""
    if not bool((alpha > 0).all()):
        raise ValueError("softplus step sizes need a positive initial step size")
    return alpha + torch.log(-torch.expm1(-alpha))


class SoftplusStepMAML(MetaMAML):
    """MetaMAML whose learned step sizes are softplus(rho) > 0 (same constructor)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.learn_inner_lr:
            raise ValueError("SoftplusStepMAML needs learn_inner_lr=True")
        with torch.no_grad():  # the same leaf tensors: the optimizer keeps tracking them
            for rho in self.inner_lrs.values():
                rho.copy_(inverse_softplus(rho))

    def _lrs(self) -> Mapping[str, Tensor | float]:
        return {k: functional.softplus(v) for k, v in self.inner_lrs.items()}

    def inner_lr_for(self, name: str) -> float | Tensor:
        rho = super().inner_lr_for(name)
        return functional.softplus(rho) if isinstance(rho, Tensor) else rho


def train_softplus(cfg: RunConfig, run: RunDir, data: pipeline.Data) -> pipeline.Trained:
    """Meta-train like `pipeline.train_stage` (same seed, batches and steps) with positive
    step sizes; no checkpoints (the evaluation caches the result per unit)."""
    device = pipeline.resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = pipeline.build_model(cfg, data.family, device)
    maml = SoftplusStepMAML(
        model,
        inner_lr=cfg.inner_lr,
        outer_lr=cfg.outer_lr,
        first_order=cfg.first_order,
        num_inner_steps=cfg.num_inner_steps,
        learn_inner_lr=True,
    )
    trained = pipeline.Trained(model, maml, [], 0.0)
    t0 = time.perf_counter()
    loader = pipeline.meta_loader(cfg, data, device)  # the same draws as train_stage's
    try:
        for step in range(cfg.num_epochs):
            loss = maml.meta_update(pipeline.meta_batch(cfg, loader))
            if not np.isfinite(loss):
                raise FloatingPointError(f"softplus meta-training diverged at step {step}")
            trained.losses.append(loss)
    finally:
        loader.close()
    trained.seconds = time.perf_counter() - t0
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "losses.txt").write_text("\n".join(f"{v:.6g}" for v in trained.losses) + "\n")
    return trained


def min_step(maml: MetaMAML) -> float:
    """The smallest learned step size entry (negative for signed Meta-SGD)."""
    values = [float(torch.as_tensor(maml.inner_lr_for(n)).detach().min()) for n in maml.inner_lrs]
    return min(values) if values else math.nan


__all__ = ["SoftplusStepMAML", "inverse_softplus", "min_step", "train_softplus"]
