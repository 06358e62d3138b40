"""Benchmark the data path: env steps into the store, and the store-to-tensor feed.

Three parts, each printing a table with ratios (one process, torch.set_num_threads(1)):

1. Collection: env steps/s written into a RingBuffer by `eaml_ssm.collect.collect` with 1 and
   2 workers (threads, and processes with a writer thread each), against the floor of the
   same SyncVectorEnv stepped with the same actions and nothing stored.
2. Loader (CPU): `StoreLoader` flat batches, MAML task sets and sequence windows against the
   naive way of the original project: a Python list of per-row tensors, random indices,
   `torch.stack` (per-task lists for task sets, per-episode lists for windows).
3. Exploration coverage: per policy, the 1st-99th percentile range of every state column
   and the number of episodes, 10 tasks x 1000 steps (wider is better coverage).
4. Pinned feed (CUDA only, skipped otherwise): `StoreLoader` on CUDA (sample_into into pinned
   double-buffered slots, non_blocking copy) against `store.sample` -> `torch.from_numpy` ->
   `.pin_memory()` -> `.to(cuda, non_blocking=True)`, with a simulated model step per batch.

Each cell is the median of `--repeat` timed runs after a warm-up.

    .venv/bin/python benchmarks/bench_collect.py              # all parts, defaults
    .venv/bin/python benchmarks/bench_collect.py --quick      # smaller sizes (smoke run)

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from eaml_ssm.collect import build_store, collect, exploration_actions
from eaml_ssm.collect.steps import make_vector_env
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import StoreLoader
from eaml_ssm.tasks import draw_tasks, get_family

log = logging.getLogger("bench_collect")


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --- 1. collection --------------------------------------------------------------------------


def _env_floor(env_id: str, n_tasks: int, steps: int) -> float:
    """Seconds to step the vectorized envs with the same kind of actions, storing nothing."""
    tasks = draw_tasks(env_id, n_tasks, seed=0)
    fam = get_family(env_id)
    acts = np.stack(
        [
            exploration_actions(fam.action_space, steps, np.random.default_rng(i))
            for i in range(n_tasks)
        ],
        axis=1,
    )
    venv = make_vector_env(tasks)
    venv.reset(seed=list(range(n_tasks)))
    t0 = time.perf_counter()
    for t in range(steps):
        venv.step(acts[t])
    dt = time.perf_counter() - t0
    venv.close()
    return dt


def bench_collect(env_id: str, n_tasks: int, steps: int, repeat: int) -> list[tuple[str, float]]:
    tasks = draw_tasks(env_id, n_tasks, seed=0)
    fam = get_family(env_id)
    total = n_tasks * steps
    rows: list[tuple[str, float]] = []
    floor = statistics.median(_env_floor(env_id, n_tasks, steps) for _ in range(repeat))
    rows.append(("env stepping only (floor)", total / floor))
    for workers, backend in ((1, "thread"), (2, "thread"), (2, "process")):
        import rust_buffer

        def run(workers: int = workers, backend: str = backend) -> None:
            store = rust_buffer.RingBuffer(total, fam.input_dim, fam.target_dim, seed=0)
            collect(tasks, store, steps, num_workers=workers, backend=backend, progress=False)

        rows.append((f"collect, {workers} {backend} worker(s)", total / _median_time(run, repeat)))
    return rows


# --- 2. loader vs naive ---------------------------------------------------------------------


class NaiveRows:
    """The seed's layout: a Python list of (obs, target) row tensors (+ per-task/episode lists)."""

    def __init__(self, store: Any) -> None:
        obs, tgt = np.array(store.obs_view()), np.array(store.target_view())
        tid, eid = np.array(store.task_id_view()), np.array(store.episode_id_view())
        self.rows = [
            (torch.from_numpy(o), torch.from_numpy(t)) for o, t in zip(obs, tgt, strict=True)
        ]
        self.by_task: dict[int, list[int]] = {}
        self.episodes: dict[int, list[int]] = {}
        for i, (t, e) in enumerate(zip(tid.tolist(), eid.tolist(), strict=True)):
            self.by_task.setdefault(t, []).append(i)
            self.episodes.setdefault(e, []).append(i)
        self.episode_list = list(self.episodes.values())

    def batch(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        pick = random.choices(self.rows, k=b)
        return torch.stack([p[0] for p in pick]), torch.stack([p[1] for p in pick])

    def tasks(self, t: int, s: int, q: int) -> tuple[torch.Tensor, ...]:
        out: list[list[torch.Tensor]] = [[], [], [], []]
        for tid in random.sample(list(self.by_task), t):
            idx = random.sample(self.by_task[tid], s + q)
            sx = torch.stack([self.rows[i][0] for i in idx[:s]])
            sy = torch.stack([self.rows[i][1] for i in idx[:s]])
            qx = torch.stack([self.rows[i][0] for i in idx[s:]])
            qy = torch.stack([self.rows[i][1] for i in idx[s:]])
            for lst, v in zip(out, (sx, sy, qx, qy), strict=True):
                lst.append(v)
        return tuple(torch.stack(v) for v in out)

    def sequences(self, b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = [], []
        long_eps = [e for e in self.episode_list if len(e) >= length]
        for _ in range(b):
            ep = random.choice(long_eps)
            st = random.randrange(len(ep) - length + 1)
            idx = ep[st : st + length]
            xs.append(torch.stack([self.rows[i][0] for i in idx]))
            ys.append(torch.stack([self.rows[i][1] for i in idx]))
        return torch.stack(xs), torch.stack(ys)


def bench_loader(
    env_id: str, n_tasks: int, steps: int, repeat: int
) -> list[tuple[str, float, float]]:
    store, _ = build_store(draw_tasks(env_id, n_tasks, seed=0), steps, seed=0, progress=False)
    naive = NaiveRows(store)
    norm = Normalizer.from_store(store)
    loader = StoreLoader(store, "cpu", norm)
    raw_loader = StoreLoader(store, "cpu")
    calls = 20

    def loop(fn: Callable[[], Any]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn()

        return run

    cases = [
        ("flat batch b=256", lambda: raw_loader.batch(256), lambda: naive.batch(256)),
        ("flat batch b=256, normalized", lambda: loader.batch(256), lambda: naive.batch(256)),
        ("flat batch b=4096", lambda: raw_loader.batch(4096), lambda: naive.batch(4096)),
        (
            "tasks t=8 s=16 q=16",
            lambda: raw_loader.tasks(8, 16, 16),
            lambda: naive.tasks(8, 16, 16),
        ),
        (
            "windows b=64 l=32",
            lambda: raw_loader.sequences(64, 32),
            lambda: naive.sequences(64, 32),
        ),
    ]
    out = []
    for name, fast, slow in cases:
        t_fast = _median_time(loop(fast), repeat) / calls
        t_slow = _median_time(loop(slow), repeat) / calls
        out.append((name, t_fast * 1e6, t_slow * 1e6))
    return out


# --- 3. exploration coverage ----------------------------------------------------------------


def bench_coverage() -> list[str]:
    lines = []
    for env_id, policies in (
        ("CartPole-v1", ("uniform", "repeat")),
        ("Pendulum-v1", ("uniform", "repeat", "ou")),
        ("MountainCarContinuous-v0", ("uniform", "repeat", "ou")),
    ):
        for pol in policies:
            tasks = draw_tasks(env_id, 10, seed=0)
            store, stats = build_store(tasks, 1000, policy=pol, seed=0, progress=False)
            states = np.asarray(store.obs_view())[:, : store.target_dim]
            lo, hi = np.percentile(states, [1, 99], axis=0)
            ranges = ", ".join(f"{r:.3g}" for r in hi - lo)
            lines.append(f"| {env_id} | {pol} | {stats.episodes} | {ranges} |")
    return lines


# --- 4. pinned feed (CUDA) --------------------------------------------------------------------


def bench_pinned(repeat: int, batch: int = 4096, dim: int = 64, steps: int = 50) -> list[str]:
    import rust_buffer

    n = 200_000
    store = rust_buffer.RingBuffer(n, dim, dim, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(n // 50_000):
        store.add(rng.standard_normal((50_000, dim)), rng.standard_normal((50_000, dim)))
    dev = torch.device("cuda")
    w = torch.randn(dim, 2048, device=dev)

    def model_step(x: torch.Tensor) -> None:
        (x @ w).relu_().sum()

    def torch_pinned() -> None:
        for _ in range(steps):
            o, t = store.sample(batch)
            x = torch.from_numpy(o).pin_memory().to(dev, non_blocking=True)
            torch.from_numpy(t).pin_memory().to(dev, non_blocking=True)
            model_step(x)
        torch.cuda.synchronize()

    loader = StoreLoader(store, dev)

    def ours() -> None:
        for _ in range(steps):
            x, _ = loader.batch(batch)
            model_step(x)
        torch.cuda.synchronize()

    t_torch = _median_time(torch_pinned, repeat) / steps
    t_ours = _median_time(ours, repeat) / steps
    loader.close()
    return [
        f"| sample {batch}x({dim}+{dim}) + H2D + model step | {t_ours * 1e6:.0f} | "
        f"{t_torch * 1e6:.0f} | {t_torch / t_ours:.2f}x |"
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    q = args.quick

    print("## Collection: env steps/s into the store\n")
    print("| env | tasks x steps | mode | steps/s | vs 1 worker | vs env floor |")
    print("|---|---|---|---|---|---|")
    for env_id, n_tasks, steps in (
        ("CartPole-v1", 40, 500 if q else 2000),
        ("Pendulum-v1", 20, 200 if q else 2000),
    ):
        rows = bench_collect(env_id, n_tasks, steps, args.repeat)
        floor = rows[0][1]
        one = rows[1][1]
        for name, rate in rows:
            print(
                f"| {env_id} | {n_tasks}x{steps} | {name} | {rate:,.0f} | {rate / one:.2f} | "
                f"{rate / floor:.2f} |"
            )

    print("\n## Loader (CPU) vs naive torch.stack over a Python list of rows\n")
    print("| batch kind | StoreLoader us | naive us | speed-up |")
    print("|---|---|---|---|")
    for name, fast, slow in bench_loader("Pendulum-v1", 50, 400 if q else 2000, args.repeat):
        print(f"| {name} | {fast:.1f} | {slow:.1f} | {slow / fast:.1f}x |")

    print("\n## Exploration coverage (10 tasks x 1000 steps)\n")
    print("| env | policy | episodes | 1-99 % range per state column |")
    print("|---|---|---|---|")
    for line in bench_coverage():
        print(line)

    print("\n## Pinned double-buffered feed vs torch's own pinned copy (CUDA)\n")
    if not torch.cuda.is_available():
        print("skipped: CUDA is not available on this machine")
        return
    print("| case | StoreLoader us/step | torch pin_memory us/step | speed-up |")
    print("|---|---|---|---|")
    for line in bench_pinned(args.repeat):
        print(line)


if __name__ == "__main__":
    main()
