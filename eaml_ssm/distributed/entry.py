"""The torchrun entry point: ``train --distributed`` (and ``run --distributed``) on a rank.

Every rank runs the pipeline's own collect stage and meta-training loop
(`eaml_ssm.run_data.collect_data`, `eaml_ssm.train.meta_train`) with its `RankHooks`; rank 0
alone writes the run folder.
"""

from __future__ import annotations

import dataclasses
import logging

from eaml_ssm import pipeline, runtime
from eaml_ssm.artifacts import RunDir
from eaml_ssm.config import RunConfig, to_dict
from eaml_ssm.distributed.comm import DistributedContext, agree, init_from_env, shutdown
from eaml_ssm.distributed.hooks import RankHooks
from eaml_ssm.run_data import Data, collect_data
from eaml_ssm.run_folders import open_run
from eaml_ssm.train import Trained, meta_train

log = logging.getLogger(__name__)


def quiet_other_ranks(ctx: DistributedContext) -> None:
    """Ranks other than 0 log warnings and errors only."""
    if not ctx.is_main:
        logging.getLogger("eaml_ssm").setLevel(logging.WARNING)


def run(
    command: str, cfg: RunConfig, *, resume: bool = False, timeout_s: float | None = None
) -> int:
    """``train`` (or ``run``) with ``--distributed``: called on every rank by the CLI.

    ``run`` meta-trains on all ranks, then rank 0 adapts and evaluates in the same run folder
    (``pipeline.run_stage("adapt", ...)``); the other ranks exit.
    """
    if command not in ("train", "run"):
        raise ValueError(
            f"--distributed applies to `train` and `run` (meta-training), not `{command}`"
        )
    ctx = init_from_env(cfg.device, timeout_s=timeout_s)
    try:
        quiet_other_ranks(ctx)
        runtime.setup(cfg.seed, threads=1, device=ctx.device)
        opened = agree(ctx, lambda: open_run(cfg, resume), "opening the run folder")
        path = opened.path
        train(cfg, ctx, opened if ctx.is_main else None, resume=resume)
    finally:
        shutdown(ctx)
    if command == "run" and ctx.is_main:
        here = dataclasses.replace(cfg, out=str(path.parent), name=path.name)
        return pipeline.run_stage("adapt", here)
    return 0


def collect_shard(cfg: RunConfig, ctx: DistributedContext, run_dir: RunDir | None) -> Data:
    """This rank's share of the training tasks, collected by the pipeline's collect stage."""
    return collect_data(cfg, run_dir, RankHooks(ctx))


def train(
    cfg: RunConfig, ctx: DistributedContext, run_dir: RunDir | None, *, resume: bool = False
) -> Trained:
    """Collect and meta-train on every rank; rank 0 (``run_dir`` not None there) writes."""
    if run_dir is not None:
        run_dir.write_json("config.json", to_dict(cfg))
        log.info("run folder: %s (%d ranks, %s)", run_dir.path, ctx.world_size, ctx.backend)
    hooks = RankHooks(ctx)
    data = collect_data(cfg, run_dir, hooks)
    trained = meta_train(cfg, data, run_dir, ctx.device, resume=resume, hooks=hooks)
    if run_dir is not None:
        _write_summary(cfg, ctx, run_dir, trained)
    return trained


def _write_summary(
    cfg: RunConfig, ctx: DistributedContext, run_dir: RunDir, trained: Trained
) -> None:
    steps = cfg.num_epochs - trained.start
    rate = steps * cfg.meta_batch_size / trained.seconds if trained.seconds > 0 else None
    run_dir.write_json(
        "distributed.json",
        {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": str(ctx.device),
            "meta_steps": steps,
            "first_step": trained.start,
            "seconds": round(trained.seconds, 3),
            "tasks_per_second": rate,
        },
    )
    log.info("meta-trained %d steps on %d ranks in %.1f s", steps, ctx.world_size, trained.seconds)
