"""The one training loop, and meta-training of the run's SSM on it.

`run_steps` is the loop: step k calls ``update(k)`` (one optimizer step, returning its
loss), checks the loss is finite, records it and calls ``on_step``. `meta_train` builds the
model and its MetaMAML (or a subclass: `eaml_ssm.positive_steps`), resumes from the run's
checkpoint, and runs the meta-steps on `run_steps`, logging and checkpointing into the run
folder. A torchrun rank runs the same function with `eaml_ssm.distributed.hooks.RankHooks`
(its tasks of each meta-batch, one all-reduce of the gradients); a non-meta baseline calls
`run_steps` with its own ``update``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eaml_ssm.artifacts import RunDir, rng_state, save_checkpoint, set_rng_state
from eaml_ssm.config import RunConfig, to_dict
from eaml_ssm.feed import StoreLoader
from eaml_ssm.hooks import ONE_PROCESS, Hooks
from eaml_ssm.maml import MetaMAML
from eaml_ssm.models import build_maml, build_model
from eaml_ssm.progress import progress
from eaml_ssm.run_data import Data
from eaml_ssm.ssm import SSM

log = logging.getLogger(__name__)


@dataclass
class Trained:
    model: SSM
    maml: MetaMAML
    losses: list[float]  # the meta-loss of every meta-step so far (resumed ones included)
    seconds: float  # of the meta-steps this call ran
    start: int = 0  # the meta-step this call started at (> 0 after a resume)


def run_steps(
    update: Callable[[int], float],
    start: int,
    stop: int,
    losses: list[float],
    *,
    on_step: Callable[[int, float], None] | None = None,
    desc: str = "meta-train",
    what: str = "meta-training",
    quiet: bool = False,
) -> float:
    """Steps ``start .. stop - 1``: ``loss = update(k)``, finite or FloatingPointError,
    appended to ``losses``, then ``on_step(k, loss)``; returns the seconds they took."""
    t0 = time.perf_counter()
    bar = progress(range(start, stop), desc=desc, unit="step", quiet=quiet)
    for step in bar:
        loss = update(step)
        if not np.isfinite(loss):
            raise FloatingPointError(f"{what} diverged at step {step} (loss {loss})")
        losses.append(loss)
        if on_step is not None:
            on_step(step, loss)
        bar.set_postfix(loss=f"{loss:.4f}")
    return time.perf_counter() - t0


def meta_loader(cfg: RunConfig, data: Data, device: torch.device, start: int = 0) -> StoreLoader:
    """The feed of meta-training: draw k is the batch of meta-step k, seeded by (seed, k)."""
    return StoreLoader(data.store, device, data.normalizer, seed=cfg.seed, start=start)


def checkpoint_payload(cfg: RunConfig, trained: Trained, data: Data, step: int) -> dict[str, Any]:
    return {
        "config": to_dict(cfg),
        "model_config": trained.model.config.to_dict(),
        "model": trained.model.state_dict(),
        "maml": trained.maml.state_dict(),
        "normalizer": data.normalizer.state_dict(),
        "losses": list(trained.losses),
        "step": step,
        "rng": rng_state(),
    }


def restore(ck: dict[str, Any], data: Data, trained: Trained, *, rng: bool = True) -> int:
    """Load a checkpoint into `trained` and `data.normalizer` (and, with ``rng``, the global
    RNG states); return its step."""
    trained.model.load_state_dict(ck["model"])
    trained.maml.load_state_dict(ck["maml"])
    data.normalizer.load_state_dict(ck["normalizer"])
    trained.losses = list(ck["losses"])
    if rng:
        set_rng_state(ck["rng"])
    return int(ck["step"])


def meta_train(
    cfg: RunConfig,
    data: Data,
    run: RunDir | None,
    device: torch.device,
    *,
    resume: bool = False,
    load_only: bool = False,
    maml_class: type[MetaMAML] = MetaMAML,
    hooks: Hooks = ONE_PROCESS,
) -> Trained:
    """Meta-train for ``cfg.num_epochs`` meta-steps (continuing from the checkpoint of `run`
    with ``resume``; ``load_only``: load it and stop). ``run`` gets the metrics rows and the
    checkpoints (None: nothing is written, e.g. on ranks other than 0)."""
    torch.manual_seed(cfg.seed)  # the same initial weights whatever ran before
    model = build_model(cfg, data.family, device)
    trained = Trained(model, build_maml(cfg, model, maml_class), [], 0.0)
    start = 0
    ck = hooks.read_checkpoint(cfg, run) if resume else None
    if ck is not None:
        start = restore(ck, data, trained, rng=hooks.restores_rng)
        if load_only:
            if start < cfg.num_epochs:
                log.warning("the checkpoint stopped at meta-step %d of %d", start, cfg.num_epochs)
            return trained
        if run is not None:
            run.truncate_metrics("train", start)
        log.info("resuming meta-training at step %d of %d", start, cfg.num_epochs)
    trained.start = start
    hooks.start(cfg, data, trained)
    every = max(1, cfg.num_epochs // 10)

    def update(step: int) -> float:
        batch, n_local = hooks.draw(cfg, loader, step)
        return hooks.update(trained.maml, batch, n_local, cfg.meta_batch_size)

    def record(step: int, loss: float) -> None:
        if run is not None:
            run.log_metrics("train", step=step, meta_loss=loss)
        if (step + 1) % every == 0 or step + 1 == cfg.num_epochs:
            log.info("meta-step %d/%d  query loss %.4f", step + 1, cfg.num_epochs, loss)
            if run is not None:
                payload = checkpoint_payload(cfg, trained, data, step + 1)
                save_checkpoint(run.checkpoint_path, payload)

    loader = meta_loader(cfg, data, device, start)
    try:
        trained.seconds = run_steps(
            update,
            start,
            cfg.num_epochs,
            trained.losses,
            on_step=record,
            quiet=cfg.quiet or not hooks.is_main,
        )
    finally:
        loader.close()
    hooks.finish(trained)
    if run is not None and start == cfg.num_epochs and not run.checkpoint_path.exists():
        save_checkpoint(run.checkpoint_path, checkpoint_payload(cfg, trained, data, start))
    return trained
