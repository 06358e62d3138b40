"""Collection: several tasks stepped in vectorized gymnasium envs, rows written into the store.

Each worker owns a ``gymnasium.vector.SyncVectorEnv`` over its share of the tasks (one
sub-env per task, ``SAME_STEP`` autoreset so the true final observation of an episode is
kept) and writes finished episode segments into one `rust_buffer.RingBuffer` with
``task_id``, ``episode_id`` and ``step``. Workers are threads (``backend="thread"``, they all
call ``store.add`` at once) or processes (``backend="process"``: each process steps its envs
and streams segments back to its own writer thread in the parent, so env stepping runs in
parallel while the writes still arrive from several threads at once; the processes are
forked where the platform allows, which pays off only for long or expensive collections),
or processes that write straight into a file-backed store (``backend="shared"``: each opens
the memory-mapped file with ``RingBuffer.open`` and adds its own rows; only counts travel
back to the parent).

Length: ``steps_per_task`` env steps per task (episodes reset and continued), or
``episodes_per_task`` complete episodes per task (an env stops contributing rows after its
quota; schedules cover ``episodes * max_episode_steps`` steps, the longest possible run).

Rows follow the layout of `eaml_ssm.features`: ``obs`` = raw ``[state, action_encoding]``,
``target`` = raw change of state. One ``add`` call holds one stretch of consecutive steps of
one episode, so each segment is contiguous in the store and sequence windows can use it.

Episode ids: ``task_id * EPISODE_STRIDE + k`` for the k-th episode of that task in this call
(plus ``first_episode``), unique across tasks and independent of thread timing.

Exploration: for each env a whole action schedule is drawn up front from its own seeded
generator (so results do not depend on how tasks are split between workers):
``"repeat"`` holds a uniformly random action for 1..``max_repeat`` steps; ``"ou"`` (Box
actions only) is an Ornstein-Uhlenbeck process squashed into the action bounds.

Glossary: ``n`` envs in a worker, ``T`` steps per task (the schedule length), ``ds`` state
dim, ``da`` action dim, ``di`` input dim, ``dt`` target dim, ``k`` envs still collecting.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv

from eaml_ssm.features import encode_inputs, encode_targets
from eaml_ssm.progress import progress as progress_bar
from eaml_ssm.tasks import Task, TaskFamily, get_family

logger = logging.getLogger(__name__)

EPISODE_STRIDE = 1_000_000  # episode ids of task t are t * EPISODE_STRIDE + k
POLICIES = ("repeat", "ou", "uniform")
BACKENDS = ("thread", "process", "shared")
_PROGRESS_EVERY = 64  # steps between progress reports of a worker


# --- exploration ----------------------------------------------------------------------------


def exploration_actions(
    action_space: spaces.Space,
    n_steps: int,
    rng: np.random.Generator,
    *,
    kind: str = "repeat",
    max_repeat: int = 4,
    ou_theta: float = 0.15,
    ou_sigma: float = 0.4,
) -> np.ndarray:
    """A whole exploration schedule: (T,) int64 for Discrete, (T, da) float32 for Box.

    ``repeat``: uniform random actions, each held 1..max_repeat steps (temporally correlated,
    so the state wanders further than with i.i.d. actions). ``uniform``: i.i.d. uniform.
    ``ou``: Box only, an OU process x <- x - theta x + sigma N(0, 1), tanh-squashed to bounds.
    """
    if kind not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {kind!r}")
    if max_repeat < 1:
        raise ValueError(f"max_repeat must be >= 1, got {max_repeat}")
    if kind == "ou":
        if not isinstance(action_space, spaces.Box):
            raise ValueError(f"policy 'ou' needs a Box action space, got {action_space}")
        return _ou_schedule(action_space, n_steps, rng, ou_theta, ou_sigma)
    holds = 1 if kind == "uniform" else max_repeat
    lengths = rng.integers(1, holds + 1, size=n_steps)  # enough holds to cover T steps
    values = _uniform_actions(action_space, n_steps, rng)
    return np.repeat(values, lengths, axis=0)[:n_steps]


def _uniform_actions(space: spaces.Space, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(space, spaces.Discrete):
        return (int(space.start) + rng.integers(0, int(space.n), size=n)).astype(np.int64)
    if isinstance(space, spaces.Box):
        low, high = space.low.reshape(-1), space.high.reshape(-1)
        return rng.uniform(low, high, size=(n, low.shape[0])).astype(np.float32)
    raise ValueError(f"unsupported action space {space}; expected Discrete or Box")


def _ou_schedule(
    space: spaces.Box, n: int, rng: np.random.Generator, theta: float, sigma: float
) -> np.ndarray:
    low, high = space.low.reshape(-1), space.high.reshape(-1)
    noise = rng.standard_normal((n, low.shape[0]))  # (T, da)
    x = np.empty_like(noise)
    cur = np.zeros(low.shape[0])
    for t in range(n):
        cur = cur - theta * cur + sigma * noise[t]
        x[t] = cur
    unit = 0.5 * (np.tanh(x) + 1.0)  # (T, da) in (0, 1)
    return (low + unit * (high - low)).astype(np.float32)


# --- one worker's share ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Segment:
    """Consecutive steps of one episode of one task: one `store.add` call."""

    obs: np.ndarray  # (m, di) raw inputs
    target: np.ndarray  # (m, dt) raw changes of state
    task_id: int
    episode_id: int
    first_step: int
    episode_done: bool


@dataclass(frozen=True)
class _Job:
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


def _make_vector_env(tasks: Sequence[Task]) -> SyncVectorEnv:
    return SyncVectorEnv(
        [t.make_env for t in tasks], copy=False, autoreset_mode=AutoresetMode.SAME_STEP
    )


def _run_job(job: _Job) -> Iterator[_Segment | int]:
    """Step the job's envs (`job.horizon` steps at most); yield segments and progress (ints)."""
    fam = get_family(job.tasks[0].env_id)
    acts = _schedules(job, fam)  # (T, n) or (T, n, da)
    venv = _make_vector_env(job.tasks)
    try:
        obs, _ = venv.reset(seed=list(job.env_seeds))
        yield from _step_loop(job, fam, venv, np.array(obs, dtype=np.float64), acts)
    finally:
        venv.close()


