"""Live experience into the store: every transition is written as it arrives.

    writer = LiveWriter(store, task_id=100)
    writer.add(x_t, y_t)                      # one transition (d,), (o,) raw rows
    writer.add(x_t, y_t, episode_start=True)  # the first transition of a new episode
    writer.add_rows(xs, ys, starts)           # several transitions at once (n, d), (n, o), (n,)

Each row gets the writer's ``task_id``, an episode id of its own (unique per writer: a new
one at every ``episode_start``) and its step within that episode, so the store's window
samplers see the live stream as ordinary episodes. The store keeps its retention (FIFO ring
or reservoir): a long stream replaces old rows and never grows memory.

Rows are raw (store space). A writer made with ``normalizer`` takes model-space rows and
denormalizes them first. Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch

from eaml_ssm.features import Normalizer

# episode ids of live streams start here, far from the collectors' ids
LIVE_EPISODE_BASE = 1 << 40
_writers = itertools.count()


class LiveWriter:
    """Writes one stream's transitions into ``store`` with task/episode/step ids."""

    def __init__(
        self,
        store: Any,
        task_id: int,
        *,
        normalizer: Normalizer | None = None,
        episode_base: int | None = None,
    ) -> None:
        if isinstance(task_id, bool) or not isinstance(task_id, int | np.integer):
            raise ValueError(f"task_id must be an int, got {task_id!r}")
        self.store = store
        self.task_id = int(task_id)
        self.normalizer = None if normalizer is None else normalizer.to("cpu")
        base = LIVE_EPISODE_BASE + (next(_writers) << 20) if episode_base is None else episode_base
        self.episode = int(base) - 1  # the first row starts episode `base`
        self.step = -1
        self.rows = 0

    def add(self, x: Any, y: Any, *, episode_start: bool = False) -> None:
        """One transition: x (d,), y (o,). ``episode_start`` opens a new episode."""
        self.add_rows(_rows(x, 1), _rows(y, 1), np.array([episode_start]))

    def add_rows(self, xs: Any, ys: Any, starts: Any = None) -> None:
        """Transitions in order: xs (n, d), ys (n, o), starts (n,) bool (None: no new episode).

        The very first row a writer sees always opens an episode.
        """
        x, y = _rows(xs, 2), _rows(ys, 2)
        n = x.shape[0]
        if y.shape[0] != n:
            raise ValueError(f"xs has {n} rows but ys has {y.shape[0]}")
        if n == 0:
            return
        s = np.zeros(n, dtype=bool) if starts is None else np.asarray(starts, dtype=bool)
        if s.shape != (n,):
            raise ValueError(f"starts must have shape ({n},), got {s.shape}")
        s = s.copy()
        if self.step < 0:
            s[0] = True
        if self.normalizer is not None:
            x = self.normalizer.denormalize_inputs(torch.from_numpy(x)).numpy()
            y = self.normalizer.denormalize_targets(torch.from_numpy(y)).numpy()
        episodes = self.episode + np.cumsum(s)  # (n,)
        steps = np.empty(n, dtype=np.int64)
        step = self.step
        for i in range(n):  # restart the step count at each episode start
            step = 0 if s[i] else step + 1
            steps[i] = step
        self.store.add(
            np.ascontiguousarray(x, dtype=np.float32),
            np.ascontiguousarray(y, dtype=np.float32),
            task_id=self.task_id,
            episode_id=episodes.astype(np.int64),
            step=steps,
        )
        self.episode, self.step = int(episodes[-1]), int(steps[-1])
        self.rows += n


def _rows(a: Any, ndim: int) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(a, dtype=np.float32)
    if arr.ndim != ndim:
        want = "(d,)" if ndim == 1 else "(n, d)"
        raise ValueError(f"expected a {want} row array, got shape {arr.shape}")
    return arr if ndim == 2 else arr[None]
