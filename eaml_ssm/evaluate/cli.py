"""The `python -m eaml_ssm evaluate` command: its flags, and a run of a profile (every
(family, seed) unit, in parallel worker processes) into a fresh run folder."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from eaml_ssm.artifacts import finite, fresh_run_dir
from eaml_ssm.evaluate.methods import LEVELS, method_grid
from eaml_ssm.evaluate.profiles import PROFILES, resolve_profile
from eaml_ssm.evaluate.results import DOC_FILES, publish, render, rerender
from eaml_ssm.evaluate.unit import Unit, evaluate_unit
from eaml_ssm.progress import progress

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="quick: 3 seeds, core methods; full: 5 seeds, every method",
    )
    parser.add_argument(
        "--families", default="", help="comma-separated task families (default: the profile's)"
    )
    parser.add_argument("--seeds", type=int, default=0, help="number of seeds (default: profile)")
    parser.add_argument(
        "--meta_steps", type=int, default=0, help="meta-training iterations (default: profile)"
    )
    parser.add_argument(
        "--methods",
        choices=LEVELS,
        default=None,
        help="method level for every family (default: profile)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="(family, seed) units run in parallel processes (default: the profile's, 2)",
    )
    parser.add_argument(
        "--device",
        default="",
        help="torch device for training and adaptation: cpu, cuda, cuda:N or auto "
        "(default: the profile's, cpu)",
    )
    parser.add_argument("--out", default="runs", help="parent folder of the run folder")
    parser.add_argument("--name", default="", help="run folder name (default: evaluate-<profile>)")
    parser.add_argument("--quiet", action="store_true", help="less logging, no progress bars")
    parser.add_argument(
        "--rerender",
        default="",
        metavar="RUN_DIR",
        help="rebuild the tables and plots of a finished run from its results.json",
    )
    parser.add_argument(
        "--publish",
        default="",
        metavar="DIR",
        help="with --rerender: write a compact results.json and results.md into DIR "
        "(e.g. docs/results/full) and rewrite the marked blocks of README.md and "
        "docs/evaluation.md from it",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="with --rerender: rewrite the marked result blocks of README.md and "
        "docs/evaluation.md from RUN_DIR (a docs/results/<name> folder)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the profile, write the run folder, print the tables; returns the exit code."""
    if args.publish and not args.rerender:
        raise ValueError("--publish needs --rerender RUN_DIR (the run to publish)")
    if args.rerender:
        if args.publish:
            return publish(Path(args.rerender), Path(args.publish))
        docs = DOC_FILES if args.docs else ()
        return rerender(Path(args.rerender), docs=docs, plots=not docs)
    profile = resolve_profile(args)
    run_dir = fresh_run_dir(args.out, args.name or f"evaluate-{args.profile}")
    grids = {f: method_grid(profile.level(f)) for f in profile.families}
    units = [
        Unit(f, seed, profile, tuple(grids[f]), str(run_dir.path / "work" / f"{f}-seed{seed}"))
        for f in profile.families
        for seed in range(profile.seeds)
    ]
    command = "python -m eaml_ssm evaluate " + " ".join(_argv(args))
    commit = git_commit()
    run_dir.write_json(
        "config.json",
        {"command": command, "commit": commit, "profile": dataclasses.asdict(profile)},
    )
    log.info(
        "evaluate: %d units (%s) into %s", len(units), ", ".join(profile.families), run_dir.path
    )
    t0, load0, cpu0 = time.perf_counter(), os.getloadavg()[0], cpu_seconds()
    results = _run_units(units, profile.jobs, args.quiet)
    saved = {
        "command": command,
        "commit": commit,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        # CPU time of this process and its (finished) workers: on a shared machine the wall
        # time measures the other jobs too; CPU-seconds / cores bounds the unloaded wall time
        "cpu_seconds": round(cpu_seconds() - cpu0, 1),
        "load_average": (load0, os.getloadavg()[0]),
        "profile": dataclasses.asdict(profile),
        "units": finite(results),
    }
    return render(run_dir, saved)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def git_commit() -> str:
    """The checkout's commit (with "+dirty" when tracked files differ), or "" outside git."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--profile {args.profile}"]
    for key in ("families", "seeds", "meta_steps", "methods", "jobs", "device"):
        value = getattr(args, key)
        if value and not (key == "jobs" and value == 1):
            out.append(f"--{key} {value}")
    return out


def _run_units(units: list[Unit], jobs: int, quiet: bool) -> list[dict[str, Any]]:
    bar = progress(total=len(units), desc="evaluate", unit="unit", quiet=quiet)
    results = []
    if jobs == 1:
        for unit in units:
            results.append(evaluate_unit(unit))
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            for res in pool.map(evaluate_unit, units):
                results.append(res)
                bar.update()
    bar.close()
    return results
