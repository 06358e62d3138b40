"""The one training loop, the runtime block and the sub-configs derived from RunConfig."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest
import torch

from eaml_ssm import runtime
from eaml_ssm.adaptation import AdaptationConfig, Adapter
from eaml_ssm.config import RunConfig
from eaml_ssm.models import build_maml, build_model
from eaml_ssm.run_adapter import adapter_for
from eaml_ssm.ssm import SSM
from eaml_ssm.tasks import get_family
from eaml_ssm.train import run_steps

TINY = RunConfig(state_dim=4, hidden_dim=8, num_layers=1, support_len=4, query_len=4)


# --- run_steps: the loop, with a non-meta (joint-style) update ----------------------------------


def test_run_steps_trains_a_plain_model() -> None:
    """A non-meta training (Adam on MSE, as the joint baseline) runs on the same loop."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)

    def update(step: int) -> float:
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return float(loss.detach())

    losses: list[float] = []
    seen: list[int] = []
    seconds = run_steps(update, 0, 50, losses, on_step=lambda k, _: seen.append(k), quiet=True)
    assert seen == list(range(50)) and len(losses) == 50 and seconds >= 0
    assert losses[-1] < 0.1 * losses[0]


def test_run_steps_stops_on_a_non_finite_loss() -> None:
    losses: list[float] = []
    values = iter([1.0, 0.5, float("nan"), 0.1])
    with pytest.raises(FloatingPointError, match="joint training diverged at step 3"):
        run_steps(lambda k: next(values), 1, 5, losses, what="joint training", quiet=True)
    assert losses == [1.0, 0.5]


# --- sub-configs: the same objects the former string-keyed overrides built -----------------------


def _old_overrides(cfg: RunConfig) -> dict[str, Any]:
    """The override dict the pipeline's adapter_for built before RunConfig.adaptation_config."""
    overrides: dict[str, Any] = {
        "experience_batch_size": cfg.experience_batch_size,
        "experience_weight": cfg.experience_weight,
        "seed": cfg.seed,
        "sequence_length": cfg.support_len + cfg.query_len,
        "burn_in": cfg.support_len,
    }
    if cfg.adapt_lr > 0:
        overrides["learning_rate"] = cfg.adapt_lr
        overrides["param_lrs"] = None
    if cfg.num_adapt_steps > 0:
        overrides["num_steps"] = cfg.num_adapt_steps
    return overrides


@pytest.mark.parametrize(
    "changes",
    [{}, {"adapt_lr": 0.02}, {"num_adapt_steps": 3, "experience_weight": 0.7}, {"seed": 5}],
)
def test_adaptation_config_matches_the_former_overrides(changes: dict[str, Any]) -> None:
    cfg = dataclasses.replace(TINY, **changes)
    fam = get_family(cfg.env_name)
    torch.manual_seed(0)
    maml = build_maml(cfg, build_model(cfg, fam, torch.device("cpu")))
    old = AdaptationConfig.from_maml(maml, **_old_overrides(cfg))
    assert cfg.adaptation_config(maml) == old
    extra = {"nonnegative_lrs": False, "experience_weight": 0.0}
    assert cfg.adaptation_config(maml, **extra) == AdaptationConfig.from_maml(
        maml, **{**_old_overrides(cfg), **extra}
    )
    # the Adapter: one update from the same window gives the same weights
    x, y = torch.randn(1, 8, fam.input_dim), torch.randn(1, 8, fam.target_dim)
    a = adapter_for(cfg, maml, None, None, torch.device("cpu")).fork()
    b = Adapter.from_maml(maml, None, "cpu", **_old_overrides(cfg)).fork()
    a.update_step(x, y)
    b.update_step(x, y)
    for (name, p), q in zip(a.model.named_parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q), name


def test_model_and_maml_configs_are_the_run_settings() -> None:
    fam = get_family(TINY.env_name)
    torch.manual_seed(3)
    model = build_model(TINY, fam, torch.device("cpu"))
    torch.manual_seed(3)
    old = SSM(
        state_dim=4, input_dim=fam.input_dim, output_dim=fam.target_dim, hidden_dim=8, num_layers=1
    )
    assert model.config == old.config
    for (name, p), q in zip(model.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    m = TINY.maml_config()
    assert (m.inner_lr, m.outer_lr, m.num_inner_steps) == (0.05, 1e-3, 2)
    assert m.learn_inner_lr and not m.first_order


def test_experience_weight_is_defaulted_once() -> None:
    assert RunConfig().experience_weight == AdaptationConfig().experience_weight
    assert RunConfig().experience_batch_size == AdaptationConfig().experience_batch_size


# --- the runtime block ------------------------------------------------------------------------


def test_setup_seeds_every_rng_and_sets_threads() -> None:
    before = torch.get_num_threads()
    try:
        draws = []
        for _ in range(2):
            dev = runtime.setup(7, threads=1, device="cpu")
            draws.append((random.random(), float(np.random.rand()), float(torch.rand(1))))
        assert dev == torch.device("cpu")
        assert draws[0] == draws[1]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_resolve_device_rules() -> None:
    cpu = torch.device("cpu")
    assert runtime.resolve_device("cpu") == cpu
    assert runtime.resolve_device(cpu) is cpu
    assert runtime.resolve_device("cpu", local_rank=1) == cpu
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        runtime.resolve_device("cuda:1", local_rank=0)  # a rank's GPU is its LOCAL_RANK
    if not torch.cuda.is_available():
        assert runtime.resolve_device("auto") == cpu
        assert runtime.resolve_device("auto", local_rank=3) == cpu
        with pytest.raises(ValueError, match="torch sees no CUDA device"):
            runtime.resolve_device("cuda")
    else:
        assert runtime.resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
