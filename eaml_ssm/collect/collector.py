"""`collect`: several tasks stepped by workers, their rows written into one store.

Checks the arguments, splits the tasks into one `Job` per worker (seeds drawn per task, so the
rows do not depend on the split) and runs them on the chosen backend (`eaml_ssm.collect.writers`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eaml_ssm.collect.budget import Budget, budget_of
from eaml_ssm.collect.exploration import exploration_actions
from eaml_ssm.collect.steps import Job
from eaml_ssm.collect.writers import BACKENDS, Counter, run_processes, run_threads, shared_file
from eaml_ssm.progress import progress as progress_bar
from eaml_ssm.tasks import Task, TaskFamily, get_family

logger = logging.getLogger(__name__)


@dataclass
class CollectStats:
    """What one `collect` call wrote."""

    transitions: int  # rows added to the store
    episodes: int  # episodes finished (truncated or terminated) during the call
    segments: int  # store.add calls
    seconds: float  # wall time


def _jobs(
    tasks: Sequence[Task],
    task_ids: Sequence[int],
    budget: Budget,
    num_workers: int,
    seed: int,
    policy: str,
    max_repeat: int,
    first_episode: int,
    chunk_rows: int,
) -> list[Job]:
    seqs = [np.random.SeedSequence([seed, tid]) for tid in task_ids]
    env_seeds = [int(s.generate_state(1)[0]) for s in seqs]
    pol_seeds = [int(s.spawn(1)[0].generate_state(1)[0]) for s in seqs]
    groups = [list(range(w, len(tasks), num_workers)) for w in range(num_workers)]
    return [
        Job(
            tasks=tuple(tasks[i] for i in g),
            task_ids=tuple(task_ids[i] for i in g),
            env_seeds=tuple(env_seeds[i] for i in g),
            policy_seeds=tuple(pol_seeds[i] for i in g),
            horizon=budget.horizon,
            episodes=budget.episodes,
            policy=policy,
            max_repeat=max_repeat,
            first_episode=first_episode,
            chunk_rows=chunk_rows,
        )
        for g in groups
        if g
    ]


def _validate(
    tasks: Sequence[Task], task_ids: Sequence[int], store: Any, workers: int
) -> TaskFamily:
    if not tasks:
        raise ValueError("need at least one task")
    env_ids = {t.env_id for t in tasks}
    if len(env_ids) != 1:
        raise ValueError(f"all tasks must share one environment id, got {sorted(env_ids)}")
    if len(task_ids) != len(tasks) or len(set(task_ids)) != len(task_ids):
        raise ValueError(f"need {len(tasks)} distinct task ids, got {list(task_ids)}")
    if any(int(t) < 0 for t in task_ids):
        raise ValueError("task ids must be >= 0")
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {workers}")
    fam = get_family(tasks[0].env_id)
    if store.obs_dim != fam.input_dim or store.target_dim != fam.target_dim:
        raise ValueError(
            f"store has obs_dim {store.obs_dim}, target_dim {store.target_dim}; "
            f"{fam.env_id} rows need obs_dim {fam.input_dim}, target_dim {fam.target_dim}"
        )
    return fam


def _check_options(
    fam: TaskFamily, backend: str, policy: str, max_repeat: int, chunk_rows: int
) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    exploration_actions(
        fam.action_space, 1, np.random.default_rng(0), kind=policy, max_repeat=max_repeat
    )  # fail fast on a bad policy


def collect(
    tasks: Sequence[Task],
    store: Any,
    steps_per_task: int = 0,
    *,
    episodes_per_task: int | None = None,
    task_ids: Sequence[int] | None = None,
    num_workers: int = 1,
    backend: str = "thread",
    policy: str = "repeat",
    max_repeat: int = 4,
    seed: int = 0,
    first_episode: int = 0,
    chunk_rows: int = 1024,
    progress: bool | None = None,
) -> CollectStats:
    """Collect every task for `steps_per_task` env steps or `episodes_per_task` whole episodes.

    Give exactly one: with `steps_per_task`, exactly ``len(tasks) * steps_per_task`` rows are
    added (episodes that end are reset and continued, the last one may be cut); with
    `episodes_per_task` (and ``steps_per_task=0``), each task adds exactly that many complete
    episodes (at most ``max_rows(...)`` rows) and then stops contributing rows. `task_ids`
    default to ``0..len(tasks)-1``. `progress=None` shows a bar (logged when not on a terminal). The
    same arguments give the same rows (in an order that may differ between runs when
    `num_workers > 1`), whatever the backend:

    * ``"thread"``: `num_workers` threads step their envs and all call ``store.add``;
    * ``"process"``: worker processes step their envs and stream segments to writer threads
      in the parent, which add them to `store`;
    * ``"shared"``: `store` must be file-backed (``RingBuffer.create(path, ...)``); each
      worker process opens the file (``RingBuffer.open``) and adds its rows itself, only
      counts come back to the parent. A worker that dies raises RuntimeError (after the
      others finish); the rows it had written stay in the store.
    """
    ids = list(range(len(tasks))) if task_ids is None else [int(t) for t in task_ids]
    fam = _validate(tasks, ids, store, num_workers)
    budget = budget_of(fam.env_id, steps_per_task, episodes_per_task)
    _check_options(fam, backend, policy, max_repeat, chunk_rows)
    shared = shared_file(store, backend)
    workers = min(num_workers, len(tasks))
    jobs = _jobs(tasks, ids, budget, workers, seed, policy, max_repeat, first_episode, chunk_rows)
    total, unit = budget.progress_total(len(tasks))
    start = time.perf_counter()
    desc = f"collect {fam.env_id}"
    with progress_bar(total=total, desc=desc, unit=unit, quiet=progress is False) as bar:
        counter = Counter(bar)
        errors: list[BaseException] = []
        if backend == "thread":
            run_threads(store, jobs, counter, errors)
        else:
            run_processes(store, jobs, counter, errors, shared)
    if errors:
        raise errors[0]
    seconds = time.perf_counter() - start
    logger.info("collected %d transitions of %d tasks in %.2fs", counter.rows, len(tasks), seconds)
    return CollectStats(counter.rows, counter.episodes, counter.segments, seconds)