def _schedules(job: _Job, fam: TaskFamily) -> np.ndarray:
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
    job: _Job, fam: TaskFamily, venv: SyncVectorEnv, obs: np.ndarray, acts: np.ndarray
) -> Iterator[_Segment | int]:
    """Step all envs together; an env whose episode quota is met stops contributing rows.

    Progress ints count env steps (rows) in steps mode and finished episodes in episodes mode.
    """
    n = len(job.tasks)
    pend = _Pending(fam, n, min(job.chunk_rows, job.horizon))
    base_eid = np.asarray(job.task_ids, dtype=np.int64) * EPISODE_STRIDE + job.first_episode
    episode = np.zeros(n, dtype=np.int64)  # episodes finished so far, per env
    ep_step = np.zeros(n, dtype=np.int64)  # step index of the current transition, per env
    active = np.ones(n, dtype=bool)  # envs still contributing rows
    unreported = 0
    for t in range(job.horizon):
        nxt, _, term, trunc, info = venv.step(acts[t])
        nxt = np.array(nxt, dtype=np.float64)  # (n, ds) new obs (the reset obs where done)
        done = np.logical_or(term, trunc)  # (n,)
        pend.push(obs, acts[t], _true_next(nxt, done, info), active)
        for i in np.flatnonzero(active & (done | (pend.fill == pend.chunk))).tolist():
            yield pend.pop(
                i, job.task_ids[i], int(base_eid[i] + episode[i]), int(ep_step[i]), bool(done[i])
            )
        unreported += int(np.count_nonzero(done & active)) if job.episodes else n
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
    """(n, ds) the real successor states: the final obs where an episode ended."""
    true_next = nxt.copy()
    for j in np.flatnonzero(done):
        true_next[j] = info["final_obs"][j]
    return true_next


