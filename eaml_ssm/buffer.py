"""`ExperienceBuffer`: the original project's buffer API as a thin torch facade over the store.

    buf = ExperienceBuffer(max_size=100_000, device="cpu")
    buf.add(obs, targets)          # (d,) / (o,) one row, or (n, d) / (n, o)
    batch = buf.get_batch(64)      # (obs (n, d), targets (n, o)) on `device`, or None
    len(buf)

Rows live in a `rust_buffer.RingBuffer` (created at the first `add`, when the row widths are
known, or passed in with `ExperienceBuffer.from_store`). When the buffer is full the oldest
rows are overwritten (or, with ``retention="reservoir"``, replaced uniformly at random).

With a `Normalizer` the facade speaks *model space* while the store keeps *raw* rows (the
layout of `eaml_ssm.features`): `add` denormalizes, `get_batch` normalizes. That is how the
adapter replays the meta-training store, whose rows are raw.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch

from eaml_ssm.features import Normalizer


def _rows(x: Any, what: str) -> np.ndarray:
    """Tensor/array/list of 1 or 2 dims -> float32 (n, d) numpy (no autograd)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be 1-D (one row) or 2-D (rows, d), got shape {arr.shape}")
    return arr


class ExperienceBuffer:
    """The seed's `ExperienceBuffer(max_size, device)`, backed by `rust_buffer.RingBuffer`."""

    def __init__(
        self,
        max_size: int,
        device: torch.device | str = "cpu",
        *,
        normalizer: Normalizer | None = None,
        seed: int | None = None,
        retention: Literal["fifo", "reservoir"] = "fifo",
    ) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        self.max_size = max_size
        self.device = torch.device(device)
        self.normalizer = None if normalizer is None else normalizer.to("cpu")
        self._seed = seed
        self._retention = retention
        self.store: Any = None  # rust_buffer.RingBuffer, made at the first add
        self._loader: Any = None  # eaml_ssm.feed.StoreLoader over `store`, made at first use

    @classmethod
    def from_store(
        cls, store: Any, device: torch.device | str = "cpu", *, normalizer: Normalizer | None = None
    ) -> ExperienceBuffer:
        """Wrap an existing store (for example the meta-training store) without copying it."""
        buf = cls(int(store.capacity), device, normalizer=normalizer)
        buf.store = store
        buf._check_dims(store.obs_dim, store.target_dim)
        return buf

    def _check_dims(self, obs_dim: int, target_dim: int) -> None:
        norm = self.normalizer
        if norm is not None and (norm.input_dim, norm.target_dim) != (obs_dim, target_dim):
            raise ValueError(
                f"normalizer is ({norm.input_dim}, {norm.target_dim}), "
                f"rows are ({obs_dim}, {target_dim})"
            )

    def add(self, obs: Any, targets: Any) -> None:
        """Append rows; NaN/inf rows are rejected with ValueError (nothing is added)."""
        o, t = _rows(obs, "obs"), _rows(targets, "targets")
        if o.shape[0] != t.shape[0]:
            raise ValueError(f"obs has {o.shape[0]} rows but targets has {t.shape[0]}")
        if self.store is None:
            import rust_buffer

            self._check_dims(o.shape[1], t.shape[1])
            self.store = rust_buffer.RingBuffer(
                self.max_size, o.shape[1], t.shape[1], seed=self._seed, retention=self._retention
            )
        if o.shape[1] != self.store.obs_dim or t.shape[1] != self.store.target_dim:
            raise ValueError(
                f"rows are ({o.shape[1]}, {t.shape[1]}) wide, buffer holds "
                f"({self.store.obs_dim}, {self.store.target_dim})"
            )
        if self.normalizer is not None:
            o = self.normalizer.denormalize_inputs(torch.from_numpy(o)).numpy()
            t = self.normalizer.denormalize_targets(torch.from_numpy(t)).numpy()
        self.store.add(o, t)

    def get_batch(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """min(batch_size, len) uniform rows (with replacement) on `device`; None when empty."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if len(self) == 0:
            return None
        if self._loader is None or self._loader.store is not self.store:
            from eaml_ssm.feed import StoreLoader

            # unpinned: one small batch per call, no background worker to own
            self._loader = StoreLoader(self.store, self.device, self.normalizer, pinned=False)
        return self._loader.batch(min(batch_size, len(self)))  # (n, d), (n, o)

    def clear(self) -> None:
        if self.store is not None:
            self.store.clear()

    def __len__(self) -> int:
        return 0 if self.store is None else len(self.store)

    def __repr__(self) -> str:
        return f"ExperienceBuffer(len={len(self)}, max_size={self.max_size}, device={self.device})"
