"""The end-to-end pipeline behind `python -m eaml_ssm`: it runs the stages, nothing else.

    collect   meta-training tasks (physics from the training range) -> the Rust store
              (eaml_ssm.run_data)
    train     MAML (second order, learned inner step sizes) of the SSM on contiguous
              support/query windows of each task, sampled from the store (eaml_ssm.train)
    adapt     online hybrid adaptation on streams of held-out and out-of-range tasks
              (see eaml_ssm.protocol), scored against no adaptation, adaptation without
              experience, GrBAL-style reset, identity and per-window linear least squares
              (eaml_ssm.adapt_stage)

Every stage writes into one run folder (see eaml_ssm.artifacts, eaml_ssm.run_folders);
`--resume` continues meta-training from the folder's checkpoint and gives the same result as
an uninterrupted run with the same seed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from eaml_ssm import runtime
from eaml_ssm.adapt_stage import adapt_streams, summary_table
from eaml_ssm.artifacts import RunDir
from eaml_ssm.config import RunConfig, to_dict
from eaml_ssm.run_data import Data, collect_data, load_data
from eaml_ssm.run_folders import named_run, open_run
from eaml_ssm.tasks import get_family
from eaml_ssm.train import Trained, meta_train

log = logging.getLogger(__name__)


def collect_stage(cfg: RunConfig, run: RunDir) -> Data:
    """Collect the run's training tasks into a new store, kept in the run folder."""
    return collect_data(cfg, run)


def train_stage(
    cfg: RunConfig,
    run: RunDir,
    data: Data,
    resume: bool,
    *,
    train: bool = True,
    device: torch.device | None = None,
) -> Trained:
    """Meta-train (continuing from the checkpoint with `resume`); `train=False` only loads."""
    device = runtime.resolve_device(cfg.device) if device is None else device
    return meta_train(cfg, data, run, device, resume=resume, load_only=not train)


def control_stage(path: Path, options: Any, results: Path | None = None) -> dict[str, Any]:
    """Model-predictive control grid (eaml_ssm.control) on the trained run folder `path`;
    writes control.json, control.md and plots there (or at `results`)."""
    # the control grid (planners, env models) loads only when this stage runs
    from eaml_ssm.control.grid import run_control

    return run_control(path, options, results)


def run_stage(command: str, cfg: RunConfig, *, resume: bool = False) -> int:
    """Run one stage (`run`, `collect`, `train`, `adapt`) and return an exit code.

    `adapt`, any stage with `resume`, and any stage whose --name names an existing run
    folder continue that folder (default name: <env>-seed<seed>): `collect --name s` then
    `train --name s` trains run s on the store collected there. Otherwise a new folder.
    This and ``eaml_ssm.cli.main(argv)`` are the programmatic entry points.
    """
    get_family(cfg.env_name)  # an unknown or unsupported env fails before anything is written
    device = runtime.setup(cfg.seed, threads=1, device=cfg.device)
    existing = resume or command == "adapt" or named_run(cfg) is not None
    run = open_run(cfg, existing)
    if command == "adapt" and not run.checkpoint_path.exists():
        raise FileNotFoundError(f"adapt: no trained checkpoint in {run.path}; run `train` first")
    run.write_json("config.json", to_dict(cfg))
    log.info("run folder: %s", run.path)
    t0 = time.perf_counter()
    data = load_data(cfg, run) if existing else collect_stage(cfg, run)
    if command == "collect":
        return 0
    trained = train_stage(cfg, run, data, resume=existing, train=command != "adapt", device=device)
    if command == "train":
        return 0
    summary = adapt_streams(cfg, run, data, trained)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    run.write_json("summary.json", summary)
    table = summary_table(summary)
    (run.path / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nrun folder: {run.path}  ({summary['wall_seconds']} s)")
    return 0


__all__ = [
    "collect_stage",
    "control_stage",
    "run_stage",
    "train_stage",
]
