"""The meta-training data of a run: its tasks, the experience store, the normalizer.

`collect` is the one collect stage (one process, or a torchrun rank's shard through
`eaml_ssm.hooks.Hooks`); `load_data` reopens what an earlier `collect` kept in the run folder.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from eaml_ssm.artifacts import RunDir
from eaml_ssm.collect import build_store, max_rows
from eaml_ssm.config import RunConfig
from eaml_ssm.features import Normalizer
from eaml_ssm.hooks import ONE_PROCESS, Hooks
from eaml_ssm.tasks import Task, TaskFamily, draw_tasks, get_family

log = logging.getLogger(__name__)

STORE_FILE = "store.rbuf"
SHARED_STORE_FILE = "store.shared"  # file-backed store that collection processes write into


@dataclass
class Data:
    family: TaskFamily
    train_tasks: list[Task]
    store: Any
    normalizer: Normalizer


def train_tasks(cfg: RunConfig) -> list[Task]:
    """The run's meta-training tasks (task_id = position), from its env and seed."""
    return draw_tasks(cfg.env_name, cfg.num_tasks, seed=cfg.seed, split="train")


def collection_length(cfg: RunConfig) -> tuple[int, int | None]:
    """(steps_per_task, episodes_per_task) for `build_store`: episodes win when given."""
    episodes = cfg.episodes_per_task or None  # 0: collect steps_per_task env steps instead
    return (0 if episodes else cfg.steps_per_task), episodes


def collect_data(cfg: RunConfig, run: RunDir | None, hooks: Hooks = ONE_PROCESS) -> Data:
    """Collect the training tasks this process holds (task ids ``rank, rank + world size, ...``; all
    of them in one process) into a new store; the folder `run` (None on ranks other than
    0) gets the metrics row, tasks.json and, in one process, the store."""
    hooks.check(cfg)
    tasks = train_tasks(cfg)
    mine = hooks.tasks_held(cfg.num_tasks)
    steps, episodes = collection_length(cfg)
    # several workers: processes writing straight into one file-backed (memory-mapped) store
    shared = None
    if cfg.workers > 1 and hooks.keeps_store and run is not None:
        shared = run.path / SHARED_STORE_FILE
        shared.unlink(missing_ok=True)  # RingBuffer.create needs a new file
    rows = max_rows([tasks[i] for i in mine], steps, episodes_per_task=episodes)
    t0 = time.perf_counter()
    store, stats = build_store(
        [tasks[i] for i in mine],
        steps,
        episodes_per_task=episodes,
        capacity=min(rows, -(-cfg.buffer_size * len(mine) // cfg.num_tasks)),  # a fair share
        store_seed=cfg.seed + hooks.rank,
        path=shared,
        task_ids=mine,
        num_workers=cfg.workers,
        backend="thread" if shared is None else "shared",
        seed=cfg.seed,
        progress=None if hooks.is_main and not cfg.quiet else False,
    )
    transitions, episodes_done = hooks.total(stats.transitions, stats.episodes)
    log.info(
        "collected %d transitions (%d episodes) from %d %s tasks%s in %.1f s",
        transitions,
        episodes_done,
        len(tasks),
        cfg.env_name,
        f" on {hooks.world_size} ranks" if hooks.world_size > 1 else "",
        time.perf_counter() - t0,
    )
    if run is not None:
        run.log_metrics(
            "collect",
            transitions=transitions,
            episodes=episodes_done,
            seconds=stats.seconds,
            **hooks.collect_metrics(),
        )
        run.write_json("tasks.json", [{"task_id": i, **t.params} for i, t in enumerate(tasks)])
        if hooks.keeps_store and shared is None:  # a file-backed store already lives there
            store.save(str(run.path / STORE_FILE))
    return Data(get_family(cfg.env_name), tasks, store, hooks.normalizer(store))


def saved_store(cfg: RunConfig, run: RunDir) -> Any:
    """The store an earlier `collect` kept in this run folder, or None."""
    import rust_buffer

    saved, shared = run.path / STORE_FILE, run.path / SHARED_STORE_FILE
    if saved.exists():
        return rust_buffer.RingBuffer.load(str(saved))
    if shared.exists():
        return rust_buffer.RingBuffer.open(str(shared), seed=cfg.seed)
    return None


def load_data(cfg: RunConfig, run: RunDir) -> Data:
    """The store of an earlier `collect` in this run folder, or a fresh collection."""
    store = saved_store(cfg, run)
    if store is None:
        return collect_data(cfg, run)
    return Data(get_family(cfg.env_name), train_tasks(cfg), store, Normalizer.from_store(store))
