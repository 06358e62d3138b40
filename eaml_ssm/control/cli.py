"""`python -m eaml_ssm control`: the control grid on a trained run folder (its flags, its run).

For each split (held-out, out-of-range), each test task and each start seed, every method
plays one episode from the same start state:

    no adaptation        the meta-learned model, MPC without adaptation
    GrBAL reset (w=0)    re-adapt from the meta-learned weights every M steps (Nagabandi 2019)
    continual (w=0)      keep adapting every M steps, no replay
    hybrid (w=...)       continual adaptation with replay from the store (live rows included)
    oracle               the same planner and budget on the task's true dynamics
    random               uniform random actions

(M is ``--adapt_every``; w in a method's name is its replay weight ``experience_weight``.)

Results: mean return with 95% intervals, the normalized score
(R - R_random) / (R_oracle - R_random) of the split means, the fraction of steps in the goal
region, episodes that end in it, and planning ms per control step (with adaptation amortized).
Written as JSON (``--results``), a markdown table beside it, and plots (return per method,
model error along an episode).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from eaml_ssm import runtime
from eaml_ssm.control.grid import PROFILES, ControlOptions, run_control
from eaml_ssm.control.planners import PLANNERS
from eaml_ssm.control.report import DEFAULT_RESULTS_DIR, render_markdown, rerender
from eaml_ssm.protocol import TEST_SPLITS
from eaml_ssm.run_folders import existing_run


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=str,
        default="",
        help="trained run folder (config.json, "
        "checkpoint.pt, store.rbuf); default: the newest run of --env_name "
        "in --out, or --out/--name",
    )
    parser.add_argument("--out", type=str, default="runs", help="parent folder of run folders")
    parser.add_argument("--name", type=str, default="", help="run folder name under --out")
    parser.add_argument(
        "--env_name",
        type=str,
        default="Pendulum-v1",
        help="task family of the run to find (without --run/--name)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="full",
        help="grid size: quick (< 10 min on 2 cores) or full (default)",
    )
    parser.add_argument(
        "--planner",
        choices=PLANNERS,
        default="rs",
        help="rs = random shooting (default), cem = cross-entropy method",
    )
    parser.add_argument(
        "--num_candidates",
        type=int,
        default=None,
        help="candidate action sequences per control step (N; default: the profile's)",
    )
    parser.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="planning horizon H (steps; default: the profile's)",
    )
    parser.add_argument("--cem_iterations", type=int, default=5, help="CEM refits per step")
    parser.add_argument("--elite_frac", type=float, default=0.1, help="CEM elite fraction")
    parser.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="real steps that warm the hidden state before each plan",
    )
    parser.add_argument(
        "--adapt_every",
        type=int,
        default=0,
        help="adapt every M steps (default 0: the run's support_len)",
    )
    parser.add_argument(
        "--tasks", type=int, default=None, help="test tasks per split (default: the profile's)"
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes (start seeds) per task (default: the profile's)",
    )
    parser.add_argument(
        "--max_steps", type=int, default=None, help="steps per episode (default: the profile's)"
    )
    parser.add_argument(
        "--methods",
        type=str,
        default="",
        help="comma-separated subset of the methods (default: all)",
    )
    parser.add_argument(
        "--splits", type=str, default=",".join(TEST_SPLITS), help="comma-separated test splits"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the start states")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model plans: auto = cuda when torch sees a GPU",
    )
    parser.add_argument(
        "--results",
        type=str,
        default="",
        help="results JSON path (default: <run>/control.json); the markdown "
        "table and plots go beside it",
    )
    parser.add_argument(
        "--rerender",
        action="store_true",
        help=f"only re-render README.md and docs/control.md from {DEFAULT_RESULTS_DIR}/*.json",
    )
    parser.add_argument("--quiet", action="store_true", help="less logging")


def options_from_args(args: argparse.Namespace) -> ControlOptions:
    prof = PROFILES[args.profile]

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return prof[name] if value is None else value

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return ControlOptions(
        planner=args.planner,
        num_candidates=pick("num_candidates"),
        horizon=pick("horizon"),
        cem_iterations=args.cem_iterations,
        elite_frac=args.elite_frac,
        warmup=args.warmup,
        adapt_every=args.adapt_every,
        tasks=pick("tasks"),
        episodes=pick("episodes"),
        max_steps=pick("max_steps"),
        seed=args.seed,
        device=args.device,
        methods=methods,
        splits=tuple(x.strip() for x in args.splits.split(",") if x.strip()),
    )


def run_folder(args: argparse.Namespace) -> Path:
    """--run, else the newest trained run of --env_name under --out (as `adapt` finds it)."""
    if args.run:
        return Path(args.run)
    from eaml_ssm.config import RunConfig

    return existing_run(RunConfig(env_name=args.env_name, out=args.out, name=args.name))


def main(args: argparse.Namespace) -> int:
    if args.rerender:
        for path in rerender():
            print(f"rendered {path}")
        return 0
    opts = options_from_args(args)
    opts.validate()
    runtime.setup(opts.seed, threads=1)  # the budget: one core per control step

    folder = run_folder(args)
    results = Path(args.results) if args.results else folder / "control.json"
    summary = run_control(folder, opts, results)
    print(render_markdown(summary))
    print(f"\nresults: {results}")
    return 0
