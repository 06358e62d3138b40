"""Shared pytest setup: one torch thread per process (faster and steadier on 2-core machines)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch
except ImportError:  # the store's own tests need NumPy only
    torch = None  # type: ignore[assignment]

if torch is not None:
    torch.set_num_threads(1)
