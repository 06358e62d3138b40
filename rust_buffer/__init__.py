"""rust_buffer: a lock-free Rust experience store with zero-copy NumPy views (needs NumPy only).

``RingBuffer(capacity, obs_dim, target_dim, *, seed=None, retention="fifo")`` holds float32
``obs`` (capacity, obs_dim) and ``target`` (capacity, target_dim) rows with int64 ``task_id``,
``episode_id`` and ``step``. See ``docs/rust_buffer.md`` for the slot protocol and guarantees.

Shape glossary: b batch, l sequence length, t tasks, s support rows, q query rows,
do obs_dim, dt target_dim.
"""

from rust_buffer._rust_buffer import RingBuffer, __version__

__all__ = ["RingBuffer", "__version__"]
