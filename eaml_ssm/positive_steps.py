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

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.nn import functional

from eaml_ssm.artifacts import RunDir
from eaml_ssm.config import RunConfig
from eaml_ssm.maml import MetaMAML
from eaml_ssm.run_data import Data
from eaml_ssm.runtime import resolve_device
from eaml_ssm.train import Trained, meta_train


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


def train_softplus(cfg: RunConfig, run: RunDir, data: Data) -> Trained:
    """Meta-train on the one loop (`eaml_ssm.train.meta_train`: the same seed, batches and
    steps as the pipeline's) with positive step sizes; no checkpoints (the evaluation caches
    the result per unit), the losses go to `run`/losses.txt."""
    positive = dataclasses.replace(cfg, learn_inner_lr=True)
    device = resolve_device(cfg.device)
    trained = meta_train(positive, data, None, device, maml_class=SoftplusStepMAML)
    run.path.mkdir(parents=True, exist_ok=True)
    (run.path / "losses.txt").write_text("\n".join(f"{v:.6g}" for v in trained.losses) + "\n")
    return trained


def min_step(maml: MetaMAML) -> float:
    """The smallest learned step size entry (negative for signed Meta-SGD)."""
    values = [float(torch.as_tensor(maml.inner_lr_for(n)).detach().min()) for n in maml.inner_lrs]
    return min(values) if values else math.nan


__all__ = ["SoftplusStepMAML", "inverse_softplus", "min_step", "train_softplus"]
