"""`build_store`: a RingBuffer sized for the tasks, filled by `collect`, in one call."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from eaml_ssm.collect.budget import max_rows
from eaml_ssm.collect.collector import CollectStats, collect
from eaml_ssm.tasks import Task, TaskFamily, get_family


def build_store(
    tasks: Sequence[Task],
    steps_per_task: int = 0,
    *,
    episodes_per_task: int | None = None,
    capacity: int | None = None,
    store_seed: int | None = None,
    retention: str | None = None,
    path: str | os.PathLike[str] | None = None,
    **collect_kwargs: Any,
) -> tuple[Any, CollectStats]:
    """Make a RingBuffer sized for the tasks and fill it; returns ``(store, stats)``.

    The capacity defaults to `max_rows`: exactly all rows with `steps_per_task`, the upper
    bound (every episode at `max_episode_steps`) with `episodes_per_task`. With `path` the
    store is file-backed (``RingBuffer.create``; the file must not exist), as
    ``backend="shared"`` needs. `collect_kwargs` go to `collect` (task_ids, num_workers,
    backend, policy, seed, progress, ...).
    """
    bound = max_rows(tasks, steps_per_task, episodes_per_task=episodes_per_task)
    fam = get_family(tasks[0].env_id)
    cap = bound if capacity is None else int(capacity)
    store = _new_store(cap, fam, store_seed, retention, path)
    stats = collect(
        tasks, store, steps_per_task, episodes_per_task=episodes_per_task, **collect_kwargs
    )
    return store, stats


def _new_store(
    capacity: int,
    fam: TaskFamily,
    seed: int | None,
    retention: str | None,
    path: str | os.PathLike[str] | None,
) -> Any:
    """An empty store of the family's widths: in memory, or file-backed at `path`."""
    import rust_buffer

    kwargs: dict[str, Any] = {"seed": seed}
    if retention is not None:
        kwargs["retention"] = retention
    shape = (capacity, fam.input_dim, fam.target_dim)
    if path is None:
        return rust_buffer.RingBuffer(*shape, **kwargs)
    return rust_buffer.RingBuffer.create(path, *shape, **kwargs)
