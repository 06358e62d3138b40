"""The feed from the store to the model: store samples -> (normalized) torch tensors.

`StoreLoader(store, device, normalizer)` offers three kinds of batch:

* ``batch(b)``                     -> x (b, di), y (b, dt)                 flat rows
* ``tasks(t, s, q, contiguous)``   -> sx (t, s, di), sy (t, s, dt), qx (t, q, di),
                                      qy (t, q, dt), task_ids (t,)          MAML task sets
* ``sequences(b, l)``              -> x (b, l, di), y (b, l, dt), task_ids (b,)   SSM windows

On CPU the arrays the store returns are wrapped with ``torch.from_numpy`` (no copy) and
normalized in place, so a batch costs the store's gather and nothing else.

On CUDA each batch kind has two pinned staging slots allocated by torch
(``pin_memory=True``). A background thread fills one slot (``sample_into`` writes straight
into the pinned memory with the GIL released; task sets and windows are gathered by the
store and copied into the slot) while the other slot's batch is copied to the device with
``non_blocking=True`` and used by the caller: sampling batch k+1 overlaps step k. A CUDA
event per slot stops a slot from being refilled before its copy has finished.

Glossary: ``b`` batch, ``l`` window length, ``t`` tasks, ``s`` support rows, ``q`` query
rows, ``di`` input dim (= store obs_dim), ``dt`` target dim.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from eaml_ssm.features import Normalizer

Filler = Callable[[list[np.ndarray]], None]


def _wrap(arr: np.ndarray) -> torch.Tensor:
    """torch.from_numpy without a copy (the store hands out fresh, writable arrays)."""
    return torch.from_numpy(arr)


class _DoubleBuffer:
    """Two staging slots of fixed shapes; slot k+1 is filled while slot k's batch is used.

    On CUDA the slots are pinned and leave with ``non_blocking=True`` copies; an event per
    slot keeps a slot from being refilled before its copy is done. On CPU (used by the tests
    of this logic) the slots are plain memory and a batch leaves as a clone.
    """

    def __init__(
        self,
        shapes: Sequence[tuple[tuple[int, ...], torch.dtype]],
        fill: Filler,
        device: torch.device,
        pool: ThreadPoolExecutor,
    ) -> None:
        self.cuda = device.type == "cuda"
        self.slots = [
            [torch.empty(shape, dtype=dt, pin_memory=self.cuda) for shape, dt in shapes]
            for _ in range(2)
        ]
        self.views = [[t.numpy() for t in slot] for slot in self.slots]  # same memory
        self.events = [torch.cuda.Event(), torch.cuda.Event()] if self.cuda else []
        self.fill = fill
        self.device = device
        self.pool = pool
        self.cur = 0
        self.pending: Future[None] | None = None

    def _submit(self, k: int) -> None:
        if self.cuda:
            self.events[k].synchronize()  # the last copy out of slot k has finished
        self.pending = self.pool.submit(self.fill, self.views[k])

    def next(self) -> list[torch.Tensor]:
        if self.pending is None:
            self._submit(self.cur)
        assert self.pending is not None
        try:
            self.pending.result()  # slot `cur` is filled (re-raises a sampling error)
        finally:
            self.pending = None
        k = self.cur
        if self.cuda:
            out = [t.to(self.device, non_blocking=True) for t in self.slots[k]]
            self.events[k].record()
        else:
            out = [t.clone() for t in self.slots[k]]
        self.cur = 1 - k
        self._submit(self.cur)  # gather the next batch while the caller computes
        return out

    def drain(self) -> None:
        if self.pending is not None:
            self.pending.exception()
            self.pending = None


class StoreLoader:
    """Tensors from a `rust_buffer.RingBuffer` for the model (see the module docstring).

    `normalizer` (optional) turns raw store rows into model space; without it the tensors
    hold the raw rows. Not thread-safe: one consumer per loader.
    """

    def __init__(
        self,
        store: Any,
        device: torch.device | str = "cpu",
        normalizer: Normalizer | None = None,
        *,
        pinned: bool | None = None,
    ) -> None:
        self.store = store
        self.device = torch.device(device)
        if normalizer is not None and (
            normalizer.input_dim != store.obs_dim or normalizer.target_dim != store.target_dim
        ):
            raise ValueError(
                f"normalizer is ({normalizer.input_dim}, {normalizer.target_dim}), store rows "
                f"are ({store.obs_dim}, {store.target_dim})"
            )
        self.normalizer = None if normalizer is None else normalizer.to(self.device)
        use_pinned = self.device.type == "cuda" if pinned is None else pinned
        if use_pinned and self.device.type != "cuda":
            raise ValueError(f"pinned staging needs a CUDA device, got {self.device}")
        self.pinned = use_pinned
        self._pool: ThreadPoolExecutor | None = None
        self._feeds: dict[tuple[Any, ...], _DoubleBuffer] = {}

    # -- public batch kinds ----------------------------------------------------------------

    def batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform rows: x (b, di), y (b, dt)."""
        _positive(batch_size=batch_size)
        if not self.pinned:
            obs, tgt = self.store.sample(batch_size)
            return self._norm(_wrap(obs), _wrap(tgt))
        x, y = self._feed(("batch", batch_size), self._batch_shapes(batch_size), self._fill_batch)
        return self._norm(x, y)

    def tasks(
        self, n_tasks: int, n_support: int, n_query: int, *, contiguous: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-task support/query sets: (t, s, di), (t, s, dt), (t, q, di), (t, q, dt), (t,)."""
        _positive(n_tasks=n_tasks, n_support=n_support, n_query=n_query)
        if not self.pinned:
            so, st, qo, qt, ids = self.store.sample_tasks(
                n_tasks, n_support, n_query, contiguous=contiguous
            )
            sx, sy = self._norm(_wrap(so), _wrap(st))
            qx, qy = self._norm(_wrap(qo), _wrap(qt))
            return sx, sy, qx, qy, _wrap(ids)
        key = ("tasks", n_tasks, n_support, n_query, contiguous)
        do, dt = self.store.obs_dim, self.store.target_dim
        shapes = [
            ((n_tasks, n_support, do), torch.float32),
            ((n_tasks, n_support, dt), torch.float32),
            ((n_tasks, n_query, do), torch.float32),
            ((n_tasks, n_query, dt), torch.float32),
            ((n_tasks,), torch.int64),
        ]

        def fill(out: list[np.ndarray]) -> None:
            res = self.store.sample_tasks(n_tasks, n_support, n_query, contiguous=contiguous)
            for dst, src in zip(out, res, strict=True):
                np.copyto(dst, src)

        sx, sy, qx, qy, ids = self._feed(key, shapes, fill)
        sx, sy = self._norm(sx, sy)
        qx, qy = self._norm(qx, qy)
        return sx, sy, qx, qy, ids

    def sequences(
        self, batch_size: int, seq_len: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Windows of one episode: x (b, l, di), y (b, l, dt), task_ids (b,)."""
        _positive(batch_size=batch_size, seq_len=seq_len)
        if not self.pinned:
            obs, tgt, ids = self.store.sample_sequences(batch_size, seq_len)
            x, y = self._norm(_wrap(obs), _wrap(tgt))
            return x, y, _wrap(ids)
        do, dt = self.store.obs_dim, self.store.target_dim
        shapes = [
            ((batch_size, seq_len, do), torch.float32),
            ((batch_size, seq_len, dt), torch.float32),
            ((batch_size,), torch.int64),
        ]

        def fill(out: list[np.ndarray]) -> None:
            for dst, src in zip(out, self.store.sample_sequences(batch_size, seq_len), strict=True):
                np.copyto(dst, src)

        x, y, ids = self._feed(("seq", batch_size, seq_len), shapes, fill)
        x, y = self._norm(x, y)
        return x, y, ids

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

    def _batch_shapes(self, b: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        return [
            ((b, self.store.obs_dim), torch.float32),
            ((b, self.store.target_dim), torch.float32),
        ]

    def _fill_batch(self, out: list[np.ndarray]) -> None:
        self.store.sample_into(out[0], out[1])  # GIL released inside; straight into pinned

    def _feed(
        self, key: tuple[Any, ...], shapes: list[tuple[tuple[int, ...], torch.dtype]], fill: Filler
    ) -> list[torch.Tensor]:
        feed = self._feeds.get(key)
        if feed is None:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-feed")
            feed = _DoubleBuffer(shapes, fill, self.device, self._pool)
            self._feeds[key] = feed
        return feed.next()

    def _norm(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.normalizer is None:
            return x, y
        return (
            self.normalizer.normalize_inputs(x, inplace=True),
            self.normalizer.normalize_targets(y, inplace=True),
        )


def _positive(**sizes: int) -> None:
    for name, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
