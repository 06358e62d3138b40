"""The feed from the store to the model: store samples -> (normalized) torch tensors.

`StoreLoader(store, device, normalizer, seed=...)` offers these kinds of batch:

* ``batch(b)``                     -> x (b, d), y (b, o)                   flat rows
* ``tasks(t, s, q, contiguous)``   -> sx (t, s, d), sy (t, s, o), qx (t, q, d),
                                      qy (t, q, o), task_ids (t,)           MAML task sets
* ``task_windows(tasks_of, ...)``  -> the same, for the tasks ``tasks_of(k)`` of draw k, each
                                      with its own seed (a distributed rank's share)
* ``sequences(b, l)``              -> x (b, l, d), y (b, l, o), task_ids (b,)     SSM windows

Draw order. With ``seed`` every draw ``k`` of a kind is gathered with its own seed
``draw_seed(seed, k)``, passed to the store call (a per-call generator, independent of the
store's shared one), so the batches depend on (seed, k) only: prefetching batch k+1 cannot
change them, and ``seek(k)`` resumes exactly. Without ``seed`` the store's shared generator
draws. ``seek(k)`` also sets the next draw of every kind (a resumed run starts at its step).

On CPU the arrays the store returns are wrapped with ``torch.from_numpy`` (no copy) and
normalized in place, so a batch costs the store's gather and nothing else.

On CUDA (``pinned=True``, the default there) each batch kind has two pinned staging slots
allocated by torch. A background worker owns the whole trip of a slot: it waits on the
slot's CUDA event (the previous copy out of the slot has finished: the wait is in the
worker, not on the training thread), lets the store fill the slot (``sample_into`` and the
store's gathers write straight into the pinned memory with the GIL released), and issues
``non_blocking`` copies to the device on the loader's own copy stream, recording the slot's
event there. ``next`` only makes the caller's stream wait for that event (a GPU-side wait)
and submits the next slot, so gathering and copying batch k+1 overlap step k. With
``pinned=False`` on CUDA the arrays are copied to the device with a blocking ``.to``.

Shapes: see the glossary in eaml_ssm/__init__.py (``d`` is the store's ``obs_dim``, ``o`` its
``target_dim``).

Why one module: the four batch kinds share the draw-seed bookkeeping, the pinned slots and the
worker that fills them; each kind is a short method on that machinery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from eaml_ssm.features import Normalizer

Shapes = list[tuple[tuple[int, ...], torch.dtype]]
# fill(slot arrays, draw index) -> rows used along dim 0 (None: all of them)
Filler = Callable[[list[np.ndarray], int], int | None]


def draw_seed(seed: int, index: int, *tags: int) -> int:
    """The per-call seed of draw ``index`` of a stream seeded with ``seed`` (uint32).

    ``draw_seed(seed, step)`` is the seed meta-training always used for step ``step``
    (``SeedSequence([seed, step])``), so the batches of a seed did not change with the feed.
    """
    return int(
        np.random.SeedSequence([int(seed), int(index), *map(int, tags)]).generate_state(1)[0]
    )


def seeded(store: Any, method: str, *args: Any, seed: int | None = None, **kwargs: Any) -> Any:
    """``store.method(*args, seed=seed, **kwargs)``: one draw with its own generator.

    A store whose method takes no ``seed`` (an older build, a test double) gets the seed
    through ``reseed`` (its shared generator) right before the call: same batches, but not
    independent of other users of that store.
    """
    fn = getattr(store, method)
    if seed is None:
        return fn(*args, **kwargs)
    if "seed" in (getattr(fn, "__text_signature__", None) or ""):
        return fn(*args, seed=seed, **kwargs)
    reseed = getattr(store, "reseed", None)
    if reseed is not None:
        reseed(seed)
    return fn(*args, **kwargs)


def indexed_device(device: torch.device | str) -> torch.device:
    """A device with an index: a bare ``cuda`` is the current CUDA device (``cuda:i``)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _wrap(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without a copy (the store hands out fresh, writable arrays)."""
    return torch.from_numpy(arr)


class _DoubleBuffer:
    """Two staging slots of fixed shapes; slot k+1 is filled (and copied) while k is used.

    On CUDA the slots are pinned; the worker waits for a slot's event, fills it, and copies
    it to the device with ``non_blocking`` copies on ``stream``, recording the event after
    the copies (see the module docstring). On CPU (used by the tests of this logic) the slots
    are plain memory and a batch leaves as a clone.
    """

    def __init__(
        self,
        shapes: Shapes,
        fill: Filler,
        device: torch.device,
        pool: ThreadPoolExecutor,
        stream: Any,
        first: int,
        timings: list[tuple[Any, Any, int]] | None = None,
    ) -> None:
        self.cuda = device.type == "cuda"
        self.timings = timings  # (start event, end event, bytes) per copy, when measured
        self.slots = [
            [torch.empty(shape, dtype=dt, pin_memory=self.cuda) for shape, dt in shapes]
            for _ in range(2)
        ]
        self.views = [[t.numpy() for t in slot] for slot in self.slots]  # same memory
        self.events: list[Any] = [None, None]  # CUDA event after the last copy out of a slot
        self.fill = fill
        self.device = device
        self.pool = pool
        self.stream = stream
        self.cur = 0
        self.index = first  # draw index of the next batch handed out
        self.pending: Future[tuple[list[torch.Tensor], Any]] | None = None

    def _work(self, k: int, index: int) -> tuple[list[torch.Tensor], Any]:
        """In the worker: wait until slot k is free, fill it, copy it out (CUDA)."""
        if self.events[k] is not None:
            self.events[k].synchronize()  # the previous copy out of slot k has finished
        used = self.fill(self.views[k], index)
        slot = self.slots[k] if used is None else [t[:used] for t in self.slots[k]]
        if not self.cuda:
            return [t.clone() for t in slot], None
        timed = self.timings is not None
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):
            start = torch.cuda.Event(enable_timing=True) if timed else None
            if start is not None:
                start.record(self.stream)
            out = [t.to(self.device, non_blocking=True) for t in slot]
            event = torch.cuda.Event(enable_timing=timed)
            event.record(self.stream)
        if self.timings is not None:
            self.timings.append((start, event, sum(t.numel() * t.element_size() for t in slot)))
        self.events[k] = event
        return out, event

    def _submit(self) -> None:
        self.pending = self.pool.submit(self._work, self.cur, self.index)

    def next(self) -> list[torch.Tensor]:
        if self.pending is None:
            self._submit()
        assert self.pending is not None
        try:
            out, event = self.pending.result()  # re-raises a sampling error
        finally:
            self.pending = None
        if self.cuda:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)  # GPU-side: the caller's kernels run after the copy
            for t in out:  # allocated on the copy stream, used on the caller's
                t.record_stream(compute)
        self.cur = 1 - self.cur
        self.index += 1
        self._submit()  # gather (and copy) the next batch while the caller computes
        return out

    def drain(self) -> None:
        if self.pending is not None:
            self.pending.exception()
            self.pending = None


class StoreLoader:
    """Tensors from a `rust_buffer.RingBuffer` for the model (see the module docstring).

    `normalizer` (optional) turns raw store rows into model space; without it the tensors
    hold the raw rows. `seed` makes draw k of every kind depend on (seed, k) only; `start`
    is the first draw index (a resumed run's step). Not thread-safe: one consumer per loader.
    """

    def __init__(
        self,
        store: Any,
        device: torch.device | str = "cpu",
        normalizer: Normalizer | None = None,
        *,
        pinned: bool | None = None,
        seed: int | None = None,
        start: int = 0,
        time_copies: bool = False,
    ) -> None:
        self.store = store
        self.device = indexed_device(device)
        if normalizer is not None and (
            normalizer.input_dim != store.obs_dim or normalizer.target_dim != store.target_dim
        ):
            raise ValueError(
                f"normalizer is ({normalizer.input_dim}, {normalizer.target_dim}), store rows "
                f"are ({store.obs_dim}, {store.target_dim})"
            )
        # one copy of the statistics on the device, made here (never per batch)
        self.normalizer = None if normalizer is None else normalizer.to(self.device)
        use_pinned = self.device.type == "cuda" if pinned is None else pinned
        if use_pinned and self.device.type != "cuda":
            raise ValueError(f"pinned staging needs a CUDA device, got {self.device}")
        self.pinned = use_pinned
        self.seed = None if seed is None else int(seed)
        self._start = int(start)
        self._counts: dict[tuple[Any, ...], int] = {}  # unpinned kinds: next draw index
        self._pool: ThreadPoolExecutor | None = None
        self._stream: Any = None
        self._feeds: dict[tuple[Any, ...], _DoubleBuffer] = {}
        # CUDA: events around each pinned host-to-device copy (benchmarks/gpu_check.py)
        self._timings: list[tuple[Any, Any, int]] | None = [] if time_copies else None

    # -- public batch kinds ----------------------------------------------------------------

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform rows: x (b, d), y (b, o)."""
        _positive(batch_size=batch_size)
        if not self.pinned:
            obs, tgt = self._draw(("batch", batch_size), "sample", batch_size)
            return self._norm(*self._move(obs, tgt))
        shapes = self._row_shapes((batch_size,))

        def fill(out: list[np.ndarray], index: int) -> None:
            seeded(self.store, "sample_into", out[0], out[1], seed=self._seed_of(index))

        x, y = self._feed(("batch", batch_size), shapes, fill)
        return self._norm(x, y)

    def tasks(
        self, n_tasks: int, n_support: int, n_query: int, *, contiguous: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-task support/query sets: (t, s, d), (t, s, o), (t, q, d), (t, q, o), (t,)."""
        _positive(n_tasks=n_tasks, n_support=n_support, n_query=n_query)
        key = ("tasks", n_tasks, n_support, n_query, contiguous)
        if not self.pinned:
            so, st, qo, qt, ids = self._draw(
                key, "sample_tasks", n_tasks, n_support, n_query, contiguous=contiguous
            )
            return self._task_set(so, st, qo, qt, ids)

        def fill(out: list[np.ndarray], index: int) -> None:
            res = seeded(
                self.store,
                "sample_tasks",
                n_tasks,
                n_support,
                n_query,
                contiguous=contiguous,
                seed=self._seed_of(index),
            )
            for dst, src in zip(out, res, strict=True):
                np.copyto(dst, src)

        sx, sy, qx, qy, ids = self._feed(key, self._task_shapes(n_tasks, n_support, n_query), fill)
        return (*self._norm(sx, sy), *self._norm(qx, qy), ids)

    def task_windows(
        self,
        tasks_of: Callable[[int], Sequence[int]],
        n_support: int,
        n_query: int,
        max_tasks: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Contiguous support/query windows of the given tasks, one seed per (draw, task).

        Draw k holds the tasks ``tasks_of(k)`` (at most ``max_tasks``, possibly none) in that
        order; task ``i``'s window is drawn by the store with seed ``draw_seed(seed, k, i)``
        among that task's windows only, so it depends on (seed, k, task) alone: a task held
        by any rank of any world size gets the same window. Shapes as `tasks` with
        ``t = len(tasks_of(k))``. Needs ``seed``.
        """
        _positive(n_support=n_support, n_query=n_query, max_tasks=max_tasks)
        if self.seed is None:
            raise ValueError("task_windows needs a StoreLoader with a seed")
        seed = self.seed
        s, length = n_support, n_support + n_query
        key = ("task_windows", n_support, n_query, max_tasks)

        def fill(out: list[np.ndarray], index: int) -> int:
            """The store gathers task i's window straight into row i of the output."""
            ids = [int(t) for t in tasks_of(index)]
            if len(ids) > max_tasks:
                raise ValueError(f"draw {index} holds {len(ids)} tasks, max_tasks is {max_tasks}")
            for i, t in enumerate(ids):
                task_window_into(
                    self.store, out[0][i : i + 1], out[1][i : i + 1], t, draw_seed(seed, index, t)
                )
            out[2][: len(ids)] = ids
            return len(ids)

        shapes = [*self._row_shapes((max_tasks, length)), ((max_tasks,), torch.int64)]
        if self.pinned:
            x, y, tid = self._feed(key, shapes, fill)
        else:  # fresh arrays per draw, filled by the store: wrapped without a copy
            out = [np.empty(shape, dtype=_NUMPY[dt]) for shape, dt in shapes]
            used = fill(out, self._next_index(key))
            x, y = self._move(out[0][:used], out[1][:used])
            tid = self._move_one(out[2][:used])
        x, y = self._norm(x, y)
        return x[:, :s], y[:, :s], x[:, s:], y[:, s:], tid

    def sequences(
        self, batch_size: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows of one episode: x (b, l, d), y (b, l, o), task_ids (b,)."""
        _positive(batch_size=batch_size, seq_len=seq_len)
        key = ("seq", batch_size, seq_len)
        if not self.pinned:
            obs, tgt, ids = self._draw(key, "sample_windows", batch_size, seq_len)
            x, y = self._norm(*self._move(obs, tgt))
            return x, y, self._move_one(ids)
        shapes = [*self._row_shapes((batch_size, seq_len)), ((batch_size,), torch.int64)]

        def fill(out: list[np.ndarray], index: int) -> None:  # straight into the slot
            out[2][:] = seeded(
                self.store, "sample_windows_into", out[0], out[1], seq_len,
                seed=self._seed_of(index),
            )  # fmt: skip

        x, y, ids = self._feed(key, shapes, fill)
        x, y = self._norm(x, y)
        return x, y, ids

    def copy_rates(self) -> list[float]:
        """Bytes per second of each timed pinned copy so far (``time_copies=True``; syncs)."""
        if not self._timings:
            return []
        done = self._timings[:]  # the worker may append the prefetched copy meanwhile
        del self._timings[: len(done)]
        done[-1][1].synchronize()
        return [b / (s.elapsed_time(e) / 1e3) for s, e, b in done]

    def seek(self, index: int) -> None:
        """Make ``index`` the next draw of every kind (drops prefetched batches)."""
        for feed in self._feeds.values():
            feed.drain()
        self._feeds.clear()
        self._counts.clear()
        self._start = int(index)

    def close(self) -> None:
        """Wait for in-flight gathers and stop the background thread."""
        for feed in self._feeds.values():
            feed.drain()
        self._feeds.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> StoreLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _seed_of(self, index: int) -> int | None:
        return None if self.seed is None else draw_seed(self.seed, index)

    def _next_index(self, key: tuple[Any, ...]) -> int:
        index = self._counts.get(key, self._start)
        self._counts[key] = index + 1
        return index

    def _draw(self, key: tuple[Any, ...], method: str, *args: Any, **kwargs: Any) -> Any:
        """One unpinned draw of kind ``key`` (the store's arrays, as returned)."""
        seed = self._seed_of(self._next_index(key))
        return seeded(self.store, method, *args, seed=seed, **kwargs)

    def _move_one(self, arr: np.ndarray) -> torch.Tensor:
        t = _wrap(arr)
        return t if self.device.type == "cpu" else t.to(self.device)

    def _move(self, obs: np.ndarray, tgt: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return self._move_one(obs), self._move_one(tgt)

    def _task_set(
        self, so: np.ndarray, st: np.ndarray, qo: np.ndarray, qt: np.ndarray, ids: np.ndarray
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        sx, sy = self._norm(*self._move(so, st))
        qx, qy = self._norm(*self._move(qo, qt))
        return sx, sy, qx, qy, self._move_one(ids)

    def _empty(self, lead: tuple[int, ...], obs: bool) -> np.ndarray:
        width = self.store.obs_dim if obs else self.store.target_dim
        return np.zeros((*lead, width), dtype=np.float32)

    def _row_shapes(self, lead: tuple[int, ...]) -> Shapes:
        return [
            ((*lead, self.store.obs_dim), torch.float32),
            ((*lead, self.store.target_dim), torch.float32),
        ]

    def _task_shapes(self, t: int, s: int, q: int) -> Shapes:
        return [*self._row_shapes((t, s)), *self._row_shapes((t, q)), ((t,), torch.int64)]

    def _feed(self, key: tuple[Any, ...], shapes: Shapes, fill: Filler) -> list[torch.Tensor]:
        feed = self._feeds.get(key)
        if feed is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-feed")
            if self._stream is None and self.device.type == "cuda":
                self._stream = torch.cuda.Stream(self.device)  # the loader's copy stream
            feed = _DoubleBuffer(
                shapes, fill, self.device, self._pool, self._stream, self._start, self._timings
            )
            self._feeds[key] = feed
        if self.device.type != "cuda":
            return feed.next()
        with torch.cuda.device(self.device):  # events and streams of the loader's device
            return feed.next()

    def _norm(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalizer is None:
            return x, y
        return (
            self.normalizer.normalize_inputs(x, inplace=True),
            self.normalizer.normalize_targets(y, inplace=True),
        )


def task_window_into(
    store: Any, obs_out: np.ndarray, target_out: np.ndarray, task: int, seed: int
) -> None:
    """One window of task ``task`` drawn by the store with ``seed``, written into
    ``obs_out`` (1, l, d) and ``target_out`` (1, l, o). ValueError when the task has none."""
    length = obs_out.shape[1]
    seeded(
        store, "sample_windows_into", obs_out, target_out, length, task_weights={task: 1.0},
        seed=seed,
    )  # fmt: skip


def windowed_tasks(store: Any, length: int) -> set[int]:
    """Task ids holding a window of ``length`` steps of one episode (the store's own rule)."""
    return {int(t) for t, n in store.window_counts(length).items() if int(n) > 0}


_NUMPY = {torch.float32: np.float32, torch.int64: np.int64}


def _positive(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
