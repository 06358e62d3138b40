"""The out-of-range split on the quantities that set the dynamics (not the raw parameters).

A parameter outside its training range does not make a task out of range: the dynamics
depend on combinations of the parameters, and a combination can stay inside the range the
training tasks cover (Pendulum's g/l with g and l both 1.6-2x larger). The evaluation's
out-of-range split is therefore defined on these quantities: `DYNAMICS_QUANTITIES` per
family, their ranges over the training box, and `draw_dynamics_ood`, tasks with every
quantity 20 % to 100 % beyond its range.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping

import numpy as np

from eaml_ssm.tasks import Interval, Task, get_family

DYNAMICS_QUANTITIES: dict[str, dict[str, Callable[[Mapping[str, float]], float]]] = {
    # thdot' = thdot + (3 g / (2 l) sin th + 3 / (m l^2) u) dt
    "Pendulum-v1": {
        "g/l": lambda p: p["g"] / p["l"],
        "1/(m l^2)": lambda p: 1.0 / (p["m"] * p["l"] ** 2),
    },
    # temp = (F u + m_p l thdot^2 sin th) / M;
    # thacc = (g sin th - cos th temp) / (l (4/3 - m_p cos^2 th / M)), M = m_c + m_p
    "CartPole-v1": {
        "F/M": lambda p: p["force_mag"] / (p["masscart"] + p["masspole"]),
        "g/l": lambda p: 9.8 / p["length"],
        "m_p/M": lambda p: p["masspole"] / (p["masscart"] + p["masspole"]),
    },
}


def dynamics_quantities(task: Task) -> dict[str, float]:
    """The quantities that set `task`'s dynamics (empty for a family without a table)."""
    table = DYNAMICS_QUANTITIES.get(task.env_id, {})
    return {name: float(f(task.params)) for name, f in table.items()}


def quantity_ranges(env_name: str) -> dict[str, Interval]:
    """Each dynamics quantity's range over the training box (every quantity is monotone in
    each parameter, so the extremes sit at the box's corners)."""
    family = get_family(env_name)
    table = DYNAMICS_QUANTITIES.get(env_name)
    if table is None:
        raise ValueError(
            f"no dynamics quantities for {env_name}; known: {sorted(DYNAMICS_QUANTITIES)}"
        )
    corners = np.array(np.meshgrid(*[p.train for p in family.params])).reshape(
        len(family.params), -1
    )  # (parameters, 2^parameters)
    out: dict[str, Interval] = {}
    for name, f in table.items():
        values = [f(dict(zip(family.param_names, c, strict=True))) for c in corners.T]
        out[name] = (float(min(values)), float(max(values)))
    return out


def outside_factor(value: float, interval: Interval) -> float:
    """How far `value` lies outside `interval`: value / hi above it, lo / value below it,
    1.0 inside (so 1.5 means 50 % beyond the nearest end of the range)."""
    lo, hi = interval
    if value > hi:
        return value / hi
    if value < lo:
        return lo / value
    return 1.0


DYNAMICS_OOD_FACTORS: Interval = (1.2, 2.0)  # every quantity 20 % to 100 % beyond its range


def draw_dynamics_ood(
    env_name: str, seed: int, factors: Interval = DYNAMICS_OOD_FACTORS, max_tries: int = 200_000
) -> Task:
    """A task whose every dynamics quantity lies outside its training range by a factor in
    `factors` (see `outside_factor`), drawn by rejection from log-uniform parameters in
    [default / 4, 4 x default]. Deterministic in (env_name, seed); split "ood"."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    lo_f, hi_f = factors
    if not 1.0 <= lo_f < hi_f:
        raise ValueError(f"factors must satisfy 1 <= low < high, got {factors}")
    ranges = quantity_ranges(env_name)
    family = get_family(env_name)
    table = DYNAMICS_QUANTITIES[env_name]
    rng = np.random.default_rng([zlib.crc32(env_name.encode()), 7, int(seed)])
    logs = np.log([[p.default / 4.0, p.default * 4.0] for p in family.params])  # (parameters, 2)
    for _ in range(max_tries):
        values = np.exp(rng.uniform(logs[:, 0], logs[:, 1]))
        params = {n: float(v) for n, v in zip(family.param_names, values, strict=True)}
        if all(lo_f <= outside_factor(f(params), ranges[q]) <= hi_f for q, f in table.items()):
            return Task(env_id=env_name, params=params, seed=int(seed), split="ood")
    raise ValueError(f"no {env_name} task with every dynamics quantity {factors} outside found")
