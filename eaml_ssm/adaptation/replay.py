"""`ExperienceSource`: what the adapter replays, from whatever store it was given.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:
    from eaml_ssm.adaptation.config import SamplingName
    from eaml_ssm.feed.replay import Transform


class ExperienceSource:
    """The adapter's replay: a `eaml_ssm.feed.ReplayFeed` over whatever store the caller has.

    Accepts a ``rust_buffer.RingBuffer``, an ``eaml_ssm.buffer.ExperienceBuffer`` (its ring
    store, made at its first ``add``, is replayed through the feed with the facade's
    normalizer), another object exposing a RingBuffer as ``store``/``ring``/``buffer``, a
    facade with ``get_batch(n)`` only (uniform rows through it), or ``None``. Every batch is
    chosen and gathered by the store (see `eaml_ssm.feed.replay`) and returned as float
    tensors on ``device``, passed through ``transform(obs, target)`` (e.g. the pipeline's
    ``Normalizer``: the store holds raw rows, the model sees normalized ones):
    rows ``(n, d)``, ``(n, o)``; windows ``(b, l, d)``, ``(b, l, o)``.

    ``old_tasks``: replay only these task ids (``AdaptationConfig.replay_live=False``: the
    adapter snapshots the store's tasks when it is built, so the live stream written into
    the store is not replayed); ``None`` replays everything the store holds.
    """

    def __init__(
        self,
        buffer: Any,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        transform: Transform | None = None,
        old_tasks: Any = None,
    ) -> None:
        from eaml_ssm.feed import ReplayFeed

        self.buffer = buffer
        self.device = torch.device(device)
        self.dtype = dtype
        facade_norm = getattr(buffer, "normalizer", None) if not _is_ring(buffer) else None
        if facade_norm is not None and transform is not None:
            raise ValueError(
                "the experience buffer already normalizes its rows (buffer.normalizer); "
                "pass transform=None, or pass the raw rust_buffer.RingBuffer with transform"
            )
        self.transform = facade_norm if facade_norm is not None else transform
        self.feed = ReplayFeed(
            lambda: find_ring(self.buffer), self.device, dtype, self.transform, seed, old_tasks
        )

    def __len__(self) -> int:
        return 0 if self.buffer is None else len(self.buffer)

    @property
    def ring(self) -> Any:
        """The store with the RingBuffer API (looked up each time: a facade makes it lazily)."""
        return find_ring(self.buffer)

    def fork(
        self, seed: int | None, old_tasks: Any = None, *, buffer: Any = None
    ) -> ExperienceSource:
        """The same store (or ``buffer``) with its own draw sequence restarted from ``seed``."""
        other = copy.copy(self)
        if buffer is not None:
            other.buffer = buffer
        other.feed = copy.copy(self.feed)
        other.feed._store = lambda: find_ring(other.buffer)
        other.feed.old_tasks = None if old_tasks is None else frozenset(old_tasks)
        other.feed.restart(seed)
        return other

    def rows(
        self,
        strategy: SamplingName,
        n: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor] | None:
        """``n`` rows by ``strategy`` -> obs ``(n, d)``, target ``(n, o)`` (None: nothing)."""
        if self.ring is None:
            return self._facade_rows(strategy, n)
        return self.feed.rows(strategy, n, query, recent=recent, candidates=candidates)

    def windows(
        self,
        strategy: SamplingName,
        b: int,
        seq_len: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor] | None:
        """``b`` windows of ``seq_len`` steps of one episode -> ``(b, l, d)``, ``(b, l, o)``;
        rows when the store has no episode structure (logged once); None: nothing to draw."""
        if self.ring is None:
            return self._facade_rows(strategy, b)
        return self.feed.windows(strategy, b, seq_len, query, recent=recent, candidates=candidates)

    def _facade_rows(self, strategy: str, n: int) -> tuple[Tensor, Tensor]:
        """Uniform rows through a facade's own ``get_batch`` (it has no store to sample)."""
        get_batch = getattr(self.buffer, "get_batch", None)
        if strategy != "uniform" or get_batch is None:
            raise ValueError(
                f"{strategy} replay needs a store with the RingBuffer samplers (a "
                f"rust_buffer.RingBuffer or an ExperienceBuffer); got {type(self.buffer).__name__}"
            )
        batch = get_batch(n)
        if batch is None:
            raise ValueError("the experience buffer holds no rows")
        obs, tgt = (t.to(self.device, self.dtype) for t in batch[:2])
        if self.transform is not None:
            obs, tgt = self.transform(obs, tgt)
        return obs, tgt


def _is_ring(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "sample") and hasattr(obj, "task_counts")


def find_ring(buffer: Any) -> Any:
    """The object that implements the RingBuffer sampling API, if any."""
    if buffer is None or _is_ring(buffer):
        return buffer
    for attr in ("store", "ring", "buffer", "_store", "_ring", "_buffer"):
        inner = getattr(buffer, attr, None)
        if _is_ring(inner):
            return inner
    return None
