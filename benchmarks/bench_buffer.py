"""Benchmark rust_buffer.RingBuffer against NumPy, a compiled gather floor and peer buffers.

Everything is measured in one process on one machine, one implementation at a time (one large
store alive at once), single-threaded (torch.set_num_threads(1)). Rows are 64 + 64 float32
(obs + target, 512 bytes). Each cell is the median time of one call after warm-up (wall
time; min(wall, process CPU) for calls of 150 us or more); add rows are reported as GB/s
(1024-row batches) and us per row (single rows, timed in blocks).

    .venv/bin/python benchmarks/bench_buffer.py                    # one run, markdown tables
    .venv/bin/python benchmarks/bench_buffer.py --repeat 3         # 3 runs (subprocesses), medians
    .venv/bin/python benchmarks/bench_buffer.py --json run1.json   # also save the raw numbers
    .venv/bin/python benchmarks/bench_buffer.py --aggregate run1.json run2.json ...

Peers (optional; missing ones are skipped and named): rlox, cpprb, stable-baselines3,
TorchRL ReplayBuffer(LazyTensorStorage) + SliceSampler: the `bench` extra's pins, e.g.
`.venv/bin/pip install -c constraints.txt cpprb==11.0.0 rlox==1.2.0 stable-baselines3==2.9.2
torchrl==0.14.1 tensordict==0.14.3`.
The compiled floor is benchmarks/gather_floor.c, built with `cc -O2` at run time.

Shape glossary: b batch rows, l window length (32), n store rows, do obs_dim (64),
dt target_dim (64).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("bench_buffer")

OBS_DIM = 64
TARGET_DIM = 64
ROW_BYTES = (OBS_DIM + TARGET_DIM) * 4  # 512 bytes moved per row
ADD_BATCH = 1024
SEQ_B, SEQ_L = 256, 32
EP_LEN = 1000  # episode length in the stores (windows of 32 never cross one)
N_TASKS = 16
CHUNK = 65_536  # rows per fill call; fill data repeats every CHUNK rows
HERE = Path(__file__).resolve().parent
PREFETCH_AHEAD = 6  # rows the tuned C floor prefetches ahead
LONG_CALL_US = 150.0  # from here on, per-call CPU time is used (see pick_time)

IMPLS = [
    "rust_buffer",
    "rb sample_into",
    "C floor",
    "C floor+pf",
    "numpy fancy",
    "np.take",
    "rlox",
    "cpprb",
    "sb3",
    "torchrl",
]
PEERS = ["rlox", "cpprb", "sb3", "torchrl"]


# ----------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    unit: str  # "us" (lower is better), "us/row" (lower), "GB/s" (higher)

    @property
    def higher_is_better(self) -> bool:
        return self.unit == "GB/s"


def size_label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"


def all_cases(sizes: list[int]) -> list[Case]:
    big = size_label(max(sizes))
    out = [Case(f"sample256@{n}", f"sample(256) from {size_label(n)}", "us") for n in sizes]
    out += [Case(f"sample4096@{n}", f"sample(4096) from {size_label(n)}", "us") for n in sizes]
    out += [
        Case("add_batch", f"add 1024-row batch ({big} ring)", "GB/s"),
        Case("add_row", f"add one row ({big} ring)", "us/row"),
    ]
    out += [Case(f"seq@{n}", f"sample_sequences(256, 32) at {size_label(n)}", "us") for n in sizes]
    return out


# ---------------------------------------------------------------------------------- timing


def pick_time(wall_ns: list[float], cpu_ns: list[float]) -> float:
    """Per-call time in us: the wall median, except for calls of LONG_CALL_US or more, which
    take min(wall median, process-CPU median) so time spent preempted by other processes on
    a busy 2-core box is left out (for a multi-threaded call, CPU > wall and wall is kept)."""
    wall = statistics.median(wall_ns) / 1e3
    if wall < LONG_CALL_US:
        return wall
    return min(wall, statistics.median(cpu_ns) / 1e3)


def time_calls(fn: Callable[[], Any], budget_s: float, min_calls: int = 25) -> float:
    """Per-call time of fn in microseconds (see pick_time), after 3 warm-up calls."""
    for _ in range(3):
        fn()
    wall: list[float] = []
    cpu: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(wall) < 50_000 and (len(wall) < min_calls or time.perf_counter() < deadline):
        c0, t0 = time.process_time_ns(), time.perf_counter_ns()
        fn()
        wall.append(time.perf_counter_ns() - t0)
        cpu.append(time.process_time_ns() - c0)
    return pick_time(wall, cpu)


def time_rows(add_one: Callable[[int], Any], budget_s: float, block: int = 256) -> float:
    """Median time per single-row call, in microseconds, timing blocks of `block` calls."""
    for i in range(block):
        add_one(i)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < 25 or time.perf_counter() < deadline:
        t0 = time.perf_counter_ns()
        for i in range(block):
            add_one(i)
        times.append((time.perf_counter_ns() - t0) / block)
    return statistics.median(times) / 1e3


def gbps(us_per_batch: float) -> float:
    return ADD_BATCH * ROW_BYTES / (us_per_batch * 1e-6) / 1e9


# ------------------------------------------------------------------------------- fill data


@dataclass
class Source:
    """Random rows reused for every fill: obs (CHUNK, do), target (CHUNK, dt)."""

    obs: np.ndarray
    target: np.ndarray

    @classmethod
    def make(cls) -> Source:
        rng = np.random.default_rng(0)
        return cls(
            rng.standard_normal((CHUNK, OBS_DIM), dtype=np.float32),
            rng.standard_normal((CHUNK, TARGET_DIM), dtype=np.float32),
        )

    def chunks(self, n: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(obs (m, do), target (m, dt), global row ids (m,)) covering rows 0..n-1."""
        for g0 in range(0, n, CHUNK):
            m = min(CHUNK, n - g0)
            yield self.obs[:m], self.target[:m], np.arange(g0, g0 + m)


