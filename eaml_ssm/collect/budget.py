"""How long each task of a collection runs: env steps, or complete episodes.

``steps_per_task`` env steps per task (episodes reset and continued), or ``episodes_per_task``
complete episodes per task (an env stops contributing rows after its quota; schedules cover
``episodes * max_episode_steps`` steps, the longest possible run).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from eaml_ssm.tasks import Task, get_family


@dataclass(frozen=True)
class Budget:
    """How long each task runs: `steps` env steps, or `episodes` complete episodes."""

    steps: int  # > 0 in steps mode, 0 in episodes mode
    episodes: int  # > 0 in episodes mode, 0 in steps mode
    horizon: int  # env steps per task at most: the length of each action schedule

    def progress_total(self, n_tasks: int) -> tuple[int, str]:
        """(total, unit) of the progress bar: env steps, or finished episodes."""
        if self.episodes:
            return n_tasks * self.episodes, "episode"
        return n_tasks * self.steps, "step"


def budget_of(env_id: str, steps_per_task: int, episodes_per_task: int | None) -> Budget:
    """Check the two mutually exclusive lengths; episodes run `max_episode_steps` at most."""
    if episodes_per_task is None:
        steps = _positive_int("steps_per_task", steps_per_task)
        return Budget(steps=steps, episodes=0, horizon=steps)
    episodes = _positive_int("episodes_per_task", episodes_per_task)
    if steps_per_task != 0:
        raise ValueError(
            "give steps_per_task or episodes_per_task, not both: got steps_per_task="
            f"{steps_per_task!r} with episodes_per_task={episodes_per_task!r} "
            "(pass steps_per_task=0 to collect whole episodes)"
        )
    return Budget(steps=0, episodes=episodes, horizon=episodes * episode_limit(env_id))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def episode_limit(env_id: str) -> int:
    """The env's `max_episode_steps`: the longest episode (ValueError if it has none)."""
    limit = gym.spec(env_id).max_episode_steps
    if limit is None:
        raise ValueError(
            f"{env_id} has no max_episode_steps, so episodes_per_task cannot bound its "
            "episodes; use steps_per_task"
        )
    return int(limit)


def max_rows(
    tasks: Sequence[Task], steps_per_task: int = 0, *, episodes_per_task: int | None = None
) -> int:
    """Rows `collect` adds at most: exact with `steps_per_task`, an upper bound with episodes
    (every episode lasting `max_episode_steps`)."""
    if not tasks:
        raise ValueError("need at least one task")
    env_id = get_family(tasks[0].env_id).env_id  # a clear error for unsupported ids first
    return len(tasks) * budget_of(env_id, steps_per_task, episodes_per_task).horizon
