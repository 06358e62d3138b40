"""Collection: several tasks stepped in vectorized gymnasium envs, rows written into the store.

Each worker owns a ``gymnasium.vector.SyncVectorEnv`` over its share of the tasks (one
sub-env per task, ``SAME_STEP`` autoreset so the true final observation of an episode is
kept) and writes finished episode segments into one `rust_buffer.RingBuffer` with
``task_id``, ``episode_id`` and ``step``. Workers are threads (``backend="thread"``, they all
call ``store.add`` at once) or processes (``backend="process"``: each process steps its envs
and streams segments back to its own writer thread in the parent, so env stepping runs in
parallel while the writes still arrive from several threads at once; the processes are
forked where the platform allows, which pays off only for long or expensive collections).

Rows follow the layout of `eaml_ssm.features`: ``obs`` = raw ``[state, action_encoding]``,
``target`` = raw change of state. One ``add`` call holds one stretch of consecutive steps of
one episode, so each segment is contiguous in the store and sequence windows can use it.

Episode ids: ``task_id * EPISODE_STRIDE + k`` for the k-th episode of that task in this call
(plus ``first_episode``), unique across tasks and independent of thread timing.

Exploration: for each env a whole action schedule is drawn up front from its own seeded
generator (so results do not depend on how tasks are split between workers):
``"repeat"`` holds a uniformly random action for 1..``max_repeat`` steps; ``"ou"`` (Box
actions only) is an Ornstein-Uhlenbeck process squashed into the action bounds.

Glossary: ``n`` envs in a worker, ``T`` steps per task, ``ds`` state dim, ``da`` action dim,
``di`` input dim, ``dt`` target dim.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from tqdm.auto import tqdm

from eaml_ssm.features import encode_inputs, encode_targets
from eaml_ssm.tasks import Task, TaskFamily, get_family

logger = logging.getLogger(__name__)

EPISODE_STRIDE = 1_000_000  # episode ids of task t are t * EPISODE_STRIDE + k
POLICIES = ("repeat", "ou", "uniform")
BACKENDS = ("thread", "process")
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
    steps: int
    policy: str
    max_repeat: int
    first_episode: int
    chunk_rows: int


def _make_vector_env(tasks: Sequence[Task]) -> SyncVectorEnv:
    return SyncVectorEnv(
        [t.make_env for t in tasks], copy=False, autoreset_mode=AutoresetMode.SAME_STEP
    )


def _run_job(job: _Job) -> Iterator[_Segment | int]:
    """Step the job's envs for `job.steps` steps; yield segments and progress counts (ints)."""
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
            job.steps,
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
    n = len(job.tasks)
    pend = _Pending(fam, n, min(job.chunk_rows, job.steps))
    base_eid = np.asarray(job.task_ids, dtype=np.int64) * EPISODE_STRIDE + job.first_episode
    episode = np.zeros(n, dtype=np.int64)  # episodes finished so far, per env
    ep_step = np.zeros(n, dtype=np.int64)  # step index of the current transition, per env
    for t in range(job.steps):
        nxt, _, term, trunc, info = venv.step(acts[t])
        nxt = np.array(nxt, dtype=np.float64)  # (n, ds) new obs (the reset obs where done)
        done = np.logical_or(term, trunc)  # (n,)
        true_next = nxt.copy()  # (n, ds) the real successor states
        for j in np.flatnonzero(done):
            true_next[j] = info["final_obs"][j]
        pend.push(obs, acts[t], true_next)
        for i in np.flatnonzero(done | (pend.fill == pend.chunk)).tolist():
            yield pend.pop(
                i, job.task_ids[i], int(base_eid[i] + episode[i]), int(ep_step[i]), bool(done[i])
            )
        ep_step = np.where(done, 0, ep_step + 1)
        episode += done
        obs = nxt
        if (t + 1) % _PROGRESS_EVERY == 0 or t + 1 == job.steps:
            yield n * ((t % _PROGRESS_EVERY) + 1)  # env steps since the last report
    for i in np.flatnonzero(pend.fill).tolist():
        last = int(ep_step[i]) - 1  # ep_step already counts past the last transition
        yield pend.pop(i, job.task_ids[i], int(base_eid[i] + episode[i]), last, False)


class _Pending:
    """Per-env staging of rows not yet written: (n, chunk, di) and (n, chunk, dt)."""

    def __init__(self, fam: TaskFamily, n: int, chunk: int) -> None:
        self.fam = fam
        self.x = np.empty((n, chunk, fam.input_dim), dtype=np.float32)  # (n, c, di)
        self.y = np.empty((n, chunk, fam.target_dim), dtype=np.float32)  # (n, c, dt)
        self.fill = np.zeros(n, dtype=np.int64)
        self.chunk = chunk

    def push(self, s: np.ndarray, a: np.ndarray, s2: np.ndarray) -> None:
        rows = np.arange(s.shape[0])
        self.x[rows, self.fill] = encode_inputs(self.fam, s, a)  # (n, di)
        self.y[rows, self.fill] = encode_targets(self.fam, s, s2)  # (n, dt)
        self.fill += 1

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