def window_index(rng: np.random.Generator, n: int) -> np.ndarray:
    """Row indices (b, l) of SEQ_B random windows of SEQ_L steps inside one episode each."""
    episode = rng.integers(0, n // EP_LEN, SEQ_B)
    start = episode * EP_LEN + rng.integers(0, EP_LEN - SEQ_L + 1, SEQ_B)
    return start[:, None] + np.arange(SEQ_L)


Results = dict[str, dict[str, float]]


def put(res: Results, key: str, impl: str, value: float) -> None:
    res.setdefault(key, {})[impl] = value


# ------------------------------------------------------------------------ implementations
# One function per implementation and store size, so each large store is freed on return.


def bench_rust_buffer(sizes: list[int], src: Source, res: Results, budget: float) -> dict:
    cuda: dict = {}
    for n in sizes:
        cuda = rust_buffer_at(n, n == max(sizes), src, res, budget) or cuda
        gc.collect()
    return cuda


def rust_buffer_at(n: int, big: bool, src: Source, res: Results, budget: float) -> dict:
    from rust_buffer import RingBuffer

    store = RingBuffer(n, OBS_DIM, TARGET_DIM, seed=0)
    for obs, target, g in src.chunks(n):
        episode = g // EP_LEN
        store.add(obs, target, task_id=episode % N_TASKS, episode_id=episode, step=g % EP_LEN)
    for b in (256, 4096):
        put(res, f"sample{b}@{n}", "rust_buffer", time_calls(partial(store.sample, b), budget))
        obs_out = np.empty((b, OBS_DIM), np.float32)  # (b, do)
        target_out = np.empty((b, TARGET_DIM), np.float32)  # (b, dt)
        into = time_calls(partial(store.sample_into, obs_out, target_out), budget)
        put(res, f"sample{b}@{n}", "rb sample_into", into)
    seq = time_calls(lambda: store.sample_sequences(SEQ_B, SEQ_L), budget)
    put(res, f"seq@{n}", "rust_buffer", seq)
    if not big:
        return {}
    batch_o, batch_t = src.obs[:ADD_BATCH], src.target[:ADD_BATCH]  # (1024, do), (1024, dt)
    put(
        res,
        "add_batch",
        "rust_buffer",
        gbps(time_calls(lambda: store.add(batch_o, batch_t), budget)),
    )
    rows_o, rows_t = list(src.obs[:256]), list(src.target[:256])  # 1-D rows
    per_row = time_rows(lambda i: store.add(rows_o[i], rows_t[i]), budget)
    put(res, "add_row", "rust_buffer", per_row)
    return bench_cuda(store, budget)


class GatherFloor:
    """ctypes wrapper of benchmarks/gather_floor.c, compiled into a temp dir."""

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="gather_floor_")
        lib = Path(self._tmp.name) / "libgather_floor.so"
        cmd = ["cc", "-O2", "-shared", "-fPIC", str(HERE / "gather_floor.c"), "-o", str(lib)]
        subprocess.run(cmd, check=True, capture_output=True)
        self._lib = ctypes.CDLL(str(lib))
        u64, ptrs = ctypes.c_uint64, ctypes.POINTER(ctypes.POINTER(ctypes.c_float))
        self._lib.gather_floor.restype = ctypes.c_double
        self._lib.gather_floor.argtypes = [
            ptrs,  # cols
            ctypes.POINTER(u64),  # dims
            ctypes.c_int,  # n_cols
            u64,  # n_rows
            u64,  # span
            ptrs,  # outs
            u64,  # batch
            u64,  # iters
            u64,  # seed
            u64,  # ahead (prefetch distance in rows; 0 = none)
            ctypes.c_void_p,  # wall_ns
            ctypes.c_void_p,  # cpu_ns
        ]

    def median_us(
        self, cols: list[np.ndarray], span: int, batch: int, budget: float, ahead: int = 0
    ) -> float:
        """Per-call time gathering `batch` windows of `span` rows of every column
        (`ahead` > 0: prefetch that many windows ahead)."""
        assert all(c.flags.c_contiguous and c.dtype == np.float32 for c in cols)
        n = cols[0].shape[0]
        outs = [np.empty((batch * span, c.shape[1]), np.float32) for c in cols]  # (b*l, d)
        ptr = ctypes.POINTER(ctypes.c_float)
        col_p = (ptr * len(cols))(*[c.ctypes.data_as(ptr) for c in cols])
        out_p = (ptr * len(outs))(*[o.ctypes.data_as(ptr) for o in outs])
        dims = (ctypes.c_uint64 * len(cols))(*[c.shape[1] for c in cols])
        call_args = (col_p, dims, len(cols), n, span, out_p, batch)
        # Calibrate: enough calls to fill the time budget.
        probe = np.empty((2, 5), np.float64)  # wall, cpu
        self._lib.gather_floor(*call_args, 5, 1, ahead, probe[0].ctypes.data, probe[1].ctypes.data)
        iters = int(min(50_000, max(25, budget / max(np.median(probe[0]) * 1e-9, 1e-7))))
        times = np.empty((2, iters), np.float64)
        self._lib.gather_floor(
            *call_args, iters, 12345, ahead, times[0].ctypes.data, times[1].ctypes.data
        )
        return pick_time(times[0].tolist(), times[1].tolist())


