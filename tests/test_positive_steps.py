"""Meta-SGD with softplus step sizes: positive by construction, initialized at inner_lr,
read back as step sizes (not the raw parameters) by every consumer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from eaml_ssm.adaptation import learned_inner_lrs
from eaml_ssm.positive_steps import SoftplusStepMAML, inverse_softplus, min_step


def test_inverse_softplus_round_trips() -> None:
    alpha = torch.tensor([1e-4, 0.01, 1.0, 30.0], dtype=torch.float64)
    assert torch.allclose(nn.functional.softplus(inverse_softplus(alpha)), alpha, rtol=1e-9)
    with pytest.raises(ValueError, match="positive"):
        inverse_softplus(torch.tensor([0.0]))


def _task(seed: int) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(4):
        a = 3 * torch.randn(1, generator=g)
        xs, xq = torch.randn(8, 1, generator=g), torch.randn(8, 1, generator=g)
        out.append((xs, a * xs, xq, a * xq))
    return out


def test_softplus_steps_start_at_inner_lr_and_stay_positive() -> None:
    torch.manual_seed(0)
    model = nn.Linear(1, 1)
    maml = SoftplusStepMAML(model, inner_lr=0.05, outer_lr=0.5, learn_inner_lr=True)
    lrs = learned_inner_lrs(maml)
    assert all(torch.allclose(torch.as_tensor(v), torch.tensor(0.05)) for v in lrs.values())
    before = {k: v.detach().clone() for k, v in maml.inner_lrs.items()}
    for step in range(30):  # a large outer step moves the rates a lot
        maml.meta_update(_task(step))
    assert any(not torch.equal(before[k], v) for k, v in maml.inner_lrs.items())  # learned
    assert min_step(maml) > 0
    for name, value in learned_inner_lrs(maml).items():
        assert torch.allclose(torch.as_tensor(value), nn.functional.softplus(maml.inner_lrs[name]))
    with pytest.raises(ValueError, match="learn_inner_lr"):
        SoftplusStepMAML(nn.Linear(1, 1), inner_lr=0.05, learn_inner_lr=False)
