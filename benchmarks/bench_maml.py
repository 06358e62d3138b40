"""One MetaMAML meta-update: tasks batched by torch.func.vmap vs a Python loop over tasks.

Two workloads, each at meta-batch 8, 16 and 25:
    * sinusoid: the Finn et al. MLP 1-40-40-1, K=10 support + 10 query points, 1 inner step;
    * ssm: the stateful SSM on (b, l, d) sequence windows, query continuing the support state.
A meta-update = meta-loss (inner step, second order) + backward + Adam step; the task batch is
pre-sampled. Both engines compute the same meta-gradient (tests/test_maml.py checks that).

    .venv/bin/python benchmarks/bench_maml.py
    .venv/bin/python benchmarks/bench_maml.py --workloads sinusoid --device cuda

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import argparse
import functools

import torch
from timing import median_seconds

from eaml_ssm.maml import MetaMAML, TaskBatch
from eaml_ssm.sinusoid import draw_sinusoids, make_mlp
from eaml_ssm.ssm import SSM


def _ssm_tasks(n_tasks: int, device: torch.device) -> TaskBatch:
    gen = torch.Generator().manual_seed(0)
    b, length, d, o = 4, 16, 5, 4  # 4 windows of 16 steps per task, as in GrBAL M=16
    parts = [torch.randn(n_tasks, b, length, k, generator=gen) for k in (d, o, d, o)]
    return TaskBatch(*(p.to(device) for p in parts))


def bench(workload: str, n_tasks: int, repeats: int, device: torch.device) -> tuple[float, float]:
    times = []
    for use_vmap in (True, False):
        torch.manual_seed(0)
        if workload == "sinusoid":
            model = make_mlp().to(device)
            batch = draw_sinusoids(n_tasks, 10, 10, torch.Generator().manual_seed(0))
            batch = TaskBatch(*(t.to(device) for t in batch[:4]))
        else:
            model = SSM(16, 5, 4, hidden_dim=32, num_layers=2).to(device)
            batch = _ssm_tasks(n_tasks, device)
        maml = MetaMAML(model, inner_lr=0.01, use_vmap=use_vmap)
        times.append(median_seconds(functools.partial(maml.meta_update, batch), repeats, device))
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=["sinusoid", "ssm"])
    parser.add_argument("--meta-batches", type=int, nargs="+", default=[8, 16, 25])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"MetaMAML meta-update (2nd order, 1 inner step), device={device}, "
        f"threads={torch.get_num_threads()}, torch {torch.__version__}"
    )
    print("| workload | meta-batch | vmap ms | loop ms | loop / vmap |")
    print("|---|---|---|---|---|")
    for workload in args.workloads:
        for n_tasks in args.meta_batches:
            t_vmap, t_loop = bench(workload, n_tasks, args.repeats, device)
            print(
                f"| {workload} | {n_tasks} | {1e3 * t_vmap:.2f} | {1e3 * t_loop:.2f} "
                f"| {t_loop / t_vmap:.1f}x |"
            )


if __name__ == "__main__":
    main()
