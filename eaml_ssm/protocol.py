"""The online (prequential) adaptation protocol shared by the pipeline and `evaluate`.

A test task is a *stream*: consecutive environment steps (episodes reset and continue). The
stream is cut into w windows of l steps. Before window k is scored, the model adapts on window
k-1 (its latest data), then predicts window k, running from the start of window k-1 so the
hidden state at window k is the one the adapted model carries forward (the MAML support/query
contract). Each window is scored once, before its own data is used: prequential error.

Retention ("forgetting") is measured on held-out window pairs (a, b) of *old* tasks:
    0-shot    the current weights predict a+b from a zero state; b is scored;
    few-shot  a copy of the current weights adapts on a (its `num_steps`), then b is scored.

Every error is an nMSE: the MSE in the store-normalized target space, i.e. the MSE divided by
the store's per-dimension target variance, averaged over dimensions (identity ~ 1 on the
training distribution).

Symbols (w, l, d, o): see the glossary in eaml_ssm/__init__.py. In code the window length l is
the argument `m` (ruff rejects `l` as a name; it is not the glossary's m), and k indexes windows
(not the glossary's k).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eaml_ssm.adaptation import Adapter
from eaml_ssm.baselines import RIDGES, window_ridge_predict
from eaml_ssm.collect import rollout
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import LiveWriter
from eaml_ssm.tasks import Task

TEST_SPLITS = ("heldout", "ood")  # the test splits of tasks.SPLITS: a stream and probes each


@dataclass(frozen=True)
class StreamData:
    """One task's stream as model tensors."""

    name: str
    x: Tensor  # (steps, d) normalized inputs
    y: Tensor  # (steps, o) normalized targets
    reset: Tensor  # (steps,) bool, True where an episode starts
    raw_x: np.ndarray  # (steps, d) raw inputs (for the linear baseline)
    raw_y: np.ndarray  # (steps, o) raw targets

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def window(self, k: int, m: int) -> slice:
        return slice(k * m, (k + 1) * m)


def stream_data(
    name: str, raw_x: np.ndarray, raw_y: np.ndarray, starts: np.ndarray, norm: Normalizer
) -> StreamData:
    x = norm.normalize_inputs(torch.as_tensor(raw_x, dtype=torch.float32))
    y = norm.normalize_targets(torch.as_tensor(raw_y, dtype=torch.float32))
    return StreamData(name, x, y, torch.as_tensor(starts, dtype=torch.bool), raw_x, raw_y)


def nmse(pred: Tensor, target: Tensor) -> float:
    """MSE in normalized target space, averaged over dimensions."""
    return float(((pred - target.to(pred.device)) ** 2).mean())


def _seq(t: Tensor) -> Tensor:
    return t.unsqueeze(0)  # (1, l, ...)


def _predict_pair(adapter: Adapter, x: Tensor, reset: Tensor, n_score: int) -> Tensor:
    """Predict a context+score stretch from a zero state; return the last `n_score` outputs."""
    if adapter.stateful:
        reset = reset.clone()
        reset[0] = True
        y, _ = adapter.predict(_seq(x), None, reset=_seq(reset))
        return y[0, -n_score:]
    return adapter.predict(x[-n_score:])


def _adapt_on(adapter: Adapter, x: Tensor, y: Tensor, reset: Tensor) -> int:
    """One `update_step` on a window from a zero state; returns the accepted steps."""
    if adapter.stateful:
        r = reset.clone()
        r[0] = True
        return adapter.update_step(_seq(x), _seq(y), None, reset=_seq(r))[1]
    return adapter.update_step(x, y)[1]


def task_of(starts: Sequence[int], k: int) -> int:
    """The task that window k belongs to; task t covers windows `starts[t]` to
    `starts[t+1] - 1` (`starts` ends with the window count w)."""
    return bisect.bisect_right(starts, k) - 1


def scored_windows(starts: Sequence[int]) -> list[tuple[int, int, bool]]:
    """(window k, its task, whether k is the first window after a task switch) for every
    scored window k = 1..w-1 (see `task_of` for `starts`)."""
    return [(k, task_of(starts, k), k in starts[1:-1]) for k in range(1, starts[-1])]