class _Pending:
    """Per-env staging of rows not yet written: (n, chunk, di) and (n, chunk, dt)."""

    def __init__(self, fam: TaskFamily, n: int, chunk: int) -> None:
        self.fam = fam
        self.x = np.empty((n, chunk, fam.input_dim), dtype=np.float32)  # (n, c, di)
        self.y = np.empty((n, chunk, fam.target_dim), dtype=np.float32)  # (n, c, dt)
        self.fill = np.zeros(n, dtype=np.int64)
        self.chunk = chunk

    def push(self, s: np.ndarray, a: np.ndarray, s2: np.ndarray, mask: np.ndarray) -> None:
        """Stage the transitions (s, a) -> s2 of the envs where `mask` (n,) is True."""
        rows = np.flatnonzero(mask)  # (k,)
        at = self.fill[rows]
        self.x[rows, at] = encode_inputs(self.fam, s[rows], a[rows])  # (k, di)
        self.y[rows, at] = encode_targets(self.fam, s[rows], s2[rows])  # (k, dt)
        self.fill[rows] += 1

    def pop(self, i: int, task_id: int, episode_id: int, last_step: int, done: bool) -> _Segment:
        m = int(self.fill[i])
        self.fill[i] = 0
        return _Segment(
            self.x[i, :m].copy(),
            self.y[i, :m].copy(),
            task_id,
            episode_id,
            last_step - m + 1,
            bool(done),
        )


# --- driving several workers ----------------------------------------------------------------


@dataclass
class CollectStats:
    """What one `collect` call wrote."""

    transitions: int  # rows added to the store
    episodes: int  # episodes finished (truncated or terminated) during the call
    segments: int  # store.add calls
    seconds: float  # wall time

    @property
    def steps_per_second(self) -> float:
        return self.transitions / self.seconds if self.seconds > 0 else float("inf")


class _Written(NamedTuple):
    """What a worker process that writes into the shared store reports of one segment."""

    rows: int
    episode_done: bool

    @classmethod
    def of(cls, seg: _Segment) -> _Written:
        return cls(int(seg.obs.shape[0]), seg.episode_done)


class _Counter:
    def __init__(self, bar: Any) -> None:
        self.lock = threading.Lock()
        self.bar = bar
        self.rows = self.episodes = self.segments = 0

    def segment(self, done: _Written) -> None:
        with self.lock:
            self.rows += done.rows
            self.segments += 1
            self.episodes += int(done.episode_done)

    def progress(self, k: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(k)


def _write(store: Any, seg: _Segment) -> _Written:
    m = seg.obs.shape[0]
    store.add(
        seg.obs,
        seg.target,
        task_id=seg.task_id,
        episode_id=seg.episode_id,
        step=np.arange(seg.first_step, seg.first_step + m, dtype=np.int64),
    )
    return _Written.of(seg)


def _consume(store: Any, item: _Segment | _Written | int, counter: _Counter) -> None:
    """Count one item of a worker's stream; a segment is written into `store` first."""
    if isinstance(item, int):
        counter.progress(item)
    else:
        counter.segment(_write(store, item) if isinstance(item, _Segment) else item)


def _thread_worker(store: Any, job: _Job, counter: _Counter, errors: list[BaseException]) -> None:
    try:
        for item in _run_job(job):
            _consume(store, item, counter)
    except BaseException as exc:  # re-raised in the caller's thread
        errors.append(exc)


def _process_main(job: _Job, out: Any, shared_path: str | None) -> None:
    """A worker process: stream segments to the parent, or, given `shared_path`, write them
    into that file-backed store itself and send only their sizes (and progress)."""
    try:
        store = None if shared_path is None else _open_shared(shared_path)
        for item in _run_job(job):
            out.put(
                _write(store, item) if store is not None and isinstance(item, _Segment) else item
            )
        out.put(None)
    except BaseException as exc:
        out.put(RuntimeError(f"collection worker failed: {exc!r}"))


def _open_shared(path: str) -> Any:
    """Map the file-backed store at `path` in this process (`RingBuffer.open`)."""
    import rust_buffer

    return rust_buffer.RingBuffer.open(path)


def _process_receiver(
    store: Any, out: Any, proc: Any, counter: _Counter, errors: list[BaseException]
) -> None:
    try:
        while True:
            try:
                item = out.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"collection worker process {proc.pid} died (exit code {proc.exitcode})"
                    ) from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            _consume(store, item, counter)
    except BaseException as exc:
        errors.append(exc)


