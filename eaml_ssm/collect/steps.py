"""One worker's share of a collection: its envs stepped together, rows cut into segments.

A `Job` is a worker's tasks, seeds and budget. `run_job` steps one
``gymnasium.vector.SyncVectorEnv`` over them (one sub-env per task, ``SAME_STEP`` autoreset so
the true final observation of an episode is kept) and yields `Segment` s: consecutive steps of
one episode of one task, one ``store.add`` call each, so each segment is contiguous in the
store and sequence windows can use it. Ints in the same stream report progress.

Rows follow the layout of `eaml_ssm.features`: ``obs`` = raw ``[state, action_encoding]``,
``target`` = raw change of state. Episode ids: ``task_id * EPISODE_STRIDE + j`` for the j-th
episode of that task in this call (plus ``first_episode``), unique across tasks and
independent of thread timing.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from eaml_ssm.collect.exploration import exploration_actions
from eaml_ssm.features import encode_inputs, encode_targets
from eaml_ssm.tasks import Task, TaskFamily, get_family

EPISODE_STRIDE = 1_000_000  # task id i, its j-th episode: episode id i * EPISODE_STRIDE + j
_PROGRESS_EVERY = 64  # steps between progress reports of a worker


@dataclass(frozen=True)
class Segment:
    """Consecutive steps of one episode of one task: one `store.add` call."""

    obs: np.ndarray  # (n, d) raw inputs
    target: np.ndarray  # (n, o) raw changes of state
    task_id: int
    episode_id: int
    first_step: int
    episode_done: bool


@dataclass(frozen=True)
class Job:
    tasks: tuple[Task, ...]
    task_ids: tuple[int, ...]
    env_seeds: tuple[int, ...]
    policy_seeds: tuple[int, ...]
    horizon: int  # env steps each env is stepped at most (the length of its action schedule)
    episodes: int  # > 0: each env stops contributing rows after this many episodes
    policy: str
    max_repeat: int
    first_episode: int
    chunk_rows: int


def make_vector_env(tasks: Sequence[Task]) -> SyncVectorEnv:
    return SyncVectorEnv(
        [t.make_env for t in tasks], copy=False, autoreset_mode=AutoresetMode.SAME_STEP
    )


def run_job(job: Job) -> Iterator[Segment | int]:
    """Step the job's envs (`job.horizon` steps at most); yield segments and progress (ints)."""
    fam = get_family(job.tasks[0].env_id)
    acts = _schedules(job, fam)  # (l, e) or (l, e, da)
    venv = make_vector_env(job.tasks)
    try:
        obs, _ = venv.reset(seed=list(job.env_seeds))
        yield from _step_loop(job, fam, venv, np.array(obs, dtype=np.float64), acts)
    finally:
        venv.close()


def _schedules(job: Job, fam: TaskFamily) -> np.ndarray:
    per_env = [
        exploration_actions(
            fam.action_space,
            job.horizon,
            np.random.default_rng(s),
            kind=job.policy,
            max_repeat=job.max_repeat,
        )
        for s in job.policy_seeds
    ]
    return np.stack(per_env, axis=1)


def _step_loop(
    job: Job, fam: TaskFamily, venv: SyncVectorEnv, obs: np.ndarray, acts: np.ndarray
) -> Iterator[Segment | int]:
    """Step all envs together; an env whose episode quota is met stops contributing rows.

    Progress ints count env steps (rows) in steps mode and finished episodes in episodes mode.
    """
    n_envs = len(job.tasks)
    pend = _Pending(fam, n_envs, min(job.chunk_rows, job.horizon))
    base_eid = np.asarray(job.task_ids, dtype=np.int64) * EPISODE_STRIDE + job.first_episode
    episode = np.zeros(n_envs, dtype=np.int64)  # episodes finished so far, per env
    ep_step = np.zeros(n_envs, dtype=np.int64)  # step index of the current transition, per env
    active = np.ones(n_envs, dtype=bool)  # envs still contributing rows
    unreported = 0
    for t in range(job.horizon):
        nxt, _, term, trunc, info = venv.step(acts[t])
        nxt = np.array(nxt, dtype=np.float64)  # (e, ds) new obs (the reset obs where done)
        done = np.logical_or(term, trunc)  # (e,)
        pend.push(obs, acts[t], _true_next(nxt, done, info), active)
        for i in np.flatnonzero(active & (done | (pend.fill == pend.chunk))).tolist():
            yield pend.pop(
                i, job.task_ids[i], int(base_eid[i] + episode[i]), int(ep_step[i]), bool(done[i])
            )
        unreported += int(np.count_nonzero(done & active)) if job.episodes else n_envs
        ep_step = np.where(done, 0, ep_step + 1)
        episode += done
        if job.episodes:
            active &= episode < job.episodes
        obs = nxt
        if not active.any():
            break
        if (t + 1) % _PROGRESS_EVERY == 0:
            yield unreported
            unreported = 0
    if unreported:
        yield unreported
    if job.episodes and active.any():  # cannot happen while episodes end within the horizon
        raise RuntimeError(f"episodes of tasks {job.task_ids} outlasted {job.horizon} steps")
    for i in np.flatnonzero(pend.fill).tolist():
        last = int(ep_step[i]) - 1  # ep_step already counts past the last transition
        yield pend.pop(i, job.task_ids[i], int(base_eid[i] + episode[i]), last, False)


def _true_next(nxt: np.ndarray, done: np.ndarray, info: dict[str, Any]) -> np.ndarray:
    """(e, ds) the real successor states: the final obs where an episode ended."""
    true_next = nxt.copy()
    for j in np.flatnonzero(done):
        true_next[j] = info["final_obs"][j]
    return true_next


class _Pending:
    """Per-env staging of rows not yet written: (e, chunk, d) and (e, chunk, o)."""

    def __init__(self, fam: TaskFamily, n_envs: int, chunk: int) -> None:
        self.fam = fam
        self.x = np.empty((n_envs, chunk, fam.input_dim), dtype=np.float32)  # (e, chunk, d)
        self.y = np.empty((n_envs, chunk, fam.target_dim), dtype=np.float32)  # (e, chunk, o)
        self.fill = np.zeros(n_envs, dtype=np.int64)
        self.chunk = chunk

    def push(self, s: np.ndarray, a: np.ndarray, s2: np.ndarray, mask: np.ndarray) -> None:
        """Stage the transitions (s, a) -> s2 of the envs where `mask` (e,) is True."""
        rows = np.flatnonzero(mask)  # (n,): one row per staged env
        at = self.fill[rows]
        self.x[rows, at] = encode_inputs(self.fam, s[rows], a[rows])  # (n, d)
        self.y[rows, at] = encode_targets(self.fam, s[rows], s2[rows])  # (n, o)
        self.fill[rows] += 1

    def pop(self, i: int, task_id: int, episode_id: int, last_step: int, done: bool) -> Segment:
        n = int(self.fill[i])
        self.fill[i] = 0
        return Segment(
            self.x[i, :n].copy(),
            self.y[i, :n].copy(),
            task_id,
            episode_id,
            last_step - n + 1,
            bool(done),
        )
