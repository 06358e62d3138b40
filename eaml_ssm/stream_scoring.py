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

Symbols (w windows of l steps, t tasks): see the glossary in eaml_ssm/__init__.py. In code
the window length l is `m` (`WholeStream.m`, arguments; not the glossary's m), and k indexes
windows (not the glossary's k).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eaml_ssm.adaptation import Adapter
from eaml_ssm.protocol import StreamData, StreamRun, prequential_run, scored_windows, task_of

RECOVERY_TOLERANCE = 0.1  # "recovered" = error within 10 % of the settled value


@dataclass(frozen=True)
class WholeStream:
    """Test tasks concatenated; task t covers windows `starts[t]` to `starts[t+1] - 1`."""

    data: StreamData
    starts: tuple[int, ...]  # first window of each task, plus w at the end
    names: tuple[str, ...]
    m: int

    @property
    def windows(self) -> int:
        return self.starts[-1]

    def task_of(self, k: int) -> int:
        """The task that window k belongs to."""
        return task_of(self.starts, k)

    def scored(self) -> list[tuple[int, int, bool]]:
        """(window, task, is the first window after a switch) for windows 1..w-1."""
        return scored_windows(self.starts)


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


def whole_stream_run(
    adapter: Adapter,
    whole: WholeStream,
    *,
    adapt: bool,
    store: Any = None,
    task_id_base: int = 10_000,
    on_task_done: Callable[[int], None] | None = None,
) -> StreamRun:
    """Score windows 1..w-1 of `whole`, adapting on window k-1 before scoring window k
    (`protocol.prequential_run` over the tasks' windows).

    `on_task_done(t)` runs once the adapter has used the last window of task t (before the
    next task's first window is scored), e.g. to measure retention "right after task A".
    With `store`, every window goes into it as it arrives, before the adapter adapts on it
    (task id `task_id_base + t`, through the feed's `LiveWriter`: one writer per task).
    """
    return prequential_run(
        adapter,
        whole.data,
        whole.m,
        adapt=adapt,
        store=store,
        task_id=task_id_base,
        starts=whole.starts,
        on_task_done=on_task_done,
    )


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


def stream_summary(run: StreamRun) -> dict[str, Any]:
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
    "WholeStream",
    "concat_streams",
    "recovery",
    "settled_error",
    "stream_summary",
    "whole_stream_run",
]
