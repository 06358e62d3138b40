"""One task as a stream: `rollout` steps a single env (episodes reset and continued).

Used for test streams (online evaluation); rows as `eaml_ssm.collect` stores them.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from eaml_ssm.collect.exploration import exploration_actions
from eaml_ssm.features import encode_inputs, encode_targets
from eaml_ssm.tasks import Task, TaskFamily


@dataclass(frozen=True)
class Stream:
    """``l`` consecutive env steps of one task (episodes reset and continued)."""

    task: Task
    states: np.ndarray  # (l, ds) float32
    actions: np.ndarray  # (l,) int64 for Discrete, (l, da) float32 for Box
    next_states: np.ndarray  # (l, ds) float32: the true successor (final obs at an episode end)
    starts: np.ndarray  # (l,) bool: True where a new episode begins at this step

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw model rows (inputs (l, d), targets (l, o)), as stored."""
        fam = self.task.family
        return encode_inputs(fam, self.states, self.actions), encode_targets(
            fam, self.states, self.next_states
        )


Policy = Callable[[np.ndarray], Any]


def rollout(
    task: Task,
    n_steps: int,
    policy: Policy | str = "repeat",
    *,
    seed: int = 0,
    max_repeat: int = 4,
) -> Stream:
    """Roll `task` forward `n_steps` steps (resetting at episode ends) and return the stream.

    `policy` is an exploration kind (see `exploration_actions`) or a callable
    ``state (ds,) -> action``. The same (task, policy, seed) gives the same stream.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    fam = task.family
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    schedule = None
    if isinstance(policy, str):
        schedule = exploration_actions(
            fam.action_space, n_steps, rng, kind=policy, max_repeat=max_repeat
        )
    elif not callable(policy):
        raise TypeError(f"policy must be a kind name or a callable, got {type(policy).__name__}")
    env = task.make_env()
    try:
        return _roll(env, task, fam, n_steps, schedule, policy, seed)
    finally:
        env.close()


def _roll(
    env: gym.Env,
    task: Task,
    fam: TaskFamily,
    n_steps: int,
    schedule: np.ndarray | None,
    policy: Any,
    seed: int,
) -> Stream:
    states = np.empty((n_steps, fam.state_dim), dtype=np.float32)  # (l, ds)
    nexts = np.empty_like(states)  # (l, ds)
    starts = np.zeros(n_steps, dtype=bool)
    actions: list[Any] = []
    obs, _ = env.reset(seed=seed)
    starts[0] = True
    for t in range(n_steps):
        a = schedule[t] if schedule is not None else policy(np.asarray(obs))
        nxt, _, term, trunc, _ = env.step(a)
        states[t], nexts[t] = obs, nxt
        actions.append(a)
        if term or trunc:
            nxt, _ = env.reset()
            if t + 1 < n_steps:
                starts[t + 1] = True
        obs = nxt
    acts: np.ndarray
    if fam.discrete_actions:
        acts = np.asarray(actions, dtype=np.int64).reshape(n_steps)
    else:
        acts = np.asarray(actions, dtype=np.float32).reshape(n_steps, fam.action_dim)
    return Stream(task, states, acts, nexts, starts)
