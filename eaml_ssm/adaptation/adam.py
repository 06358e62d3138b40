"""Functional Adam for the adapter's inner steps (moments restart with every update)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from eaml_ssm.adaptation.config import AdaptationConfig


class AdamState:
    """Functional Adam moments for one update (restarted every update_step)."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        self.m = [torch.zeros_like(p) for p in params.values()]
        self.v = [torch.zeros_like(p) for p in params.values()]

    def direction(self, grads: list[Tensor], step: int, cfg: AdaptationConfig) -> list[Tensor]:
        b1, b2 = cfg.adam_betas
        t = step + 1
        out = []
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / (1 - b1**t)
            v_hat = self.v[i] / (1 - b2**t)
            out.append(m_hat / (v_hat.sqrt() + cfg.adam_eps))
        return out
