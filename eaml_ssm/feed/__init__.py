"""The one data path from the store to the model, and from the live stream back to the store.

    store --(Rust samplers, GIL released)--> StoreLoader / ReplayFeed --> model tensors
    live transitions --> LiveWriter --> store

* `StoreLoader` (``loader.py``): meta-training task sets (single process and every torchrun
  rank), joint-training windows and flat rows (`ExperienceBuffer.get_batch`); zero-copy on
  CPU, pinned staging with overlapped ``non_blocking`` copies on CUDA.
* `ReplayFeed` (``replay.py``): the adapter's replay (uniform / task_balanced / recent /
  nearest, rows or windows), chosen and gathered by the store.
* `LiveWriter` (``live.py``): each new transition into the store with its own task,
  episode and step ids.

This package is the only code of `eaml_ssm` that calls the store's samplers (``sample*``,
``gather``, ``windows_at``); ``tests/test_feed.py`` checks that.
"""

from eaml_ssm.feed.live import LiveWriter
from eaml_ssm.feed.loader import StoreLoader, draw_seed, indexed_device, seeded, windowed_tasks
from eaml_ssm.feed.replay import ReplayFeed

__all__ = [
    "LiveWriter",
    "ReplayFeed",
    "StoreLoader",
    "draw_seed",
    "indexed_device",
    "seeded",
    "windowed_tasks",
]