@dataclass
class StreamRun:
    """What one prequential pass over a stream measured."""

    errors: list[float]  # nMSE of windows 1..w-1
    tasks: list[int] = field(default_factory=list)  # task of each scored window
    switch: list[bool] = field(default_factory=list)  # first window after a task switch
    adapt_seconds: float = 0.0  # wall time inside `update_step`
    updates: int = 0  # adaptations run
    steps: int = 0  # accepted gradient steps


def prequential_run(
    adapter: Adapter,
    data: StreamData,
    m: int,
    *,
    adapt: bool,
    store: Any = None,
    task_id: int = 0,
    starts: Sequence[int] | None = None,
    on_task_done: Callable[[int], None] | None = None,
) -> StreamRun:
    """Score windows 1..w-1 of `data`, adapting on window k-1 before scoring window k.

    `starts`: the first window of each task when `data` is several tasks' streams one after
    another (ending with w; `stream_scoring.concat_streams`); default one task. The first
    window after a switch is scored like any other. `on_task_done(t)` runs once the adapter
    has used the last window of task t (before the next task's first window is scored).

    With `store` (a RingBuffer), the stream's transitions go into it as they arrive (raw rows,
    task id `task_id + t`, the stream's own episode and step ids, through
    `eaml_ssm.feed.LiveWriter`, one writer per task): window k-1 is in the store before the
    adapter adapts on it, so replay may draw on the live stream (whether it does is
    `AdaptationConfig.replay_live`).
    """
    num_windows = len(data) // m
    if num_windows < 2:
        raise ValueError(f"stream of {len(data)} steps has fewer than 2 windows of {m}")
    bounds = (0, num_windows) if starts is None else tuple(starts)
    if bounds[0] != 0 or bounds[-1] != num_windows:
        raise ValueError(f"task starts {bounds} must run from window 0 to {num_windows}")
    run = StreamRun(errors=[])
    writers: dict[int, LiveWriter] = {}

    def arrive(k: int) -> None:  # window k's transitions into the store
        if store is None:
            return
        task = task_of(bounds, k)
        writer = writers.setdefault(task, LiveWriter(store, task_id + task))
        rows = data.window(k, m)
        writer.add_rows(data.raw_x[rows], data.raw_y[rows], data.reset[rows].numpy())

    for k, task, first in scored_windows(bounds):
        prev, cur = data.window(k - 1, m), data.window(k, m)
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
    arrive(num_windows - 1)  # the last window arrived too
    return run


