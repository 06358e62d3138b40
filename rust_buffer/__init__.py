"""rust_buffer: a lock-free Rust experience store with zero-copy NumPy views (needs NumPy only)."""

from rust_buffer._rust_buffer import __version__

__all__ = ["__version__"]