@dataclass(frozen=True)
class _Budget:
    """How long each task runs: `steps` env steps, or `episodes` complete episodes."""

    steps: int  # > 0 in steps mode, 0 in episodes mode
    episodes: int  # > 0 in episodes mode, 0 in steps mode
    horizon: int  # env steps per task at most: the length of each action schedule

    def progress_total(self, n_tasks: int) -> tuple[int, str]:
        """(total, unit) of the progress bar: env steps, or finished episodes."""
        if self.episodes:
            return n_tasks * self.episodes, "episode"
        return n_tasks * self.steps, "step"


def _budget(env_id: str, steps_per_task: int, episodes_per_task: int | None) -> _Budget:
    """Check the two mutually exclusive lengths; episodes run `max_episode_steps` at most."""
    if episodes_per_task is None:
        steps = _positive_int("steps_per_task", steps_per_task)
        return _Budget(steps=steps, episodes=0, horizon=steps)
    episodes = _positive_int("episodes_per_task", episodes_per_task)
    if steps_per_task != 0:
        raise ValueError(
            "give steps_per_task or episodes_per_task, not both: got steps_per_task="
            f"{steps_per_task!r} with episodes_per_task={episodes_per_task!r} "
            "(pass steps_per_task=0 to collect whole episodes)"
        )
    return _Budget(steps=0, episodes=episodes, horizon=episodes * episode_limit(env_id))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def episode_limit(env_id: str) -> int:
    """The env's `max_episode_steps`: the longest episode (ValueError if it has none)."""
    limit = gym.spec(env_id).max_episode_steps
    if limit is None:
        raise ValueError(
            f"{env_id} has no max_episode_steps, so episodes_per_task cannot bound its "
            "episodes; use steps_per_task"
        )
    return int(limit)


def max_rows(
    tasks: Sequence[Task], steps_per_task: int = 0, *, episodes_per_task: int | None = None
) -> int:
    """Rows `collect` adds at most: exact with `steps_per_task`, an upper bound with episodes
    (every episode lasting `max_episode_steps`)."""
    if not tasks:
        raise ValueError("need at least one task")
    env_id = get_family(tasks[0].env_id).env_id  # a clear error for unsupported ids first
    return len(tasks) * _budget(env_id, steps_per_task, episodes_per_task).horizon


