"""Shared timing helper of the torch benchmarks (run them as `python benchmarks/<name>.py`)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_seconds(
    fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 3
) -> float:
    """Median seconds per call over `repeats` calls after `warmup` calls (CUDA synchronized)."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)