def identity_windows(data: StreamData, m: int, norm: Normalizer) -> list[float]:
    """Change of state = 0, scored on the same windows as `prequential_run`."""
    zero = norm.normalize_targets(torch.zeros(1, data.y.shape[1]))  # (1, o)
    return [
        nmse(zero.expand_as(data.y[data.window(k, m)]), data.y[data.window(k, m)])
        for k in range(1, len(data) // m)
    ]


def linear_windows(data: StreamData, m: int, ridge: float) -> list[float]:
    """Ridge least squares fitted on window k-1 and scored on window k.

    The fit maps normalized inputs to normalized targets (so one ridge grid suits every
    family) with an unpenalized intercept; all windows are solved in one batch.
    """
    num_windows = len(data) // m
    if num_windows < 2:
        raise ValueError(f"stream of {len(data)} steps has fewer than 2 windows of {m}")
    x = data.x[: num_windows * m].reshape(num_windows, m, -1)  # (w, l, d)
    y = data.y[: num_windows * m].reshape(num_windows, m, -1)  # (w, l, o)
    pred = window_ridge_predict(x[:-1], y[:-1], x[1:], ridge)  # (w-1, l, o)
    return [nmse(pred[k], y[k + 1]) for k in range(num_windows - 1)]


def best_linear_windows(
    data: StreamData, m: int, ridges: Sequence[float] = RIDGES
) -> tuple[float, list[float]]:
    """The linear baseline at its best ridge (chosen on this stream: optimistic for it)."""
    return best_ridge(linear_windows, ridges, data, m)


def best_ridge(score: Any, ridges: Sequence[float], *args: Any) -> tuple[float, list[float]]:
    """(ridge, per-window errors `score(*args, ridge)`) at the ridge with the lowest mean
    error on this stream (the first of equals)."""
    results = {r: score(*args, r) for r in ridges}
    best = min(results, key=lambda r: float(np.mean(results[r])))
    return best, results[best]


@dataclass(frozen=True)
class WindowPair:
    """A held-out (a, b) pair of consecutive windows of an old task."""

    x: Tensor  # (2l, d)
    y: Tensor  # (2l, o)
    reset: Tensor  # (2l,)


def window_pairs(data: StreamData, m: int, n_pairs: int) -> list[WindowPair]:
    """Up to `n_pairs` disjoint consecutive (a, b) window pairs from a stream."""
    pairs = []
    for start in range(0, len(data) - 2 * m + 1, 2 * m):
        span = slice(start, start + 2 * m)
        pairs.append(WindowPair(data.x[span], data.y[span], data.reset[span]))
        if len(pairs) == n_pairs:
            break
    return pairs


def retention(adapter: Adapter, pairs: Sequence[WindowPair], m: int, *, shots: int) -> float:
    """Mean nMSE on the b halves: 0-shot (`shots=0`) or after `shots` steps on a (a copy).

    Few-shot retention is the same procedure for every method: plain fine-tuning (no replay,
    no anchor) at the adapter's meta-learned step size (`lr_scale` 1) from where the method
    would start on a new window: the current weights, or theta* for a GrBAL-style (reset)
    adapter, whose few-shot forgetting is therefore 0 by construction.
    """
    if not pairs:
        raise ValueError("retention needs at least one window pair")
    if shots < 0:
        raise ValueError(f"shots must be >= 0, got {shots}")
    if shots == 0 and adapter.stateful:  # one batched forward over every pair
        x = torch.stack([p.x for p in pairs])  # (pairs, 2l, d)
        reset = torch.stack([p.reset for p in pairs]).clone()  # (pairs, 2l)
        reset[:, 0] = True
        y, _ = adapter.predict(x, None, reset=reset)  # (pairs, 2l, o)
        target = torch.stack([p.y[m:] for p in pairs])  # (pairs, l, o)
        return float(np.mean([nmse(y[i, -m:], target[i]) for i in range(len(pairs))]))
    errors = []
    for pair in pairs:
        model = adapter
        if shots > 0:
            model = adapter.fork(
                mode=adapter.config.mode,
                experience_weight=0.0,
                anchor_weight=0.0,
                num_steps=shots,
                lr_scale=1.0,
            )
            _adapt_on(model, pair.x[:m], pair.y[:m], pair.reset[:m])
        errors.append(nmse(_predict_pair(model, pair.x, pair.reset, m), pair.y[m:]))
    return float(np.mean(errors))


def task_streams(
    tasks: Sequence[Task], steps: int, norm: Normalizer, seed: int
) -> list[StreamData]:
    """One rollout stream per task (`steps` env steps, seeds `seed + i`), normalized."""
    out = []
    for i, task in enumerate(tasks):
        s = rollout(task, steps, seed=seed + i)
        x, y = s.transitions()
        name = ", ".join(f"{k}={v:.3g}" for k, v in task.params.items())
        out.append(stream_data(name, x, y, s.starts, norm))
    return out


def variant(adapter: Adapter, **overrides: Any) -> Adapter:
    """A fresh adapter at the meta-learned weights with some config fields changed."""
    fresh = adapter.fork(**overrides)
    fresh.reset()
    return fresh


__all__ = [
    "TEST_SPLITS",
    "StreamData",
    "StreamRun",
    "WindowPair",
    "best_linear_windows",
    "best_ridge",
    "identity_windows",
    "linear_windows",
    "nmse",
    "prequential_run",
    "retention",
    "scored_windows",
    "stream_data",
    "task_of",
    "task_streams",
    "variant",
    "window_pairs",
]
