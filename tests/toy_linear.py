"""The toy adapter the evaluation tests share: y = a * x with a one-weight linear model, so
every adaptation step can be computed by hand (`sgd_step`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eaml_ssm.adaptation import AdaptationConfig, Adapter


def toy_adapter(w: float, lr: float = 0.1, **overrides: object) -> Adapter:
    """A stateless `Linear(1, 1)` with weight `w`: one plain SGD step per adaptation."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(w)
    cfg = AdaptationConfig(
        learning_rate=lr,
        num_steps=1,
        grad_clip_norm=None,
        experience_weight=0.0,
        max_loss_ratio=None,
        **overrides,  # type: ignore[arg-type]
    )
    return Adapter(model, cfg, None, "cpu")


def sgd_step(w: float, x: np.ndarray, y: np.ndarray, lr: float) -> float:
    """One SGD step on mean((w x - y)^2) by hand: grad = 2 mean((w x - y) x)."""
    return w - lr * 2.0 * float(np.mean((w * x - y) * x))