class NumpyRing:
    """The do-nothing-clever reference: two preallocated columns and a cursor."""

    def __init__(self, n: int) -> None:
        self.obs = np.empty((n, OBS_DIM), np.float32)  # (n, do)
        self.target = np.empty((n, TARGET_DIM), np.float32)  # (n, dt)
        self.pos = 0

    def add(self, obs: np.ndarray, target: np.ndarray) -> None:
        n, m = len(self.obs), len(obs)
        first = min(m, n - self.pos)
        self.obs[self.pos : self.pos + first] = obs[:first]
        self.target[self.pos : self.pos + first] = target[:first]
        if first < m:
            self.obs[: m - first] = obs[first:]
            self.target[: m - first] = target[first:]
        self.pos = (self.pos + m) % n

    def add_row(self, obs: np.ndarray, target: np.ndarray) -> None:
        self.obs[self.pos] = obs
        self.target[self.pos] = target
        self.pos = (self.pos + 1) % len(self.obs)

    def gather(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.obs[idx], self.target[idx]

    def take(self, idx: np.ndarray, obs_out: np.ndarray, target_out: np.ndarray) -> None:
        np.take(self.obs, idx, axis=0, out=obs_out)
        np.take(self.target, idx, axis=0, out=target_out)

    def gather_random(self, rng: np.random.Generator, b: int) -> tuple[np.ndarray, np.ndarray]:
        """A uniform sample the NumPy way: draw indices, fancy-index both columns."""
        return self.gather(rng.integers(0, len(self.obs), b))

    def take_random(
        self, rng: np.random.Generator, obs_out: np.ndarray, target_out: np.ndarray
    ) -> None:
        """A uniform sample into preallocated outputs with np.take(out=)."""
        self.take(rng.integers(0, len(self.obs), len(obs_out)), obs_out, target_out)


def bench_numpy_and_floor(sizes: list[int], src: Source, res: Results, budget: float) -> None:
    floor = GatherFloor()
    for n in sizes:
        numpy_at(n, n == max(sizes), floor, src, res, budget)
        gc.collect()


def numpy_at(
    n: int, big: bool, floor: GatherFloor, src: Source, res: Results, budget: float
) -> None:
    rng = np.random.default_rng(1)
    ring = NumpyRing(n)
    for obs, target, _ in src.chunks(n):
        ring.add(obs, target)
    cols = [ring.obs, ring.target]
    for b in (256, 4096):
        key = f"sample{b}@{n}"
        put(res, key, "C floor", floor.median_us(cols, 1, b, budget))
        put(res, key, "C floor+pf", floor.median_us(cols, 1, b, budget, ahead=PREFETCH_AHEAD))
        put(
            res,
            key,
            "numpy fancy",
            time_calls(partial(ring.gather_random, rng, b), budget),
        )
        o_out = np.empty((b, OBS_DIM), np.float32)  # (b, do)
        t_out = np.empty((b, TARGET_DIM), np.float32)  # (b, dt)
        take = time_calls(partial(ring.take_random, rng, o_out, t_out), budget)
        put(res, key, "np.take", take)
    put(res, f"seq@{n}", "C floor", floor.median_us(cols, SEQ_L, SEQ_B, budget))
    tuned = floor.median_us(cols, SEQ_L, SEQ_B, budget, ahead=PREFETCH_AHEAD)
    put(res, f"seq@{n}", "C floor+pf", tuned)
    put(
        res,
        f"seq@{n}",
        "numpy fancy",
        time_calls(lambda: ring.gather(window_index(rng, n)), budget),
    )
    so = np.empty((SEQ_B * SEQ_L, OBS_DIM), np.float32)  # (b*l, do)
    st = np.empty((SEQ_B * SEQ_L, TARGET_DIM), np.float32)  # (b*l, dt)
    seq_take = time_calls(lambda: ring.take(window_index(rng, n).reshape(-1), so, st), budget)
    put(res, f"seq@{n}", "np.take", seq_take)
    if big:
        bo, bt = src.obs[:ADD_BATCH], src.target[:ADD_BATCH]
        put(res, "add_batch", "numpy fancy", gbps(time_calls(lambda: ring.add(bo, bt), budget)))
        ro, rt = list(src.obs[:256]), list(src.target[:256])
        put(res, "add_row", "numpy fancy", time_rows(lambda i: ring.add_row(ro[i], rt[i]), budget))


def bench_rlox(sizes: list[int], src: Source, res: Results, budget: float) -> None:
    seeds = itertools.count()
    for n in sizes:
        rlox_flat_at(n, n == max(sizes), seeds, src, res, budget)
        gc.collect()
        rlox_seq_at(n, seeds, src, res, budget)
        gc.collect()


def rlox_flat_at(
    n: int, big: bool, seeds: Iterator[int], src: Source, res: Results, budget: float
) -> None:
    import rlox

    buf = rlox.ReplayBuffer(n, OBS_DIM, 1)  # returns obs, next_obs (= target) + small columns
    for obs, target, g in src.chunks(n):
        z, f = np.zeros(len(g), np.float32), np.zeros(len(g), np.uint8)
        buf.push_batch(obs.reshape(-1), target.reshape(-1), z, z, f, f)
    for b in (256, 4096):
        put(
            res,
            f"sample{b}@{n}",
            "rlox",
            time_calls(lambda: buf.sample(b, next(seeds)), budget),  # noqa: B023,
        )
    if not big:
        return
    bo, bt = src.obs[:ADD_BATCH].reshape(-1), src.target[:ADD_BATCH].reshape(-1)  # flat
    z, f = np.zeros(ADD_BATCH, np.float32), np.zeros(ADD_BATCH, np.uint8)
    put(
        res,
        "add_batch",
        "rlox",
        gbps(time_calls(lambda: buf.push_batch(bo, bt, z, z, f, f), budget)),
    )
    ro, rt = list(src.obs[:256]), list(src.target[:256])
    act = np.zeros(1, np.float32)
    per_row = time_rows(lambda i: buf.push(ro[i], act, 0.0, False, False, next_obs=rt[i]), budget)
    put(res, "add_row", "rlox", per_row)


def rlox_seq_at(n: int, seeds: Iterator[int], src: Source, res: Results, budget: float) -> None:
    import rlox

    seq = rlox.SequenceReplayBuffer(n, OBS_DIM, 1)  # per-row push only
    act = np.zeros(1, np.float32)
    for obs, target, g in src.chunks(n):
        ends = (g % EP_LEN) == EP_LEN - 1
        for i in range(len(g)):
            seq.push(obs[i], target[i], act, 0.0, bool(ends[i]), False)
    windows = time_calls(lambda: seq.sample_sequences(SEQ_B, SEQ_L, next(seeds)), budget)
    put(res, f"seq@{n}", "rlox", windows)


def bench_cpprb(sizes: list[int], src: Source, res: Results, budget: float) -> None:
    for n in sizes:
        cpprb_at(n, n == max(sizes), src, res, budget)
        gc.collect()


def cpprb_at(n: int, big: bool, src: Source, res: Results, budget: float) -> None:
    import cpprb

    spec = {"shape": OBS_DIM, "dtype": np.float32}
    rb = cpprb.ReplayBuffer(n, env_dict={"obs": spec, "target": dict(spec, shape=TARGET_DIM)})
    for obs, target, _ in src.chunks(n):
        rb.add(obs=obs, target=target)
    for b in (256, 4096):
        put(res, f"sample{b}@{n}", "cpprb", time_calls(partial(rb.sample, b), budget))
    if not big:
        return
    bo, bt = src.obs[:ADD_BATCH], src.target[:ADD_BATCH]
    put(res, "add_batch", "cpprb", gbps(time_calls(lambda: rb.add(obs=bo, target=bt), budget)))
    ro, rt = list(src.obs[:256]), list(src.target[:256])
    put(res, "add_row", "cpprb", time_rows(lambda i: rb.add(obs=ro[i], target=rt[i]), budget))


def bench_sb3(sizes: list[int], src: Source, res: Results, budget: float) -> None:
    for n in sizes:
        sb3_at(n, n == max(sizes), src, res, budget)
        gc.collect()
    sb3_batch_add(max(sizes), src, res, budget)
    gc.collect()


def sb3_spaces() -> tuple[Any, Any]:
    import gymnasium as gym

    obs_space = gym.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32)
    return obs_space, gym.spaces.Box(-1.0, 1.0, (1,), np.float32)


