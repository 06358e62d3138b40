"""Exploration policies of collection: a whole action schedule per env, drawn up front.

Each env's schedule comes from its own seeded generator (so results do not depend on how
tasks are split between workers): ``"repeat"`` holds a uniformly random action for
1..``max_repeat`` steps; ``"uniform"`` draws i.i.d. actions; ``"ou"`` (Box actions only) is an
Ornstein-Uhlenbeck process squashed into the action bounds.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

POLICIES = ("repeat", "ou", "uniform")


def exploration_actions(
    action_space: spaces.Space,
    n_steps: int,
    rng: np.random.Generator,
    *,
    kind: str = "repeat",
    max_repeat: int = 4,
    ou_theta: float = 0.15,
    ou_sigma: float = 0.4,
) -> np.ndarray:
    """A whole exploration schedule: (l,) int64 for Discrete, (l, da) float32 for Box.

    ``repeat``: uniform random actions, each held 1..max_repeat steps (temporally correlated,
    so the state wanders further than with i.i.d. actions). ``uniform``: i.i.d. uniform.
    ``ou``: Box only, an OU process x <- x - theta x + sigma N(0, 1), tanh-squashed to bounds.
    """
    if kind not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {kind!r}")
    if max_repeat < 1:
        raise ValueError(f"max_repeat must be >= 1, got {max_repeat}")
    if kind == "ou":
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"policy 'ou' needs a Box action space, got {action_space}")
        return _ou_schedule(action_space, n_steps, rng, ou_theta, ou_sigma)
    holds = 1 if kind == "uniform" else max_repeat
    lengths = rng.integers(1, holds + 1, size=n_steps)  # enough holds to cover the l steps
    values = _uniform_actions(action_space, n_steps, rng)
    return np.repeat(values, lengths, axis=0)[:n_steps]


def _uniform_actions(space: spaces.Space, n_steps: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return (int(space.start) + rng.integers(0, int(space.n), size=n_steps)).astype(np.int64)
    if isinstance(space, spaces.Box):
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        return rng.uniform(low, high, size=(n_steps, low.shape[0])).astype(np.float32)
    raise ValueError(f"unsupported action space {space}; expected Discrete or Box")


def _ou_schedule(
    space: spaces.Box, n_steps: int, rng: np.random.Generator, theta: float, sigma: float
) -> np.ndarray:
    low, high = space.low.reshape(-1), space.high.reshape(-1)
    noise = rng.standard_normal((n_steps, low.shape[0]))  # (l, da)
    x = np.empty_like(noise)
    cur = np.zeros(low.shape[0])
    for t in range(n_steps):
        cur = cur - theta * cur + sigma * noise[t]
        x[t] = cur
    unit = 0.5 * (np.tanh(x) + 1.0)  # (l, da) in (0, 1)
    return (low + unit * (high - low)).astype(np.float32)
