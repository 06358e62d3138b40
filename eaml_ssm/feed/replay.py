"""Replay batches for test-time adaptation, chosen and gathered by the store.

`ReplayFeed(store, device, transform, seed)` draws what the adapter replays:

* ``rows(strategy, n, query)``         -> obs (n, d), target (n, o)
* ``windows(strategy, b, l, query)``   -> obs (b, l, d), target (b, l, o)

with the strategies ``uniform`` (every stored row / valid window alike), ``task_balanced``
(equal weight per stored task), ``recent`` (among the newest rows) and ``nearest`` (closest
to the current inputs). Every choice of rows or windows and every gather is the store's
(``sample``, ``sample_recent``, ``sample_windows`` with task weights or ``recent``,
``windows_at``, ``gather``): the rule "a window never crosses an episode or the write
cursor" lives once, in the Rust core. ``nearest`` scores a random candidate set in torch
and lets the store gather the windows at the best candidates.

Draw ``i`` of a feed is made with its own seed ``draw_seed(seed, i, REPLAY_TAG)`` (the store's
per-call generator), so a feed's batches depend on (seed, i) only: ``restart()`` replays the
same sequence, and other users of the store do not change it.

``old_tasks`` (optional): draw only rows of these task ids (replay of old tasks, while the
live stream is also written into the store); ``None`` draws on everything the store holds.

When the store has no episode structure (rows added without episode/step ids, e.g. through
``ExperienceBuffer.add``) no window is valid: window replay then falls back to row replay
and says so once in the log.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eaml_ssm.features import Normalizer
from eaml_ssm.feed.loader import draw_seed, seeded

log = logging.getLogger(__name__)

REPLAY_TAG = 0x5E9A  # seed-sequence tag of replay draws
STRATEGIES = ("uniform", "task_balanced", "recent", "nearest")
Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class ReplayFeed:
    """Replay rows/windows from a `rust_buffer.RingBuffer` (see the module docstring).

    ``store`` may be a callable returning the store (a facade that creates it lazily).
    ``transform`` maps raw store rows to model space (a `Normalizer` is copied to ``device``
    once, here, so no statistics travel host-to-device per draw).
    """

    def __init__(
        self,
        store: Any,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        transform: Transform | Normalizer | None = None,
        seed: int | None = None,
        old_tasks: Iterable[int] | None = None,
    ) -> None:
        self._store = store
        self.device = torch.device(device)
        self.dtype = dtype
        if isinstance(transform, Normalizer):
            transform = transform.to(self.device)
        self.transform = transform
        # no seed: a fresh random base, still one seed per draw
        self.seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self.draws = 0
        self.old_tasks = None if old_tasks is None else frozenset(int(t) for t in old_tasks)
        self._told_rows = False

    @property
    def store(self) -> Any:
        return self._store() if callable(self._store) else self._store

    def __len__(self) -> int:
        store = self.store
        return 0 if store is None else len(store)

    def restart(self, seed: int | None = None) -> None:
        """Start the draw sequence again (from ``seed`` when given)."""
        if seed is not None:
            self.seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
        self.draws = 0

    # ---- rows -------------------------------------------------------------------------------
    def rows(
        self,
        strategy: str,
        n: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor] | None:
        """``n`` rows by ``strategy`` -> obs (n, d), target (n, o); None when none may be drawn."""
        _check(strategy, n)
        store, seed = self._need(), self._next_seed()
        weights = self._weights(store, strategy)
        if weights == {}:
            return None
        if strategy == "nearest":
            cand_x, cand_y, _ = self._candidates(store, candidates, seed)
            idx = _nearest(cand_x, _query(query, cand_x), n)
            return cand_x[idx], cand_y[idx]
        window = max(1, min(recent, len(store)))
        if weights is None and strategy == "recent":
            obs, tgt = seeded(store, "sample_recent", min(n, window), window, seed=seed)
        elif weights is None:  # at most the rows held (the store refuses more)
            obs, tgt = seeded(store, "sample", min(n, len(store)), seed=seed)
        else:  # rows of chosen tasks: windows of one row, per task
            try:
                obs, tgt = self._weighted(store, strategy, weights, n, 1, window, seed)
                obs, tgt = obs[:, 0], tgt[:, 0]
            except ValueError as err:
                if not _no_window(err):
                    raise
                if strategy == "recent":
                    return None  # no rows of the replayed tasks among the newest
                obs, tgt = self._task_rows(store, weights, strategy, n, seed)
        return self._pair(obs, tgt)

    def _weighted(
        self,
        store: Any,
        strategy: str,
        weights: dict[int, float],
        b: int,
        length: int,
        window: int,
        seed: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``b`` windows of the weighted tasks, written by the store into one batch (no copy).

        ``task_balanced``: the b windows are split as evenly as possible over up to b
        randomly chosen tasks (each task's share drawn among its own windows); otherwise one
        draw with the task weights (``recent``: within the newest ``window`` rows).
        """
        obs = np.empty((b, length, store.obs_dim), dtype=np.float32)
        tgt = np.empty((b, length, store.target_dim), dtype=np.float32)
        if strategy != "task_balanced":
            kwargs: dict[str, Any] = {"recent": window} if strategy == "recent" else {}
            seeded(store, "sample_windows_into", obs, tgt, length, task_weights=weights,
                   seed=seed, **kwargs)  # fmt: skip
            return obs, tgt
        plan = _balanced_plan(weights, b, np.random.default_rng([seed, 2]))
        i = 0
        for task, n in plan:
            o, t = obs[i : i + n], tgt[i : i + n]
            try:
                seeded(store, "sample_windows_into", o, t, length, task_weights={task: 1.0},
                       seed=draw_seed(seed, task))  # fmt: skip
            except ValueError as err:  # this task has none: the plan's other tasks fill in
                if not _no_window(err):
                    raise
                others = {t_: 1.0 for t_, _ in plan}
                seeded(store, "sample_windows_into", o, t, length, task_weights=others,
                       seed=draw_seed(seed, task, 1))  # fmt: skip
            i += n
        return obs, tgt

    def _task_rows(
        self, store: Any, weights: dict[int, float], strategy: str, count: int, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows of the weighted tasks from a store without episodes (the store's per-task
        row sampler; the parts are joined with one copy)."""
        rng = np.random.default_rng([seed, 3])
        if strategy == "task_balanced":
            plan = _balanced_plan(weights, count, rng)
        else:
            tasks = sorted(weights)
            p = np.array([weights[t] for t in tasks]) / sum(weights.values())
            plan = [(t, int(n)) for t, n in zip(tasks, rng.multinomial(count, p), strict=True) if n]
        counts = _counts(store)
        parts = []
        for task, n in plan:
            while n > 0:  # the store refuses more rows per call than the task holds
                take = min(n, int(counts[task]))
                parts.append(seeded(store, "sample_task_rows", task, take,
                                    seed=draw_seed(seed, task, n)))  # fmt: skip
                n -= take
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    # ---- windows ----------------------------------------------------------------------------
    def windows(
        self,
        strategy: str,
        b: int,
        length: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor] | None:
        """``b`` windows of ``length`` steps of one episode -> (b, l, d), (b, l, o).

        Falls back to ``rows`` (n = b * l rows, returned as (n, d), (n, o)) when the
        store holds no valid window; None when nothing may be drawn.
        """
        _check(strategy, b)
        store = self._need()
        weights = self._weights(store, strategy)
        if weights == {}:
            return None
        seed = self._next_seed()
        try:
            if strategy == "nearest":
                return self._nearest_windows(store, b, length, query, candidates, seed)
            window = max(1, min(recent, len(store)))
            if weights is not None:
                obs, tgt = self._weighted(store, strategy, weights, b, length, window, seed)
            else:
                kwargs: dict[str, Any] = {"recent": window} if strategy == "recent" else {}
                obs, tgt, _ = seeded(store, "sample_windows", b, length, seed=seed, **kwargs)
        except ValueError as err:
            if not _no_window(err):
                raise
            self._say_rows(length, err)
            return self.rows(strategy, b, query, recent=recent, candidates=candidates)
        return self._pair(obs, tgt)

    def _nearest_windows(
        self, store: Any, b: int, length: int, query: Tensor | None, candidates: int, seed: int
    ) -> tuple[Tensor, Tensor]:
        cand_x, _, slots = self._candidates(store, candidates, seed)
        best = _nearest(cand_x, _query(query, cand_x), b).cpu().numpy()  # (b,)
        obs, tgt, valid = store.windows_at(slots[best], length)  # (b, l, .), (b,)
        valid = np.asarray(valid, dtype=bool)
        if not valid.any():
            raise ValueError(f"no valid window of {length} steps at the nearest rows")
        if not valid.all():  # keep the mix: repeat valid windows in place of the others
            ok = np.flatnonzero(valid)
            rng = np.random.default_rng(seed)
            fill = rng.choice(ok, size=int((~valid).sum()))
            obs[~valid], tgt[~valid] = obs[fill], tgt[fill]
        return self._pair(obs, tgt)

    # ---- helpers ----------------------------------------------------------------------------
    def _candidates(self, store: Any, c: int, seed: int) -> tuple[Tensor, Tensor, np.ndarray]:
        """Up to ``c`` distinct random slots (all when fewer) gathered by the store."""
        n = len(store)
        rng = np.random.default_rng([seed, 1])
        slots = np.arange(n) if n <= c else np.sort(rng.choice(n, size=c, replace=False))
        if self.old_tasks is not None:  # only rows of the old tasks are candidates
            tid = np.asarray(store.task_id_view())[slots]
            slots = slots[np.isin(tid, list(self.old_tasks))]
            if slots.size == 0:
                raise ValueError("no rows of the old tasks among the nearest candidates")
        obs, tgt = store.gather(slots.astype(np.int64))
        x, y = self._pair(obs, tgt)
        return x, y, slots

    def _weights(self, store: Any, strategy: str) -> dict[int, float] | None:
        """Task weights for the store's samplers: None = every row alike; {} = nothing."""
        balanced = strategy == "task_balanced"
        if self.old_tasks is None and not balanced:
            return None
        held = {int(t): int(c) for t, c in _counts(store).items() if int(c) > 0}
        counts = held
        if self.old_tasks is not None:
            counts = {t: c for t, c in held.items() if t in self.old_tasks}
        if counts and len(counts) == len(held) and (not balanced or len(counts) == 1):
            return None  # every stored task qualifies alike: plain uniform draws
        if not counts:
            if self.old_tasks is not None:
                log.warning("replay: none of the old tasks' rows are left in the store")
            return {}
        # equal weight per task (balanced), else each task as many times as its rows
        return {t: 1.0 if balanced else float(c) for t, c in counts.items()}

    def _next_seed(self) -> int:
        seed = draw_seed(self.seed, self.draws, REPLAY_TAG)
        self.draws += 1
        return seed

    def _need(self) -> Any:
        store = self.store
        if store is None or len(store) == 0:
            raise ValueError("the experience store holds no rows")
        return store

    def _say_rows(self, length: int, err: Exception) -> None:
        if not self._told_rows:
            log.warning(
                "replay: the store holds no %d-step windows (%s): replaying rows instead "
                "(rows added without episode ids, e.g. by ExperienceBuffer.add, have none)",
                length,
                err,
            )
            self._told_rows = True

    def _pair(self, obs: Any, tgt: Any) -> tuple[Tensor, Tensor]:
        # CPU: a view of the store's gather (no copy); else one copy to the device
        x = torch.from_numpy(np.asarray(obs)).to(self.device, self.dtype)
        y = torch.from_numpy(np.asarray(tgt)).to(self.device, self.dtype)
        if isinstance(self.transform, Normalizer):  # the gather is ours: normalize in place
            return (
                self.transform.normalize_inputs(x, inplace=True),
                self.transform.normalize_targets(y, inplace=True),
            )
        if self.transform is not None:
            x, y = self.transform(x, y)
        return x, y


def _balanced_plan(
    weights: Mapping[int, float], count: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """(task, share) pairs: ``count`` draws over up to ``count`` random tasks, evenly."""
    tasks = np.array(sorted(weights))
    chosen = rng.choice(tasks, size=min(count, len(tasks)), replace=False)
    per_task = np.full(len(chosen), count // len(chosen))
    per_task[: count % len(chosen)] += 1
    return [(int(t), int(n)) for t, n in zip(chosen, per_task, strict=True)]


def _counts(store: Any) -> Mapping[int, int]:
    counts = store.task_counts()
    return counts if isinstance(counts, Mapping) else dict(counts)


def _no_window(err: ValueError) -> bool:
    """The store's "no valid window (in the selection)" / "task holds no episode rows"."""
    msg = str(err).lower()
    return any(word in msg for word in ("window", "consecutive steps", "episode", "no rows"))


def _check(strategy: str, n: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {STRATEGIES}")
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"batch size must be a positive int, got {n!r}")


def _query(query: Tensor | None, cand: Tensor) -> Tensor:
    if query is None:
        raise ValueError("sampling='nearest' needs the current inputs as query")
    q = query.reshape(-1, query.shape[-1]).to(cand.device, cand.dtype)  # (n, d)
    if q.shape[-1] != cand.shape[-1]:
        raise ValueError(
            f"nearest: query has {q.shape[-1]} features, the store's obs has {cand.shape[-1]}"
        )
    return q


def _nearest(cand: Tensor, query: Tensor, count: int) -> Tensor:
    """Indices (count,) of the candidates closest to any query row (z-scored by the candidates)."""
    mean = cand.mean(dim=0)
    std = cand.std(dim=0, correction=0).clamp_min(1e-6)
    dist = torch.cdist((cand - mean) / std, (query - mean) / std)  # (c, n)
    score = dist.min(dim=1).values  # (c,)
    kept = min(count, score.shape[0])
    idx = torch.topk(score, kept, largest=False).indices  # (kept,)
    if kept < count:  # fewer candidates than asked for: repeat the nearest ones
        idx = idx[torch.arange(count, device=idx.device) % kept]
    return idx
