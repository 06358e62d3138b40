"""`control_timings(device)`: how long one MPC control step takes on a device.

One control step = warm the hidden state on the latest real steps + random shooting over
N candidates for H steps with the learned model (the default `RunConfig` model size on
Pendulum-v1, random weights: the arithmetic does not depend on the values). Timed at
N x H = 500 x 20 (the issue's CPU budget) and 4000 x 30 (a GPU-sized budget); the median of
`repeats` steps after `warmup` untimed ones. Used by the data-path GPU check script.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from eaml_ssm.config import RunConfig
from eaml_ssm.control.model import SSMDynamics
from eaml_ssm.control.planners import ActionCoder, RandomShooting
from eaml_ssm.control.rewards import get_reward
from eaml_ssm.features import Normalizer
from eaml_ssm.ssm import SSM
from eaml_ssm.tasks import get_family

SIZES = ((500, 20), (4000, 30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def control_timings(
    device: torch.device | str = "cpu",
    *,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    repeats: int = 10,
    warmup: int = 3,
    env_name: str = "Pendulum-v1",
) -> dict[str, Any]:
    """ms per control step for each (N, H) in `sizes` -> {"device", "N x H": ms, ...}."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("control_timings: cuda was asked for, but torch sees no CUDA device")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got {repeats}, {warmup}")
    family = get_family(env_name)
    cfg = RunConfig()
    torch.manual_seed(0)
    model = SSM(
        cfg.state_dim,
        family.input_dim,
        family.target_dim,
        cfg.hidden_dim,
        num_layers=cfg.num_layers,
    )
    dyn = SSMDynamics(model, Normalizer(family.input_dim, family.target_dim), family, device=dev)
    coder = ActionCoder(family, dev)
    reward = get_reward(env_name)
    hist = (
        torch.randn(4, family.state_dim, device=dev),
        torch.rand(4, family.action_dim, device=dev),
    )
    state = torch.tensor([1.0, 0.0, 0.0], device=dev)[: family.state_dim]
    out: dict[str, Any] = {"device": str(dev), "threads": torch.get_num_threads()}
    for n, h in sizes:
        planner = RandomShooting(n, h, seed=0)
        planner.reset(device=dev)
        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(dev)
                t0 = time.perf_counter()
                dyn.prepare(hist)
                planner.plan(dyn, coder, reward, state)
                _sync(dev)
                if i >= warmup:
                    times.append(1000 * (time.perf_counter() - t0))
        times.sort()
        out[f"{n}x{h}_ms"] = times[len(times) // 2]
    return out
