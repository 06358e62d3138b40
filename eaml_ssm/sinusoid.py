"""The sinusoid regression benchmark of Finn et al. 2017 (MAML), with Meta-SGD and a baseline.

Protocol (the paper and its reference code, cbfinn/maml):
    task:   y = A sin(x - phi),  A ~ U[0.1, 5],  phi ~ U[0, pi],  x ~ U[-5, 5]
    model:  MLP 1-40-40-1, ReLU, PyTorch default init, MSE loss
    train:  each meta-iteration draws 25 fresh tasks with 10 support + 10 query points;
            one inner SGD step at alpha=0.01 (second order); Adam(1e-3) on the mean query loss
    meta-sgd: the same with a learned per-parameter inner step size (initialised to alpha)
    pretrain: the same 25 x 20 points pooled, one Adam(1e-3) regression step per iteration,
            then fine-tuned at test time exactly like MAML (alpha=0.01, and alpha=0.02)
    eval:   one fixed set of 600 tasks (seed 20170309), 10 support and 100 uniform query
            points each; query MSE after 0..10 full-batch SGD steps; mean and 95% CI
            (1.96 sd / sqrt(600)) over tasks

Shapes: see the glossary in eaml_ssm/__init__.py (``t`` tasks; ``b`` the points of a task,
support and query together, as in eaml_ssm.maml; one feature).

Run ``python -m eaml_ssm sinusoid`` (or ``python -m eaml_ssm.sinusoid``); see ``add_arguments``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eaml_ssm import runtime
from eaml_ssm.flags import normalize_flags  # --meta-batch and --meta_batch alike
from eaml_ssm.maml import MetaMAML, TaskBatch
from eaml_ssm.markdown import md_table
from eaml_ssm.progress import progress
from eaml_ssm.runtime import resolve_device

__all__ = ["SinusoidConfig", "add_arguments", "draw_sinusoids", "main", "run", "run_benchmark"]

logger = logging.getLogger(__name__)

METHODS = ("maml", "metasgd", "pretrain")


@dataclass
class SinusoidConfig:
    """The benchmark protocol; every field is a CLI flag (``--iterations`` etc.)."""

    iterations: int = 20_000  # meta-iterations (pretrain: Adam steps) per method
    meta_batch: int = 25  # tasks per meta-iteration
    k_shot: int = 10  # support points per task (and query points during training)
    inner_lr: float = 0.01  # inner SGD step size alpha (Meta-SGD: its initial value)
    outer_lr: float = 1e-3  # Adam learning rate of the meta-optimizer / pretraining
    train_inner_steps: int = 1  # inner steps during meta-training
    first_order: bool = False  # FOMAML instead of second-order MAML
    engine: str = "vmap"  # "vmap" (tasks batched by torch.func.vmap) or "loop"
    eval_tasks: int = 600  # fixed evaluation tasks
    eval_query: int = 100  # query points per evaluation task
    eval_steps: int = 10  # inner steps evaluated (0..eval_steps are all recorded)
    eval_seed: int = 20170309  # seed of the fixed evaluation set
    pretrain_finetune_lrs: tuple[float, ...] = (0.01, 0.02)  # test-time step sizes, baseline
    seed: int = 0  # training seed (model init and training tasks)
    hidden: int = 40  # MLP width
    threads: int = 1  # torch threads (1 is fastest on the 2-core target machine)
    device: str = "cpu"  # where the models train and are evaluated (auto|cpu|cuda)


# ----- data ------------------------------------------------------------------------------------
def draw_sinusoids(
    n_tasks: int, n_support: int, n_query: int, generator: torch.Generator
) -> TaskBatch:
    """Stacked sinusoid tasks: support (t, n_support, 1) and query (t, n_query, 1)."""
    amplitude = torch.rand(n_tasks, 1, 1, generator=generator) * 4.9 + 0.1  # (t, 1, 1)
    phase = torch.rand(n_tasks, 1, 1, generator=generator) * math.pi  # (t, 1, 1)
    x = torch.rand(n_tasks, n_support + n_query, 1, generator=generator) * 10.0 - 5.0  # (t, b, 1)
    y = amplitude * torch.sin(x - phase)  # (t, b, 1)
    return TaskBatch(x[:, :n_support], y[:, :n_support], x[:, n_support:], y[:, n_support:])


def make_mlp(hidden: int = 40) -> nn.Module:
    """The 1-40-40-1 ReLU regressor of the paper (PyTorch default init)."""
    return nn.Sequential(
        nn.Linear(1, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )


# ----- training --------------------------------------------------------------------------------
def _progress(total: int, desc: str, quiet: bool) -> Any:
    return progress(total=total, desc=desc, quiet=quiet)


def train_meta(
    cfg: SinusoidConfig, learn_inner_lr: bool, quiet: bool = False
) -> tuple[MetaMAML, dict[str, Any]]:
    """Meta-train MAML (or Meta-SGD) on freshly sampled tasks; returns the learner and stats."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    device = _device(cfg)
    maml = MetaMAML(
        make_mlp(cfg.hidden).to(device),
        inner_lr=cfg.inner_lr,
        outer_lr=cfg.outer_lr,
        first_order=cfg.first_order,
        num_inner_steps=cfg.train_inner_steps,
        learn_inner_lr=learn_inner_lr,
        use_vmap=cfg.engine == "vmap",
    )
    name = "metasgd" if learn_inner_lr else "maml"
    loss, losses = 0.0, []
    start = time.perf_counter()
    with _progress(cfg.iterations, name, quiet) as bar:
        for it in range(cfg.iterations):
            batch = _to(draw_sinusoids(cfg.meta_batch, cfg.k_shot, cfg.k_shot, gen), device)
            loss = maml.meta_update(batch)
            losses.append(loss)
            if (it + 1) % 100 == 0:
                bar.set_postfix(meta_loss=f"{sum(losses[-100:]) / 100:.3f}", refresh=False)
            bar.update(1)
    seconds = time.perf_counter() - start
    stats = {
        "train_seconds": seconds,
        "iterations_per_second": cfg.iterations / seconds if seconds > 0 else None,
        "final_meta_loss_avg100": sum(losses[-100:]) / max(1, len(losses[-100:])),
    }
    return maml, stats