class _Counter:
    def __init__(self, bar: Any) -> None:
        self.lock = threading.Lock()
        self.bar = bar
        self.rows = self.episodes = self.segments = 0

    def segment(self, seg: _Segment) -> None:
        with self.lock:
            self.rows += seg.obs.shape[0]
            self.segments += 1
            self.episodes += int(seg.episode_done)

    def progress(self, k: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(k)


def _write(store: Any, seg: _Segment) -> None:
    m = seg.obs.shape[0]
    store.add(
        seg.obs,
        seg.target,
        task_id=seg.task_id,
        episode_id=seg.episode_id,
        step=np.arange(seg.first_step, seg.first_step + m, dtype=np.int64),
    )


def _thread_worker(store: Any, job: _Job, counter: _Counter, errors: list[BaseException]) -> None:
    try:
        for item in _run_job(job):
            if isinstance(item, int):
                counter.progress(item)
            else:
                _write(store, item)
                counter.segment(item)
    except BaseException as exc:  # re-raised in the caller's thread
        errors.append(exc)


def _process_main(job: _Job, out: Any) -> None:
    try:
        for item in _run_job(job):
            out.put(item)
        out.put(None)
    except BaseException as exc:
        out.put(RuntimeError(f"collection worker failed: {exc!r}"))


def _process_writer(
    store: Any, out: Any, proc: Any, counter: _Counter, errors: list[BaseException]
) -> None:
    try:
        while True:
            try:
                item = out.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"collection worker process died (exit code {proc.exitcode})"
                    ) from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, int):
                counter.progress(item)
            else:
                _write(store, item)
                counter.segment(item)
    except BaseException as exc:
        errors.append(exc)


def _jobs(
    tasks: Sequence[Task],
    task_ids: Sequence[int],
    steps: int,
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
            steps=steps,
            policy=policy,
            max_repeat=max_repeat,
            first_episode=first_episode,
            chunk_rows=chunk_rows,
        )
        for g in groups
        if g
    ]


def _validate(
    tasks: Sequence[Task], task_ids: Sequence[int], store: Any, steps: int, workers: int
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
    if steps < 1:
        raise ValueError(f"steps_per_task must be >= 1, got {steps}")
    if workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {workers}")
    fam = get_family(tasks[0].env_id)
    if store.obs_dim != fam.input_dim or store.target_dim != fam.target_dim:
        raise ValueError(
            f"store has obs_dim {store.obs_dim}, target_dim {store.target_dim}; "
            f"{fam.env_id} rows need obs_dim {fam.input_dim}, target_dim {fam.target_dim}"
        )
    return fam


def collect(
    tasks: Sequence[Task],
    store: Any,
    steps_per_task: int,
    *,
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
    """Step every task for `steps_per_task` env steps and write all transitions to `store`.

    Exactly ``len(tasks) * steps_per_task`` rows are added (episodes that end are reset and
    continued). `task_ids` default to ``0..len(tasks)-1``. `progress=None` shows a tqdm bar
    only on a terminal. The same arguments give the same rows (in an order that may differ
    between runs when `num_workers > 1`).
    """
    ids = list(range(len(tasks))) if task_ids is None else [int(t) for t in task_ids]
    _validate(tasks, ids, store, steps_per_task, num_workers)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    jobs = _jobs(
        tasks,
        ids,
        steps_per_task,
        min(num_workers, len(tasks)),
        seed,
        policy,
        max_repeat,
        first_episode,
        chunk_rows,
    )
    exploration_actions(
        tasks[0].family.action_space,
        1,
        np.random.default_rng(0),
        kind=policy,
        max_repeat=max_repeat,
    )  # fail fast on a bad policy
    total = len(tasks) * steps_per_task
    disable = None if progress is None else not progress
    start = time.perf_counter()
    with tqdm(total=total, desc=f"collect {tasks[0].env_id}", unit="step", disable=disable) as bar:
        counter = _Counter(bar)
        errors: list[BaseException] = []
        runner = _run_threads if backend == "thread" else _run_processes
        runner(store, jobs, counter, errors)
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


def _run_processes(store: Any, jobs: list[_Job], counter: _Counter, errors: list) -> None:
    # fork (as torch's DataLoader does on Linux): the children start at once and only step
    # gymnasium envs; spawn would re-import the caller's __main__ (often torch) in each one.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx: Any = mp.get_context(method)
    outs = [ctx.Queue(maxsize=256) for _ in jobs]
    procs = [
        ctx.Process(target=_process_main, args=(j, q), daemon=True)
        for j, q in zip(jobs, outs, strict=True)
    ]
    writers = [
        threading.Thread(target=_process_writer, args=(store, q, p, counter, errors), daemon=True)
        for q, p in zip(outs, procs, strict=True)
    ]
    for p in procs:
        p.start()
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()


# --- building a store in one call -----------------------------------------------------------


def build_store(
    tasks: Sequence[Task],
    steps_per_task: int,
    *,
    capacity: int | None = None,
    store_seed: int | None = None,
    retention: str | None = None,
    **collect_kwargs: Any,
) -> tuple[Any, CollectStats]:
    """Make a RingBuffer sized for the tasks (default: exactly all rows) and fill it.

    Returns ``(store, stats)``. `collect_kwargs` go to `collect` (task_ids, num_workers,
    backend, policy, seed, progress, ...).
    """
    import rust_buffer

    if not tasks:
        raise ValueError("need at least one task")
    fam = get_family(tasks[0].env_id)
    cap = len(tasks) * steps_per_task if capacity is None else int(capacity)
    kwargs: dict[str, Any] = {"seed": store_seed}
    if retention is not None:
        kwargs["retention"] = retention
    store = rust_buffer.RingBuffer(cap, fam.input_dim, fam.target_dim, **kwargs)
    stats = collect(tasks, store, steps_per_task, **collect_kwargs)
    return store, stats


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