def sb3_at(n: int, big: bool, src: Source, res: Results, budget: float) -> None:
    from stable_baselines3.common.buffers import ReplayBuffer

    rb = ReplayBuffer(n, *sb3_spaces(), device="cpu", n_envs=1)
    # Filled in place (SB3's add is one step per call); next_observations plays the target.
    for obs, target, g in src.chunks(n):
        rb.observations[g[0] : g[-1] + 1, 0] = obs
        rb.next_observations[g[0] : g[-1] + 1, 0] = target
    rb.full, rb.pos = True, 0
    for b in (256, 4096):
        put(res, f"sample{b}@{n}", "sb3", time_calls(partial(rb.sample, b), budget))
    if big:
        ro, rt = [o[None] for o in src.obs[:256]], [t[None] for t in src.target[:256]]
        a, r, d = np.zeros((1, 1), np.float32), np.zeros(1, np.float32), np.zeros(1)
        put(res, "add_row", "sb3", time_rows(lambda i: rb.add(ro[i], rt[i], a, r, d, [{}]), budget))


def sb3_batch_add(n: int, src: Source, res: Results, budget: float) -> None:
    """A batch insert in SB3 is one add() on a buffer with n_envs = batch rows."""
    from stable_baselines3.common.buffers import ReplayBuffer

    rb = ReplayBuffer(n, *sb3_spaces(), device="cpu", n_envs=ADD_BATCH)
    bo, bt = src.obs[:ADD_BATCH], src.target[:ADD_BATCH]
    a = np.zeros((ADD_BATCH, 1), np.float32)
    r, d = np.zeros(ADD_BATCH, np.float32), np.zeros(ADD_BATCH)
    infos: list[dict[str, Any]] = [{}] * ADD_BATCH
    put(res, "add_batch", "sb3", gbps(time_calls(lambda: rb.add(bo, bt, a, r, d, infos), budget)))


def torchrl_rows(obs: np.ndarray, target: np.ndarray, **extra: np.ndarray) -> Any:
    """A TensorDict of rows (2-D inputs) or of one row (1-D inputs), sharing numpy memory."""
    import torch
    from tensordict import TensorDict

    data = {"obs": obs, "target": target, **extra}
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}
    return TensorDict(tensors, batch_size=[len(obs)] if obs.ndim == 2 else [])