def train_pretrain(cfg: SinusoidConfig, quiet: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """Joint regression on all tasks pooled (same tasks and Adam steps as MAML)."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    device = _device(cfg)
    model = make_mlp(cfg.hidden).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    start = time.perf_counter()
    losses: list[float] = []
    with _progress(cfg.iterations, "pretrain", quiet) as bar:
        for it in range(cfg.iterations):
            batch = _to(draw_sinusoids(cfg.meta_batch, cfg.k_shot, cfg.k_shot, gen), device)
            x = torch.cat((batch.support_x, batch.query_x), dim=1).reshape(-1, 1)  # (2 t k_shot, 1)
            y = torch.cat((batch.support_y, batch.query_y), dim=1).reshape(-1, 1)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if (it + 1) % 100 == 0:
                bar.set_postfix(loss=f"{sum(losses[-100:]) / 100:.3f}", refresh=False)
            bar.update(1)
    seconds = time.perf_counter() - start
    return model, {"train_seconds": seconds, "iterations_per_second": cfg.iterations / seconds}


# ----- evaluation ------------------------------------------------------------------------------
def summarize(values: Tensor) -> dict[str, Any]:
    """Mean, 95% CI half-width (1.96 sd / sqrt(number of tasks)) and median over tasks; counts
    non-finite."""
    finite = values[torch.isfinite(values)].double()
    n_bad = int(values.numel() - finite.numel())
    if n_bad:  # the mean over all tasks is not finite; report it as such
        mean, ci = float("nan"), float("nan")
    else:
        mean = float(finite.mean())
        ci = float(1.96 * finite.std(unbiased=True) / math.sqrt(finite.numel()))
    median = float(values.double().nanmedian()) if values.numel() else float("nan")
    return {"mean": mean, "ci95": ci, "median": median, "nonfinite": n_bad}


def evaluate(
    maml: MetaMAML, eval_set: TaskBatch, steps: int, inner_lr: float | None = None
) -> list[dict[str, Any]]:
    """Query-MSE statistics after 0..steps inner steps on the fixed evaluation tasks."""
    with torch.no_grad():
        curve = maml.adaptation_curve(eval_set, steps, inner_lr=inner_lr)  # (t, steps + 1)
    return [{"steps": k, **summarize(curve[:, k])} for k in range(steps + 1)]


def eval_tasks(cfg: SinusoidConfig) -> TaskBatch:
    gen = torch.Generator().manual_seed(cfg.eval_seed)
    return _to(draw_sinusoids(cfg.eval_tasks, cfg.k_shot, cfg.eval_query, gen), _device(cfg))


def _device(cfg: SinusoidConfig) -> torch.device:
    return resolve_device(cfg.device)


def _to(batch: TaskBatch, device: torch.device) -> TaskBatch:
    """Tasks are drawn on the CPU (the same tasks on any device), then moved."""
    return TaskBatch(*(None if t is None else t.to(device) for t in batch))  # type: ignore[arg-type]


def run_benchmark(
    cfg: SinusoidConfig, methods: Sequence[str] = METHODS, quiet: bool = False
) -> dict[str, Any]:
    """Train and evaluate the requested methods; returns the results dictionary (each method
    re-seeds torch with ``cfg.seed`` before it builds its model: the same initial weights)."""
    runtime.setup(cfg.seed, threads=cfg.threads, device=cfg.device)
    eval_set = eval_tasks(cfg)
    results: dict[str, Any] = {}
    for method in methods:
        if method == "pretrain":
            model, stats = train_pretrain(cfg, quiet)
            curves = {}
            for lr in cfg.pretrain_finetune_lrs:
                tuner = MetaMAML(model, inner_lr=lr)
                curves[f"alpha={lr:g}"] = evaluate(tuner, eval_set, cfg.eval_steps)
            results[method] = {**stats, "curves": curves}
        elif method in ("maml", "metasgd"):
            maml, stats = train_meta(cfg, learn_inner_lr=method == "metasgd", quiet=quiet)
            curve = evaluate(maml, eval_set, cfg.eval_steps)
            entry: dict[str, Any] = {**stats, "curves": {f"alpha={cfg.inner_lr:g}": curve}}
            if method == "metasgd":
                entry["curves"] = {"learned": curve}
                entry["learned_lr_range"] = _lr_range(maml)
            results[method] = entry
        else:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        logger.info("%s done in %.1f s", method, results[method]["train_seconds"])
    return results


def _lr_range(maml: MetaMAML) -> dict[str, float]:
    flat = torch.cat([v.detach().reshape(-1) for v in maml.inner_lrs.values()])
    return {"min": float(flat.min()), "max": float(flat.max()), "mean": float(flat.mean())}


# ----- reporting -------------------------------------------------------------------------------
def format_table(results: dict[str, Any], steps: Sequence[int] = (0, 1, 5, 10)) -> str:
    """A markdown table: one row per (method, step size), query MSE mean +- 95% CI."""
    head = ["method", "train s", *(f"{k} step{'s' * (k != 1)}" for k in steps)]
    body = []
    for method, entry in results.items():
        for label, curve in entry["curves"].items():
            cells = []
            for k in steps:
                if k >= len(curve):
                    cells.append("-")
                    continue
                c = curve[k]
                if c["nonfinite"]:
                    cells.append(
                        f"diverged ({c['nonfinite']} non-finite; median {c['median']:.3g})"
                    )
                else:
                    cells.append(f"{c['mean']:.3f} ± {c['ci95']:.3f}")
            body.append([f"{method} ({label})", f"{entry['train_seconds']:.1f}", *cells])
    return md_table(head, body)


def _out_path(out: str) -> Path:
    path = Path(out)
    return path if path.suffix == ".json" else path / "sinusoid_results.json"


# ----- CLI -------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the benchmark's flags (one per SinusoidConfig field, plus method/out/quiet)."""
    d = SinusoidConfig()

    def flag(name: str, kind: type, help: str, **kw: Any) -> None:
        default = kw.pop("default", getattr(d, name, None))
        parser.add_argument(
            f"--{name}", type=kind, default=default, help=f"{help} (default: {default})", **kw
        )

    parser.add_argument(
        "--method",
        choices=(*METHODS, "all"),
        default="all",
        help="which method to train and score (default: all)",
    )
    flag("iterations", int, "meta-iterations (pretrain: Adam steps) per method")
    flag("meta_batch", int, "tasks per meta-iteration")
    flag("k_shot", int, "support points per task (and query points in training)")
    flag("inner_lr", float, "inner SGD step size alpha (Meta-SGD: its initial value)")
    flag("outer_lr", float, "Adam learning rate of the meta-optimizer and of pretraining")
    flag("train_inner_steps", int, "inner steps during meta-training")
    parser.add_argument(
        "--first_order",
        action="store_true",
        help="first-order MAML for maml/metasgd (default: second order)",
    )
    flag("engine", str, "vmap: tasks batched by torch.func.vmap; loop: one by one",
         choices=("vmap", "loop"))  # fmt: skip
    flag("eval_tasks", int, "fixed evaluation tasks")
    flag("eval_query", int, "query points per evaluation task")
    flag("eval_steps", int, "inner steps evaluated (0..eval_steps are all recorded)")
    flag("eval_seed", int, "seed of the fixed evaluation set")
    flag("seed", int, "training seed (model init and training tasks)")
    flag("threads", int, "torch threads (1 is fastest on a 2-core machine)")
    flag("device", str, "auto|cpu|cuda (tasks are drawn on the CPU either way: same tasks)",
         choices=("auto", "cpu", "cuda"))  # fmt: skip
    flag("out", str, "results JSON file, or a folder to write sinusoid_results.json into",
         default="runs/sinusoid")  # fmt: skip
    parser.add_argument("--quiet", action="store_true", help="no progress or table (default: off)")


def config_from_args(args: argparse.Namespace) -> SinusoidConfig:
    cfg = SinusoidConfig(
        iterations=args.iterations,
        meta_batch=args.meta_batch,
        k_shot=args.k_shot,
        inner_lr=args.inner_lr,
        outer_lr=args.outer_lr,
        train_inner_steps=args.train_inner_steps,
        first_order=args.first_order,
        engine=args.engine,
        eval_tasks=args.eval_tasks,
        eval_query=args.eval_query,
        eval_steps=args.eval_steps,
        eval_seed=args.eval_seed,
        seed=args.seed,
        threads=args.threads,
        device=args.device,
    )
    for name in ("iterations", "meta_batch", "k_shot", "eval_tasks", "eval_query", "threads"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    return cfg


def run(args: argparse.Namespace) -> int:
    """Run the benchmark from parsed arguments; writes the JSON and prints the table."""
    cfg = config_from_args(args)
    methods = METHODS if args.method == "all" else (args.method,)
    start = time.perf_counter()
    results = run_benchmark(cfg, methods, quiet=args.quiet)
    wall = time.perf_counter() - start
    report = {
        "benchmark": "sinusoid (Finn et al. 2017)",
        "config": asdict(cfg),
        "methods": results,
        "wall_seconds": wall,
        "command": shlex.join(["python", *sys.orig_argv[1:]]),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    path = _out_path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    if not args.quiet:
        print(format_table(results))
        print(f"wall time {wall:.1f} s; results written to {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eaml_ssm sinusoid", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(normalize_flags(parser, sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
