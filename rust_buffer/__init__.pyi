"""Type stubs for rust_buffer (hand-written; checked with ``python -m mypy.stubtest rust_buffer``).

Shape glossary: b batch, l sequence length, t tasks, s support rows, q query rows,
do obs_dim, dt target_dim.
"""

import os
from pathlib import Path
from typing import Literal, TypeAlias, final, overload

import numpy as np
import numpy.typing as npt

__version__: str
__all__ = ["RingBuffer", "__version__"]

_F32: TypeAlias = npt.NDArray[np.float32]
_I64: TypeAlias = npt.NDArray[np.int64]
_Meta: TypeAlias = int | npt.ArrayLike

@final
class RingBuffer:
    """A lock-free ring of float32 obs/target rows with int64 task_id, episode_id, step."""

    def __new__(
        cls,
        capacity: int,
        obs_dim: int,
        target_dim: int,
        *,
        seed: int | None = None,
        retention: Literal["fifo", "reservoir"] = "fifo",
    ) -> RingBuffer: ...
    def add(
        self,
        obs: npt.ArrayLike,
        target: npt.ArrayLike,
        *,
        task_id: _Meta = 0,
        episode_id: _Meta = -1,
        step: _Meta = -1,
    ) -> None:
        """Add one row (1-D obs (do,), target (dt,)) or a batch (2-D (n, do), (n, dt)).

        Metadata set to None is a TypeError (omit it for the default). TimeoutError when
        another writer (a stopped process) holds a needed slot past wait_timeout.
        """
    @overload
    def sample(self, batch_size: int, *, with_meta: Literal[False] = False) -> tuple[_F32, _F32]:
        """(obs (b, do), target (b, dt)), uniform with replacement."""
    @overload
    def sample(
        self, batch_size: int, *, with_meta: Literal[True]
    ) -> tuple[_F32, _F32, _I64, _I64, _I64]:
        """(obs, target, task_id (b,), episode_id (b,), step (b,))."""
    @overload
    def sample(
        self, batch_size: int, *, with_meta: bool
    ) -> tuple[_F32, _F32] | tuple[_F32, _F32, _I64, _I64, _I64]: ...
    def sample_into(self, obs_out: _F32, target_out: _F32) -> None:
        """Gather obs_out.shape[0] rows into obs_out (b, do) and target_out (b, dt)."""
    def sample_tasks(
        self,
        n_tasks: int,
        n_support: int,
        n_query: int,
        *,
        contiguous: bool = False,
        tasks: npt.ArrayLike | None = None,
        seed: int | None = None,
    ) -> tuple[_F32, _F32, _F32, _F32, _I64]:
        """(support_obs (t, s, do), support_target (t, s, dt), query_obs (t, q, do),
        query_target (t, q, dt), task_ids (t,)); only ``tasks`` when given; ``seed`` draws
        with its own generator."""
    def sample_sequences(self, batch_size: int, seq_len: int) -> tuple[_F32, _F32, _I64]:
        """(obs (b, l, do), target (b, l, dt), task_ids (b,))."""
    def sample_windows(
        self,
        batch_size: int,
        length: int,
        *,
        task_weights: dict[int, float] | None = None,
        recent: int | None = None,
        seed: int | None = None,
    ) -> tuple[_F32, _F32, _I64]:
        """(obs (b, l, do), target (b, l, dt), task_ids (b,)): windows of one episode."""
    def sample_windows_into(
        self,
        obs_out: _F32,
        target_out: _F32,
        length: int,
        *,
        task_weights: dict[int, float] | None = None,
        recent: int | None = None,
        seed: int | None = None,
    ) -> _I64:
        """Windows into obs_out (b, l, do) and target_out (b, l, dt); returns task_ids (b,)."""
    def window_counts(self, length: int) -> dict[int, int]:
        """Valid windows of ``length`` rows per task id (tasks with none left out)."""
    def windows_at(
        self, anchors: npt.ArrayLike, length: int
    ) -> tuple[_F32, _F32, npt.NDArray[np.bool_]]:
        """(obs (k, l, do), target (k, l, dt), valid (k,)): the window ending at each slot
        if valid, else the one starting at it."""
    def gather(self, rows: npt.ArrayLike) -> tuple[_F32, _F32]:
        """(obs (k, do), target (k, dt)): the rows held in these slots."""
    @overload
    def sample_recent(
        self, batch_size: int, window: int, *, with_meta: Literal[False] = False
    ) -> tuple[_F32, _F32]: ...
    @overload
    def sample_recent(
        self, batch_size: int, window: int, *, with_meta: Literal[True]
    ) -> tuple[_F32, _F32, _I64, _I64, _I64]: ...
    @overload
    def sample_recent(
        self, batch_size: int, window: int, *, with_meta: bool
    ) -> tuple[_F32, _F32] | tuple[_F32, _F32, _I64, _I64, _I64]: ...
    @overload
    def sample_task_rows(
        self, task_id: int, batch_size: int, *, with_meta: Literal[False] = False
    ) -> tuple[_F32, _F32]: ...
    @overload
    def sample_task_rows(
        self, task_id: int, batch_size: int, *, with_meta: Literal[True]
    ) -> tuple[_F32, _F32, _I64, _I64, _I64]: ...
    @overload
    def sample_task_rows(
        self, task_id: int, batch_size: int, *, with_meta: bool
    ) -> tuple[_F32, _F32] | tuple[_F32, _F32, _I64, _I64, _I64]: ...
    def task_counts(self) -> dict[int, int]:
        """Rows currently held per task id."""
    def obs_view(self) -> _F32:
        """Zero-copy read-only (len, do) view of the obs column, slot order."""
    def target_view(self) -> _F32:
        """Zero-copy read-only (len, dt) view of the target column."""
    def task_id_view(self) -> _I64:
        """Zero-copy read-only (len,) view of task_id."""
    def episode_id_view(self) -> _I64:
        """Zero-copy read-only (len,) view of episode_id."""
    def step_view(self) -> _I64:
        """Zero-copy read-only (len,) view of step."""
    def reseed(self, seed: int) -> None:
        """Restart the samplers' random streams from seed (rows and counters untouched)."""
    @staticmethod
    def create(
        path: str | os.PathLike[str],
        capacity: int,
        obs_dim: int,
        target_dim: int,
        *,
        seed: int | None = None,
        retention: Literal["fifo", "reservoir"] = "fifo",
    ) -> RingBuffer:
        """A file-backed store in a new memory-mapped file, shareable between processes."""
    @staticmethod
    def open(path: str | os.PathLike[str], *, seed: int | None = None) -> RingBuffer:
        """Open a file-backed store made by create (from any process)."""
    @property
    def path(self) -> Path | None: ...
    def reap_dead_writers(self) -> int:
        """Reset slots left half-written by dead writer processes; returns how many."""
    def save(self, path: str | os.PathLike[str]) -> None:
        """Save atomically and verified (temp file, fsync, read back, rename).

        Refuses symlinks, FIFOs, devices, directories and file-backed stores (ValueError).
        """
    @staticmethod
    def load(path: str | os.PathLike[str]) -> RingBuffer:
        """Load a snapshot written by save (ValueError if damaged, truncated or foreign)."""
    def clear(self) -> None:
        """Forget every row (total_added keeps counting)."""
    def __len__(self) -> int: ...
    @property
    def capacity(self) -> int: ...
    @property
    def obs_dim(self) -> int: ...
    @property
    def target_dim(self) -> int: ...
    @property
    def total_added(self) -> int: ...
    @property
    def retention(self) -> Literal["fifo", "reservoir"]: ...
    @property
    def seed(self) -> int: ...
    @property
    def wait_timeout(self) -> float:
        """Seconds add waits on a slot another writer holds before TimeoutError (default 10)."""
    @wait_timeout.setter
    def wait_timeout(self, seconds: float) -> None: ...
