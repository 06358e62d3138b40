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


def pytest_collection_modifyitems(config, items):  # type: ignore[no-untyped-def]
    """Tests marked ``gpu`` skip without CUDA (benchmarks/gpu_check.py fails on such skips)."""
    import pytest

    if torch is not None and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