def _jobs(
    tasks: Sequence[Task],
    task_ids: Sequence[int],
    budget: _Budget,
    num_workers: int,
    seed: int,
    policy: str,
    max_repeat: int,
    first_episode: int,
    chunk_rows: int,
) -> list[_Job]:
    seqs = [np.random.SeedSequence([seed, tid]) for tid in task_ids]
    env_seeds = [int(s.generate_state(1)[0]) for s in seqs]
    pol_seeds = [int(s.spawn(1)[0].generate_state(1)[0]) for s in seqs]
    groups = [list(range(w, len(tasks), num_workers)) for w in range(num_workers)]
    return [
        _Job(
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


def _shared_path(store: Any, backend: str) -> str | None:
    """The file of a file-backed store for ``backend="shared"``; None for other backends."""
    if backend != "shared":
        return None
    path = getattr(store, "path", None)
    if path is None:
        raise ValueError(
            "backend='shared' needs a file-backed store made by "
            "rust_buffer.RingBuffer.create(path, ...) (or build_store(..., path=...)); "
            "got an in-memory store"
        )
    return str(path)


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
    budget = _budget(fam.env_id, steps_per_task, episodes_per_task)
    _check_options(fam, backend, policy, max_repeat, chunk_rows)
    shared = _shared_path(store, backend)
    workers = min(num_workers, len(tasks))
    jobs = _jobs(tasks, ids, budget, workers, seed, policy, max_repeat, first_episode, chunk_rows)
    total, unit = budget.progress_total(len(tasks))
    start = time.perf_counter()
    desc = f"collect {fam.env_id}"
    with progress_bar(total=total, desc=desc, unit=unit, quiet=progress is False) as bar:
        counter = _Counter(bar)
        errors: list[BaseException] = []
        if backend == "thread":
            _run_threads(store, jobs, counter, errors)
        else:
            _run_processes(store, jobs, counter, errors, shared)
    if errors:
        raise errors[0]
    seconds = time.perf_counter() - start
    logger.info("collected %d transitions of %d tasks in %.2fs", counter.rows, len(tasks), seconds)
    return CollectStats(counter.rows, counter.episodes, counter.segments, seconds)


def _run_threads(store: Any, jobs: list[_Job], counter: _Counter, errors: list) -> None:
    if len(jobs) == 1:
        _thread_worker(store, jobs[0], counter, errors)
        return
    threads = [
        threading.Thread(target=_thread_worker, args=(store, j, counter, errors), daemon=True)
        for j in jobs
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def _run_processes(
    store: Any,
    jobs: list[_Job],
    counter: _Counter,
    errors: list,
    shared_path: str | None = None,
) -> None:
    """One process per job; a receiver thread per process writes its segments into `store`,
    or, with `shared_path`, only counts what the process wrote into the shared file itself."""
    # fork (as torch's DataLoader does on Linux): the children start at once and only step
    # gymnasium envs; spawn would re-import the caller's __main__ (often torch) in each one.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx: Any = mp.get_context(method)
    outs = [ctx.Queue(maxsize=256) for _ in jobs]
    procs = [
        ctx.Process(target=_process_main, args=(j, q, shared_path), daemon=True)
        for j, q in zip(jobs, outs, strict=True)
    ]
    receivers = [
        threading.Thread(target=_process_receiver, args=(store, q, p, counter, errors), daemon=True)
        for q, p in zip(outs, procs, strict=True)
    ]
    for p in procs:
        p.start()
    for r in receivers:
        r.start()
    for r in receivers:
        r.join()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()


# --- building a store in one call -----------------------------------------------------------


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


# --- one task as a stream -------------------------------------------------------------------


@dataclass(frozen=True)
class Stream:
    """T consecutive env steps of one task (episodes reset and continued)."""

    task: Task
    states: np.ndarray  # (T, ds) float32
    actions: np.ndarray  # (T,) int64 for Discrete, (T, da) float32 for Box
    next_states: np.ndarray  # (T, ds) float32: the true successor (final obs at an episode end)
    starts: np.ndarray  # (T,) bool: True where a new episode begins at this step

    def __len__(self) -> int:
        return int(self.states.shape[0])

    def transitions(self) -> tuple[np.ndarray, np.ndarray]:
        """Raw model rows (inputs (T, di), targets (T, dt)), as stored."""
        fam = self.task.family
        return encode_inputs(fam, self.states, self.actions), encode_targets(
            fam, self.states, self.next_states
        )


Policy = Callable[[np.ndarray], Any]


def rollout(
    task: Task,
    n_steps: int,
    policy: Policy | str = "repeat",
    *,
    seed: int = 0,
    max_repeat: int = 4,
) -> Stream:
    """Roll `task` forward `n_steps` steps (resetting at episode ends) and return the stream.

    `policy` is an exploration kind (see `exploration_actions`) or a callable
    ``state (ds,) -> action``. The same (task, policy, seed) gives the same stream.
    """
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    fam = task.family
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    schedule = None
    if isinstance(policy, str):
        schedule = exploration_actions(
            fam.action_space, n_steps, rng, kind=policy, max_repeat=max_repeat
        )
    elif not callable(policy):
        raise TypeError(f"policy must be a kind name or a callable, got {type(policy).__name__}")
    env = task.make_env()
    try:
        return _roll(env, task, fam, n_steps, schedule, policy, seed)
    finally:
        env.close()


def _roll(
    env: gym.Env,
    task: Task,
    fam: TaskFamily,
    n: int,
    schedule: np.ndarray | None,
    policy: Any,
    seed: int,
) -> Stream:
    states = np.empty((n, fam.state_dim), dtype=np.float32)  # (T, ds)
    nexts = np.empty_like(states)  # (T, ds)
    starts = np.zeros(n, dtype=bool)
    actions: list[Any] = []
    obs, _ = env.reset(seed=seed)
    starts[0] = True
    for t in range(n):
        a = schedule[t] if schedule is not None else policy(np.asarray(obs))
        nxt, _, term, trunc, _ = env.step(a)
        states[t], nexts[t] = obs, nxt
        actions.append(a)
        if term or trunc:
            nxt, _ = env.reset()
            if t + 1 < n:
                starts[t + 1] = True
        obs = nxt
    acts: np.ndarray
    if fam.discrete_actions:
        acts = np.asarray(actions, dtype=np.int64).reshape(n)
    else:
        acts = np.asarray(actions, dtype=np.float32).reshape(n, fam.action_dim)
    return Stream(task, states, acts, nexts, starts)
