"""Whole-stream scoring: the test tasks A -> B -> C ... as one concatenated stream.

Every window of the concatenation but the very first is scored, *including the first window
after each task switch*: there the model still carries the previous task's weights (continual)
or adapts on the previous task's last window (GrBAL), which is exactly where stale weights
hurt. Window k is predicted after adapting on window k-1 (prequential, as in
`eaml_ssm.protocol`); the hidden state is reset at a switch because each task's stream starts
a new episode.

Per switch, *recovery* is the number of windows after the switch until the error is within
10 % of the task's settled value (the mean error of the task's last third of windows):
0 means the switch window itself is already within 10 %.

Glossary: m window length, N windows of the whole stream, t task index.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eaml_ssm.adaptation import Adapter
from eaml_ssm.feed import LiveWriter
from eaml_ssm.protocol import StreamData, _adapt_on, _predict_pair, nmse

RECOVERY_TOLERANCE = 0.1  # "recovered" = error within 10 % of the settled value


@dataclass(frozen=True)
class WholeStream:
    """Test tasks concatenated; task t covers windows `starts[t]` to `starts[t+1] - 1`."""

    data: StreamData
    starts: tuple[int, ...]  # first window of each task, plus N at the end
    names: tuple[str, ...]
    m: int

    @property
    def windows(self) -> int:
        return self.starts[-1]

    def task_of(self, k: int) -> int:
        """The task that window k belongs to."""
        return int(np.searchsorted(self.starts, k, side="right")) - 1

    def scored(self) -> list[tuple[int, int, bool]]:
        """(window, task, is the first window after a switch) for windows 1..N-1."""
        return [(k, self.task_of(k), k in self.starts[1:-1]) for k in range(1, self.windows)]


def concat_streams(streams: Sequence[StreamData], m: int) -> WholeStream:
    """One stream of `streams` in order; each must be a whole number (>= 2) of windows."""
    if not streams:
        raise ValueError("concat_streams needs at least one stream")
    if m < 1:
        raise ValueError(f"window length must be >= 1, got {m}")
    starts = [0]
    for s in streams:
        if len(s) % m or len(s) < 2 * m:
            raise ValueError(
                f"stream {s.name!r} has {len(s)} steps: need a multiple of the window {m} "
                f"with at least 2 windows (task switches must fall on window boundaries)"
            )
        starts.append(starts[-1] + len(s) // m)
    reset = torch.cat([s.reset for s in streams]).clone()
    for k in starts[:-1]:
        reset[k * m] = True  # a new task is a new environment: a new episode
    data = StreamData(
        name=" -> ".join(s.name for s in streams),
        x=torch.cat([s.x for s in streams]),
        y=torch.cat([s.y for s in streams]),
        reset=reset,
        raw_x=np.concatenate([s.raw_x for s in streams]),
        raw_y=np.concatenate([s.raw_y for s in streams]),
    )
    return WholeStream(data, tuple(starts), tuple(s.name for s in streams), m)


@dataclass
class WholeRun:
    """One prequential pass over a whole stream."""

    errors: list[float]  # nMSE of windows 1..N-1
    tasks: list[int]  # task of each scored window
    switch: list[bool]  # True for the first window after a switch
    adapt_seconds: float = 0.0
    updates: int = 0
    steps: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def whole_stream_run(
    adapter: Adapter,
    whole: WholeStream,
    *,
    adapt: bool,
    store: Any = None,
    task_id_base: int = 10_000,
    on_task_done: Callable[[int], None] | None = None,
) -> WholeRun:
    """Score windows 1..N-1 of `whole`, adapting on window k-1 before scoring window k.

    `on_task_done(t)` runs once the adapter has used the last window of task t (before the
    next task's first window is scored), e.g. to measure retention "right after task A".
    With `store`, every window goes into it as it arrives, before the adapter adapts on it
    (task id `task_id_base + t`, through the feed's `LiveWriter`: one writer per task).
    """
    m, data = whole.m, whole.data
    run = WholeRun(errors=[], tasks=[], switch=[])
    writers: dict[int, LiveWriter] = {}

    def arrive(k: int) -> None:  # window k's transitions into the store
        if store is None:
            return
        t = whole.task_of(k)
        writer = writers.setdefault(t, LiveWriter(store, task_id_base + t))
        rows = slice(k * m, (k + 1) * m)
        writer.add_rows(data.raw_x[rows], data.raw_y[rows], data.reset[rows].numpy())

    for k, task, first in whole.scored():
        prev, cur = slice((k - 1) * m, k * m), slice(k * m, (k + 1) * m)
        arrive(k - 1)
        if adapt:
            t0 = time.perf_counter()
            run.steps += _adapt_on(adapter, data.x[prev], data.y[prev], data.reset[prev])
            run.adapt_seconds += time.perf_counter() - t0
            run.updates += 1
        if first and on_task_done is not None:
            on_task_done(task - 1)
        span = slice(prev.start, cur.stop)
        pred = _predict_pair(adapter, data.x[span], data.reset[span], m)
        run.errors.append(nmse(pred, data.y[cur]))
        run.tasks.append(task)
        run.switch.append(first)
    arrive(whole.windows - 1)  # the last window arrived too
    return run


def settled_error(errors: Sequence[float]) -> float:
    """Mean error of the last third (at least one) of a task's windows."""
    if not errors:
        raise ValueError("settled_error needs at least one window error")
    tail = max(1, math.ceil(len(errors) / 3))
    return float(np.mean(errors[-tail:]))


def recovery(
    errors: Sequence[float],
    tasks: Sequence[int],
    switch: Sequence[bool],
    tolerance: float = RECOVERY_TOLERANCE,
) -> list[dict[str, float]]:
    """Per switch: windows until the error is within `tolerance` of the task's settled
    value (`windows`), the switch window's error (`switch_error`) and the settled error.

    `windows` is NaN when an error is non-finite (a diverged run has no recovery).
    """
    if not len(errors) == len(tasks) == len(switch):
        raise ValueError("errors, tasks and switch must have one entry per scored window")
    out = []
    for i, is_switch in enumerate(switch):
        if not is_switch:
            continue
        task_errors = [e for e, t in zip(errors, tasks, strict=True) if t == tasks[i]]
        settled = settled_error(task_errors)
        windows = math.nan
        if all(math.isfinite(e) for e in task_errors):
            windows = float(
                next(j for j, e in enumerate(task_errors) if e <= (1 + tolerance) * settled)
            )
        out.append({"windows": windows, "switch_error": task_errors[0], "settled": settled})
    return out


def stream_summary(run: WholeRun) -> dict[str, Any]:
    """Headline numbers of a whole-stream run: every scored window (`new`), the windows
    inside a task (`new_settled`: what a scheme that skips switch windows would report), the
    switch windows, and the mean recovery over switches."""
    errs = np.asarray(run.errors, dtype=np.float64)
    sw = np.asarray(run.switch, dtype=bool)
    rec = recovery(run.errors, run.tasks, run.switch)
    windows = [r["windows"] for r in rec]
    return {
        "new": float(errs.mean()),
        "new_settled": float(errs[~sw].mean()) if (~sw).any() else math.nan,
        "switch": float(errs[sw].mean()) if sw.any() else math.nan,
        "recovery": float(np.mean(windows)) if windows else math.nan,
        "recovery_per_switch": windows,
    }


__all__ = [
    "RECOVERY_TOLERANCE",
    "WholeRun",
    "WholeStream",
    "concat_streams",
    "recovery",
    "settled_error",
    "stream_summary",
    "whole_stream_run",
]
