"""CPU targets of the one feed (issue 11, item 7), measured in one run and printed as ratios.

    python benchmarks/bench_feed.py [--quick]

1. meta-step: one MAML meta-update on the default CartPole sizes, its batch from the feed
   (`StoreLoader.tasks`, zero-copy) vs the former path (reseed, `sample_tasks`,
   `from_numpy`, normalize into new tensors, `.to(device)`). Target: ratio <= 1.
2. replay gather: the adapter's replay windows (default sizes: 32 windows of 24 steps) through
   the store's samplers (`ReplayFeed.windows`) vs the former NumPy path (anchors drawn in
   Python, the window rule checked with NumPy over the zero-copy views, rows gathered by
   fancy indexing), for the strategies uniform / task_balanced / recent. Target: faster.

The former paths are reproduced here (they are gone from the package) as the comparison.
Timings are medians of interleaved repeats (benchmarks/timing.py); a shared machine makes
absolute numbers noisy, the ratios within one run are the figures to read.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from eaml_ssm.collect import build_store
from eaml_ssm.config import RunConfig
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import ReplayFeed, StoreLoader, draw_seed
from eaml_ssm.hooks import meta_batch
from eaml_ssm.maml import TaskBatch
from eaml_ssm.models import build_maml, build_model
from eaml_ssm.tasks import draw_tasks, get_family


def former_meta_batch(cfg: RunConfig, store: Any, norm: Normalizer, step: int) -> TaskBatch:
    """The meta-training batch before the feed (eaml_ssm.hooks.meta_batch as it was)."""
    store.reseed(draw_seed(cfg.seed, step))
    so, st, qo, qt, _ = store.sample_tasks(
        cfg.meta_batch_size, cfg.support_len, cfg.query_len, contiguous=True
    )

    def seq(a: np.ndarray, target: bool) -> torch.Tensor:
        t = torch.from_numpy(a)
        t = norm.normalize_targets(t) if target else norm.normalize_inputs(t)
        return t.unsqueeze(1).to("cpu")

    return TaskBatch(seq(so, False), seq(st, True), seq(qo, False), seq(qt, True))


class FormerReplay:
    """The adapter's NumPy replay before the feed: anchors + window rule over the views."""

    def __init__(self, store: Any, norm: Normalizer, seed: int) -> None:
        self.store, self.norm = store, norm
        self.rng = np.random.default_rng(seed)

    def windows(self, strategy: str, b: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ring = self.store
        n = len(ring.obs_view())
        if strategy == "uniform":
            anchors = self.rng.integers(0, n, size=b)
        elif strategy == "recent":
            newest = (ring.total_added - 1) % n
            anchors = (newest - self.rng.integers(0, min(4096, n), size=b)) % n
        else:  # task_balanced: rows of up to b random tasks (the per-task index was cached)
            tasks = np.asarray(ring.task_id_view())
            ids = np.unique(tasks)
            chosen = self.rng.choice(ids, size=min(b, len(ids)), replace=False)
            per = np.full(len(chosen), b // len(chosen))
            per[: b % len(chosen)] += 1
            groups = {int(t): np.flatnonzero(tasks == t) for t in chosen}
            anchors = np.concatenate(
                [self.rng.choice(groups[int(t)], size=k) for t, k in zip(chosen, per, strict=True)]
            )
        episode, step, task = ring.episode_id_view(), ring.step_view(), ring.task_id_view()
        offsets = np.arange(length)
        chosen_start = np.full(len(anchors), -1, dtype=np.int64)
        for start in (anchors - length + 1, anchors):
            idx = start[:, None] + offsets[None, :]
            inside = (idx[:, 0] >= 0) & (idx[:, -1] < n)
            idx = idx % n
            ok = (episode[idx] == episode[idx[:, :1]]).all(1) & (task[idx] == task[idx[:, :1]]).all(
                1
            )
            ok &= (np.diff(step[idx], axis=1) == 1).all(1) & (step[idx[:, 0]] >= 0)
            ok &= inside & (chosen_start < 0)
            chosen_start[ok] = start[ok] % n
        valid = chosen_start[chosen_start >= 0]
        if len(valid) < len(anchors):
            valid = np.concatenate([valid, self.rng.choice(valid, len(anchors) - len(valid))])
        idx = (valid[:, None] + offsets[None, :]) % n
        x = torch.as_tensor(ring.obs_view()[idx])
        y = torch.as_tensor(ring.target_view()[idx])
        return self.norm(x, y)


def paired(
    new: Callable[[], object], old: Callable[[], object], repeats: int
) -> tuple[float, float]:
    """Median seconds of `new` and `old`, called alternately (drift hits both alike)."""
    for _ in range(3):
        new(), old()
    t_new: list[float] = []
    t_old: list[float] = []
    for i in range(repeats):
        pair = ((new, t_new), (old, t_old))
        for fn, out in pair if i % 2 else pair[::-1]:  # alternate who goes first
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return statistics.median(t_new), statistics.median(t_old)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer tasks and repeats (smoke run)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cfg = RunConfig(num_tasks=8 if args.quick else 24, steps_per_task=1000)
    tasks = draw_tasks(cfg.env_name, cfg.num_tasks, seed=cfg.seed, split="train")
    store, _ = build_store(tasks, cfg.steps_per_task, store_seed=0, seed=0, progress=False)
    norm = Normalizer.from_store(store)
    cpu = torch.device("cpu")
    repeats = 5 if args.quick else 30
    print(f"store: {len(store)} rows of {cfg.num_tasks} {cfg.env_name} tasks; CPU, 1 thread")

    # 1. meta-step
    torch.manual_seed(0)
    model = build_model(cfg, get_family(cfg.env_name), cpu)
    maml = build_maml(cfg, model)
    loader = StoreLoader(store, cpu, norm, seed=cfg.seed)
    step = [0]

    def feed_step() -> None:
        maml.meta_update(meta_batch(cfg, loader))

    def former_step() -> None:
        step[0] += 1
        maml.meta_update(former_meta_batch(cfg, store, norm, step[0]))

    def feed_batch() -> None:
        meta_batch(cfg, loader)

    def former_batch() -> None:
        step[0] += 1
        former_meta_batch(cfg, store, norm, step[0])

    rows = []
    for what, new, old in (
        ("meta-step (batch + update)", feed_step, former_step),
        ("meta-batch alone", feed_batch, former_batch),
    ):
        rows.append((what, *paired(new, old, repeats)))

    # 2. replay gather
    b, length = 32, cfg.support_len + cfg.query_len
    feed = ReplayFeed(store, cpu, transform=norm, seed=0)
    former = FormerReplay(store, norm, seed=0)
    for strategy in ("uniform", "task_balanced", "recent"):
        t_new, t_old = paired(
            lambda s=strategy: feed.windows(s, b, length),  # type: ignore[misc]
            lambda s=strategy: former.windows(s, b, length),  # type: ignore[misc]
            5 * repeats,
        )
        rows.append((f"replay {b}x{length} windows, {strategy}", t_new, t_old))

    print("\n| what | feed (us) | former (us) | feed / former |\n|---|---|---|---|")
    for what, new, old in rows:
        print(f"| {what} | {1e6 * new:.0f} | {1e6 * old:.0f} | {new / old:.2f} |")


if __name__ == "__main__":
    main()