def bench_torchrl(sizes: list[int], src: Source, res: Results, budget: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchrl  # noqa: F401  (its import-time warnings are silenced here)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    for n in sizes:
        torchrl_flat_at(n, n == max(sizes), src, res, budget)
        gc.collect()
        torchrl_seq_at(n, src, res, budget)
        gc.collect()


def torchrl_flat_at(n: int, big: bool, src: Source, res: Results, budget: float) -> None:
    from torchrl.data import LazyTensorStorage, RandomSampler, ReplayBuffer

    rb = ReplayBuffer(storage=LazyTensorStorage(n), sampler=RandomSampler())
    for obs, target, _ in src.chunks(n):
        rb.extend(torchrl_rows(obs, target))
    for b in (256, 4096):
        put(res, f"sample{b}@{n}", "torchrl", time_calls(partial(rb.sample, b), budget))
    if not big:
        return
    batch = torchrl_rows(src.obs[:ADD_BATCH], src.target[:ADD_BATCH])
    put(res, "add_batch", "torchrl", gbps(time_calls(lambda: rb.extend(batch), budget)))
    singles = [torchrl_rows(o, t) for o, t in zip(src.obs[:256], src.target[:256], strict=True)]
    put(res, "add_row", "torchrl", time_rows(lambda i: rb.add(singles[i]), budget))


def torchrl_seq_at(n: int, src: Source, res: Results, budget: float) -> None:
    from torchrl.data import LazyTensorStorage, ReplayBuffer, SliceSampler

    sampler = SliceSampler(slice_len=SEQ_L, traj_key="episode")
    rb = ReplayBuffer(storage=LazyTensorStorage(n), sampler=sampler, batch_size=SEQ_B * SEQ_L)
    for obs, target, g in src.chunks(n):
        rb.extend(torchrl_rows(obs, target, episode=g // EP_LEN))
    put(res, f"seq@{n}", "torchrl", time_calls(rb.sample, budget))


def bench_cuda(store: Any, budget: float) -> dict:
    """sample_into pinned torch tensors + H2D, against torch's pinned H2D of the same bytes."""
    try:
        import torch
    except ImportError:
        return {"skipped": "torch not importable"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    out: dict = {"device": torch.cuda.get_device_name()}
    try:
        for b in (256, 4096):
            pinned = [torch.empty((b, d), pin_memory=True) for d in (OBS_DIM, TARGET_DIM)]
            arrays = [p.numpy() for p in pinned]  # (b, do), (b, dt) views of pinned memory

            def h2d(pinned: list = pinned) -> None:
                for p in pinned:
                    p.to("cuda", non_blocking=True)
                torch.cuda.synchronize()

            def ours(arrays: list = arrays, h2d: Callable[[], None] = h2d) -> None:
                store.sample_into(arrays[0], arrays[1])
                h2d()

            out[f"B={b}"] = {
                "sample_into + H2D (us)": time_calls(ours, budget),
                "torch pinned H2D only (us)": time_calls(h2d, budget),
                "sample_into only (us)": time_calls(partial(store.sample_into, *arrays), budget),
            }
    except Exception as exc:  # report, don't lose the CPU results
        out["error"] = repr(exc)
    return out


RUNNERS: dict[str, Callable[[list[int], Source, Results, float], Any]] = {
    "rlox": bench_rlox,
    "cpprb": bench_cpprb,
    "sb3": bench_sb3,
    "torchrl": bench_torchrl,
}
IMPORT_NAME = {"rlox": "rlox", "cpprb": "cpprb", "sb3": "stable_baselines3", "torchrl": "torchrl"}


# ------------------------------------------------------------------------------------ run


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ["numpy", "torch", "eaml-ssm", "rlox", "cpprb", "stable-baselines3", "torchrl"]:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


def rust_buffer_build() -> str:
    """Which compiled extension was measured: file, mtime and a hash prefix."""
    import hashlib

    try:
        from rust_buffer import _rust_buffer  # type: ignore[attr-defined]
    except ImportError as exc:
        return f"not importable: {exc}"
    path = Path(_rust_buffer.__file__ or "")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    mtime = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(path.stat().st_mtime))
    return f"{path.name} built {mtime} sha256 {digest}"


def cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def settle_allocator() -> None:
    """Put glibc malloc in the state a long-running process reaches, the same for everyone.

    A fresh process maps each >= 128 KiB allocation anew (or trims it back to the OS on free),
    so every 1-4 MB sample output costs ~500-1000 page faults (~1 ms) until the first large
    free raises malloc's dynamic mmap/trim thresholds. Without this, whichever implementation
    runs first pays that cost and later ones do not. Freeing one 30 MiB block raises the
    thresholds (mmap 30 MiB, trim 60 MiB) for the whole run.
    """
    block = np.empty(30 << 20, np.uint8)
    del block


def run_once(sizes: list[int], impls: set[str], budget: float) -> dict:
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(1)
    started, load0 = time.time(), os.getloadavg()[0]
    build = rust_buffer_build()  # before measuring: the file may be rebuilt during the run
    settle_allocator()
    src = Source.make()
    res: Results = {}
    skipped: dict[str, str] = {}
    cuda: dict = {}
    if "rust_buffer" in impls:
        log.info("rust_buffer ...")
        cuda = bench_rust_buffer(sizes, src, res, budget)
    if impls & {"C floor", "C floor+pf", "numpy fancy", "np.take"}:
        log.info("numpy + C floor ...")
        try:
            bench_numpy_and_floor(sizes, src, res, budget)
        except (OSError, subprocess.CalledProcessError) as exc:
            skipped["C floor"] = f"could not build gather_floor.c: {exc}"
    for peer, runner in RUNNERS.items():
        if peer not in impls:
            continue
        try:
            __import__(IMPORT_NAME[peer])
        except Exception as exc:
            skipped[peer] = f"not importable ({type(exc).__name__}: {exc}); see the bench extra"
            log.warning("skipping %s: %s", peer, skipped[peer])
            continue
        log.info("%s ...", peer)
        try:
            runner(sizes, src, res, budget)
        except Exception as exc:  # a broken peer must not lose the other results
            skipped[peer] = f"failed: {exc!r}"
            log.warning("%s failed: %r", peer, exc)
        gc.collect()
    return {
        "meta": {
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
            "seconds": round(time.time() - started, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "loadavg_start_end": [round(load0, 2), round(os.getloadavg()[0], 2)],
            "cpu": cpu_name(),
            "cores": os.cpu_count(),
            "sizes": sizes,
            "versions": versions(),
            "rust_buffer_build": build,
        },
        "results": res,
        "skipped": skipped,
        "cuda": cuda,
    }


def run_repeated(args: argparse.Namespace) -> list[dict]:
    """Each run in its own process, so memory and allocator state start fresh."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_buffer_") as tmp:
        for i in range(args.repeat):
            path = Path(tmp) / f"run{i}.json"
            cmd = [sys.executable, __file__, "--json", str(path), "--quiet"]
            cmd += ["--sizes", ",".join(map(str, args.sizes)), "--budget", str(args.budget)]
            cmd += ["--only", ",".join(sorted(args.only))]
            log.info("run %d/%d", i + 1, args.repeat)
            subprocess.run(cmd, check=True)
            runs.append(json.loads(path.read_text()))
    return runs


# --------------------------------------------------------------------------------- report


def fmt(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def times(x: float | None) -> str:
    """A ratio as '1.23x', or 'n/a'."""
    return "n/a" if x is None or not np.isfinite(x) else f"{fmt(x)}x"


def aggregate(runs: list[dict]) -> tuple[dict[str, dict[str, list[float]]], dict[str, str]]:
    values: dict[str, dict[str, list[float]]] = {}
    skipped: dict[str, str] = {}
    for run in runs:
        for key, cells in run["results"].items():
            for impl, v in cells.items():
                values.setdefault(key, {}).setdefault(impl, []).append(v)
        skipped.update(run.get("skipped", {}))
    return values, skipped


def median_of(values: dict[str, dict[str, list[float]]], key: str, impl: str) -> float | None:
    cell = values.get(key, {}).get(impl)
    return statistics.median(cell) if cell else None


def speedup(case: Case, ours: float | None, other: float | None) -> float | None:
    """>1 means rust_buffer is faster than `other`."""
    if ours is None or other is None:
        return None
    return ours / other if case.higher_is_better else other / ours


def best_peer(case: Case, values: dict, key: str) -> tuple[str, float] | None:
    cells = [(p, median_of(values, key, p)) for p in PEERS]
    found = [(p, v) for p, v in cells if v is not None]
    if not found:
        return None
    pick = max if case.higher_is_better else min
    return pick(found, key=lambda pv: pv[1])


def render(runs: list[dict]) -> str:
    sizes = runs[0]["meta"]["sizes"]
    cases = all_cases(sizes)
    values, skipped = aggregate(runs)
    impls = [i for i in IMPLS if any(i in values.get(c.key, {}) for c in cases)]
    many = len(runs) > 1
    lines = []
    title = f"median [min-max] over {len(runs)} runs" if many else "one run"
    lines.append(f"### Per-call medians ({title})\n")
    lines.append("| operation | unit | " + " | ".join(impls) + " |")
    lines.append("|---|---|" + "---|" * len(impls))
    for c in cases:
        cells = []
        for impl in impls:
            v = values.get(c.key, {}).get(impl)
            if not v:
                cells.append("n/a")
            elif many:
                cells.append(f"{fmt(statistics.median(v))} [{fmt(min(v))}-{fmt(max(v))}]")
            else:
                cells.append(fmt(v[0]))
        lines.append(f"| {c.label} | {c.unit} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("### rust_buffer against the floor, the best peer and NumPy (on the medians)\n")
    lines.append(
        "| operation | rust_buffer | x C floor (time) | x C floor+pf | best peer "
        "| speed-up vs best peer "
        "| speed-up vs np.take / numpy ring |"
    )
    lines.append("|---|---|---|---|---|---|---|")
    for c in cases:
        ours = median_of(values, c.key, "rust_buffer")
        floor = median_of(values, c.key, "C floor")
        x_floor = ours / floor if ours and floor and not c.higher_is_better else None
        tuned = median_of(values, c.key, "C floor+pf")
        x_tuned = ours / tuned if ours and tuned and not c.higher_is_better else None
        peer = best_peer(c, values, c.key)
        np_ref = median_of(values, c.key, "np.take") or median_of(values, c.key, "numpy fancy")
        peer_txt = f"{peer[0]} {fmt(peer[1])}" if peer else "n/a"
        sp_peer = speedup(c, ours, peer[1]) if peer else None
        lines.append(
            f"| {c.label} | {fmt(ours)} {c.unit} | {times(x_floor)} | {times(x_tuned)} "
            f"| {peer_txt} | {times(sp_peer)} | {times(speedup(c, ours, np_ref))} |"
        )
    lines.append("")
    lines += render_targets(values, sizes)
    lines += [
        "",
        "Notes: every implementation moves the same 64 + 64 float32 per row or step (obs + "
        "target), except rlox and sb3, which also return their small action/reward/flag columns "
        "(their next_obs plays the target). numpy times include drawing the indices. "
        "`numpy fancy` on the add rows is a naive NumPy ring (slice / row assignment). "
        "SB3's batch add is one add() on an n_envs=1024 buffer. TorchRL windows: "
        "SliceSampler(slice_len=32) with default cache_values=False. The C floor is "
        "benchmarks/gather_floor.c (xorshift + memcpy per row, two columns; the targets use "
        "it); `C floor+pf` is the same loop drawing the indices first and prefetching "
        f"{PREFETCH_AHEAD} rows ahead. Calls of "
        f"{LONG_CALL_US:.0f} us or more use min(wall, process-CPU) medians, shorter ones wall "
        "medians. glibc malloc's thresholds are raised once at start (settle_allocator), so "
        "no implementation pays first-touch page faults on fresh 1-4 MB outputs.",
    ]
    for impl, why in sorted(skipped.items()):
        lines.append(f"- skipped {impl}: {why}")
    lines += render_cuda(runs)
    meta = runs[0]["meta"]
    lines.append("")
    lines.append(f"Machine: {meta['cpu']}, {meta['cores']} cores; versions: {meta['versions']}")
    for run in runs:
        m = run["meta"]
        build = m.get("rust_buffer_build", "?")
        lines.append(
            f"- run {m['date']}: {m['seconds']} s, peak RSS {m.get('peak_rss_mib', '?')} MiB, "
            f"loadavg {m['loadavg_start_end']}, {build}"
        )
    return "\n".join(lines)


def render_targets(values: dict, sizes: list[int]) -> list[str]:
    """The issue's targets, each marked met or missed on the medians."""
    out = [
        "### Targets (issue 2), on the medians\n",
        "| target | measured | met |",
        "|---|---|---|",
    ]

    def row(text: str, measured: str, ok: bool | None) -> None:
        verdict = "n/a" if ok is None else ("met" if ok else "MISSED")
        out.append(f"| {text} | {measured} | {verdict} |")

    def each_row(text: str, ratios: list[tuple[str, float | None]]) -> None:
        known = [(label, r) for label, r in ratios if r is not None]
        if not known:
            row(text, "n/a", None)
            return
        missed = [f"{label} {r:.2f}x" for label, r in known if r < 1.0]
        worst = min(known, key=lambda lr: lr[1])
        measured = "missed on: " + "; ".join(missed) if missed else f"worst {worst[1]:.2f}x"
        row(text, measured, not missed)

    cases = all_cases(sizes)
    vs_peer, vs_numpy = [], []
    for c in cases:
        ours = median_of(values, c.key, "rust_buffer")
        peer = best_peer(c, values, c.key)
        if peer:
            vs_peer.append((f"{c.label} (vs {peer[0]})", speedup(c, ours, peer[1])))
        np_ref = median_of(values, c.key, "np.take") or median_of(values, c.key, "numpy fancy")
        vs_numpy.append((c.label, speedup(c, ours, np_ref)))
    each_row("faster than every peer on every row (speed-up > 1)", vs_peer)
    each_row("at least as fast as np.take (add: NumPy ring) on every row", vs_numpy)
    for n in sizes:
        ours = median_of(values, f"sample256@{n}", "rust_buffer")
        floor = median_of(values, f"sample256@{n}", "C floor")
        r = ours / floor if ours and floor else None
        ok = None if r is None else r <= 1.3
        row(f"sample(256) within 1.3x of the floor at {size_label(n)}", f"{fmt(r)}x", ok)
    gb = median_of(values, "add_batch", "rust_buffer")
    row("batched add >= 10 GB/s", f"{fmt(gb)} GB/s", None if gb is None else gb >= 10.0)
    us = median_of(values, "add_row", "rust_buffer")
    row("single-row add <= 0.5 us", f"{fmt(us)} us", None if us is None else us <= 0.5)
    for n in sizes:
        ours = median_of(values, f"seq@{n}", "rust_buffer")
        floor = median_of(values, f"seq@{n}", "C floor")
        r = ours / floor if ours and floor else None
        ok = None if r is None else r <= 1.5
        row(f"sequences within 1.5x of the floor at {size_label(n)}", f"{fmt(r)}x", ok)
    lo, hi = min(sizes), max(sizes)
    ours_lo, ours_hi = (median_of(values, f"seq@{n}", "rust_buffer") for n in (lo, hi))
    fl_lo, fl_hi = (median_of(values, f"seq@{n}", "C floor") for n in (lo, hi))
    if ours_lo and ours_hi and fl_lo and fl_hi and lo != hi:
        growth, floor_growth = ours_hi / ours_lo, fl_hi / fl_lo
        # Flat: grows no more than the memory-bound floor itself does (+25%), or 1.25x.
        ok = growth <= max(1.25, 1.25 * floor_growth)
        text = f"sequences flat in capacity ({size_label(lo)} -> {size_label(hi)})"
        row(text, f"{growth:.2f}x (floor {floor_growth:.2f}x)", ok)
    return out


def render_cuda(runs: list[dict]) -> list[str]:
    cuda_runs = [r["cuda"] for r in runs if r.get("cuda")]
    if not cuda_runs:
        return []
    if any("skipped" in c for c in cuda_runs):
        return ["", f"GPU section skipped: {cuda_runs[0].get('skipped', '')}"]
    out = ["", f"### GPU: sample_into pinned + .to('cuda') ({cuda_runs[0].get('device')})", ""]
    out += ["| batch | sample_into + H2D us | torch pinned H2D us | sample_into us | ratio |"]
    out += ["|---|---|---|---|---|"]
    for b in ("B=256", "B=4096"):
        cells = [c[b] for c in cuda_runs if b in c]
        if not cells:
            continue
        med = {k: statistics.median(c[k] for c in cells) for k in cells[0]}
        ours, h2d = med["sample_into + H2D (us)"], med["torch pinned H2D only (us)"]
        out.append(
            f"| {b} | {fmt(ours)} | {fmt(h2d)} | {fmt(med['sample_into only (us)'])} "
            f"| {ours / h2d:.2f}x |"
        )
    for c in cuda_runs:
        if "error" in c:
            out.append(f"- GPU error: {c['error']}")
    return out


# ------------------------------------------------------------------------ window samplers
# `--windows`: the window samplers' cost at 24k / 240k / 2.4M rows of short episodes, like
# the default CartPole run's (median 13 steps, about 16 % of rows in episodes of 32 steps or
# more), with 24 and 2,400 tasks. Rows are CartPole-sized (obs 5, target 4 floats): this
# measures finding windows, not copying bandwidth. `--baseline-python` runs the same cases
# in another interpreter (e.g. the main checkout's venv, the code before the window index)
# and prints the speed-up beside each size.

WIN_SIZES = [24_000, 240_000, 2_400_000]
WIN_OBS, WIN_TARGET = 5, 4
WIN_TASKS = (24, 2400)
WIN_CASES = [
    "sample_sequences(256, 32)",
    "sample_sequences(256, 8)",
    "sample_windows(256, 16, task_weights=8 tasks)",
    "sample_windows(256, 16, recent=4096)",
    "sample_tasks(8, 16, 16, contiguous=True)",
]


def short_episode_lengths(rows: int, seed: int = 0) -> np.ndarray:
    """Episode lengths covering `rows` rows: 94 % of episodes 8-18 steps, 6 % 32-48 (median
    13 steps; about 16 % of rows in episodes of 32 steps or more)."""
    rng = np.random.default_rng(seed)
    n = rows // 8 + 16
    long = rng.random(n) < 0.058
    lengths = np.where(long, rng.integers(32, 49, n), rng.integers(8, 19, n))
    cut = int(np.searchsorted(np.cumsum(lengths), rows)) + 1
    return lengths[:cut]


def short_episode_store(n: int, n_tasks: int) -> Any:
    """A store of `n` rows: the 24k-row block of episodes replicated (new episode ids)."""
    from rust_buffer import RingBuffer

    block = short_episode_lengths(WIN_SIZES[0])
    block_rows = int(block.sum())
    step = np.concatenate([np.arange(k) for k in block])  # (block_rows,)
    ep_in_block = np.repeat(np.arange(len(block)), block)  # (block_rows,)
    store = RingBuffer(n, WIN_OBS, WIN_TARGET, seed=0)
    rng = np.random.default_rng(1)
    obs = rng.standard_normal((block_rows, WIN_OBS), dtype=np.float32)  # (m, do)
    target = rng.standard_normal((block_rows, WIN_TARGET), dtype=np.float32)  # (m, dt)
    added, rep = 0, 0
    while added < n:
        m = min(block_rows, n - added)
        episode = ep_in_block[:m] + rep * len(block)
        store.add(obs[:m], target[:m], task_id=episode % n_tasks, episode_id=episode, step=step[:m])
        added, rep = added + m, rep + 1
    return store


def window_calls(store: Any, n_tasks: int) -> dict[str, Callable[[], Any]]:
    """The cases this store's version supports (older builds lack the new samplers)."""
    calls: dict[str, Callable[[], Any]] = {
        WIN_CASES[0]: lambda: store.sample_sequences(256, 32),
        WIN_CASES[1]: lambda: store.sample_sequences(256, 8),
        WIN_CASES[4]: lambda: store.sample_tasks(8, 16, 16, contiguous=True),
    }
    if hasattr(store, "sample_windows"):
        weights = {t: 1.0 for t in range(8)}
        calls[WIN_CASES[2]] = lambda: store.sample_windows(256, 16, task_weights=weights)
        calls[WIN_CASES[3]] = lambda: store.sample_windows(256, 16, recent=4096)
    return calls


def windows_run(sizes: list[int], budget: float) -> dict:
    """{"case|tasks|size": us per call}, plus the build measured."""
    res: dict[str, float] = {}
    for n in sizes:
        for n_tasks in WIN_TASKS:
            log.info("windows: %s rows, %d tasks", size_label(n), n_tasks)
            store = short_episode_store(n, n_tasks)
            for case, fn in window_calls(store, n_tasks).items():
                res[f"{case}|{n_tasks}|{n}"] = time_calls(fn, budget)
            del store
            gc.collect()
    return {"results": res, "build": rust_buffer_build(), "sizes": sizes}


def windows_baseline(python: str, sizes: list[int], budget: float) -> dict:
    """`windows_run` in another interpreter (its own rust_buffer build)."""
    with tempfile.TemporaryDirectory(prefix="bench_windows_") as tmp:
        out = Path(tmp) / "baseline.json"
        cmd = [python, "-B", __file__, "--windows", "--json", str(out), "--quiet"]
        cmd += ["--sizes", ",".join(map(str, sizes)), "--budget", str(budget)]
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
        return json.loads(out.read_text())


def render_windows(run: dict, baseline: dict | None) -> str:
    sizes = run["sizes"]
    lo, hi = min(sizes), max(sizes)
    cols = [size_label(n) for n in sizes]
    head = f"| operation | tasks | {' | '.join(cols)} | {size_label(hi)}/{size_label(lo)} |"
    rule = "|---|---|" + "---|" * (len(sizes) + 1)
    if baseline:
        head += " " + " | ".join(f"before {c} | speed-up {c}" for c in cols) + " |"
        rule += "---|---|" * len(sizes)
    lines = ["### Window samplers, us per call (one run)\n", head, rule]
    for case in WIN_CASES:
        for n_tasks in WIN_TASKS:
            now = [run["results"].get(f"{case}|{n_tasks}|{n}") for n in sizes]
            if all(v is None for v in now):
                continue
            growth = now[-1] / now[0] if now[0] and now[-1] else None
            cells = [fmt(v) for v in now] + [times(growth)]
            if baseline:
                for n, v in zip(sizes, now, strict=True):
                    old = baseline["results"].get(f"{case}|{n_tasks}|{n}")
                    cells += [fmt(old), times(old / v if old and v else None)]
            lines.append(f"| {case} | {n_tasks} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Stores: short episodes (94 % of 8-18 steps, 6 % of 32-48: median 13, about 16 % of "
        f"rows in episodes of 32+ steps), {WIN_OBS} + {WIN_TARGET} float32 per row, tasks = "
        "episode mod tasks; the 24k block replicated to larger sizes. Wall medians per call "
        f"(min(wall, CPU) from {LONG_CALL_US:.0f} us). Build: {run['build']}"
    )
    if baseline:
        lines.append(f"Before: {baseline['build']}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--repeat", type=int, default=1, help="runs, each in a fresh process")
    p.add_argument("--json", type=Path, help="write the raw results (all runs) here")
    p.add_argument("--aggregate", type=Path, nargs="+", help="report medians over saved runs")
    p.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[100_000, 1_000_000],
        help="store capacities, comma-separated (default 100000,1000000)",
    )
    p.add_argument("--budget", type=float, default=0.4, help="seconds of timing per cell")
    p.add_argument(
        "--only",
        type=lambda s: set(s.split(",")),
        default=set(IMPLS),
        help=f"comma-separated subset of: {','.join(IMPLS)}",
    )
    p.add_argument("--quiet", action="store_true", help="no tables (with --json)")
    p.add_argument(
        "--windows",
        action="store_true",
        help="window samplers at 24k/240k/2.4M rows of short episodes (default --sizes "
        "24000,240000,2400000) instead of the main comparison",
    )
    p.add_argument(
        "--baseline-python",
        help="with --windows: also run the cases in this interpreter (another rust_buffer "
        "build, e.g. /work/main/.venv/bin/python) and print the speed-ups",
    )
    return p.parse_args(argv)


def load_runs(paths: list[Path]) -> list[dict]:
    runs: list[dict] = []
    for path in paths:
        data = json.loads(path.read_text())
        runs.extend(data.get("runs", [data]))
    return runs


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    if args.windows:
        sizes = WIN_SIZES if args.sizes == parse_args([]).sizes else args.sizes
        run = windows_run(sizes, args.budget)
        if args.json:
            args.json.write_text(json.dumps(run, indent=1))
        base = None
        if args.baseline_python:
            base = windows_baseline(args.baseline_python, sizes, args.budget)
        if not args.quiet:
            print(render_windows(run, base))
        return
    if any(n < EP_LEN or n % EP_LEN for n in args.sizes):
        raise SystemExit(f"--sizes must be multiples of {EP_LEN}")
    if "rb sample_into" in args.only:
        args.only.add("rust_buffer")
    if args.aggregate:
        runs = load_runs(args.aggregate)
    elif args.repeat > 1:
        runs = run_repeated(args)
    else:
        runs = [run_once(args.sizes, args.only, args.budget)]
    if args.json:
        args.json.write_text(json.dumps(runs[0] if len(runs) == 1 else {"runs": runs}, indent=1))
    if not args.quiet:
        print(render(runs))


if __name__ == "__main__":
    main()
