"""The end-to-end pipeline behind `python -m eaml_ssm`.

    collect   meta-training tasks (physics from the training range) -> the Rust store
    train     MAML (second order, learned inner step sizes) of the SSM on contiguous
              support/query windows of each task, sampled from the store
    adapt     online hybrid adaptation on streams of held-out and out-of-range tasks
              (see eaml_ssm.protocol), scored against no adaptation, adaptation without
              experience, GrBAL-style reset, identity and per-window linear least squares

Every stage writes into one run folder (see eaml_ssm.artifacts); `--resume` continues
meta-training from the folder's checkpoint and gives the same result as an uninterrupted
run with the same seed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eaml_ssm import protocol
from eaml_ssm.adaptation import Adapter
from eaml_ssm.artifacts import (
    RunDir,
    config_diff,
    fresh_run_dir,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from eaml_ssm.collect import build_store, max_rows
from eaml_ssm.config import RunConfig, from_dict, to_dict
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import StoreLoader
from eaml_ssm.maml import MetaMAML, TaskBatch
from eaml_ssm.plots import plot_before_after, plot_curve, plot_curves
from eaml_ssm.progress import progress
from eaml_ssm.ssm import SSM
from eaml_ssm.tasks import Task, TaskFamily, get_family, sample_tasks

log = logging.getLogger(__name__)

STORE_FILE = "store.rbuf"
SHARED_STORE_FILE = "store.shared"  # file-backed store that collection processes write into
SPLITS = ("heldout", "ood")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device")
    return torch.device(name)


def run_name(cfg: RunConfig) -> str:
    return cfg.name or f"{cfg.env_name}-seed{cfg.seed}"


def named_run(cfg: RunConfig) -> Path | None:
    """out/name when --name names a run folder that an earlier stage wrote, else None."""
    if not cfg.name:
        return None
    path = Path(cfg.out) / cfg.name
    return path if (path / "config.json").exists() else None


def existing_run(cfg: RunConfig) -> Path:
    """The folder an `adapt` or `--resume` works in: --name, else the newest default-named one."""
    base = Path(cfg.out) / run_name(cfg)
    candidates = [base] if cfg.name else [base, *base.parent.glob(f"{base.name}-*")]
    found = [p for p in candidates if (p / "config.json").exists()]
    if not found:
        raise FileNotFoundError(f"no run at {base} (looked for config.json); pass --out/--name")
    return max(found, key=lambda p: (p / "config.json").stat().st_mtime)


def saved_config(path: Path) -> RunConfig:
    """The config.json of a run folder; a damaged one raises ValueError naming the file."""
    data = RunDir(path, create=False).read_json("config.json")
    try:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path / 'config.json'}: {exc}") from exc


def open_run(cfg: RunConfig, resume: bool) -> RunDir:
    """The run folder; a fresh run never overwrites an existing one (it picks a new name)."""
    if resume:
        path = existing_run(cfg)
        diff = config_diff(to_dict(saved_config(path)), to_dict(cfg))
        if diff:
            raise ValueError(
                f"{path} was run with a different config (continue it with the same values, "
                "or pick another --name): "
                + ", ".join(f"{k} (saved {a!r}, now {b!r})" for k, a, b in diff)
            )
        run = RunDir(path)
        run.repair_metrics()
        return run
    return fresh_run_dir(cfg.out, run_name(cfg))


@dataclass
class Data:
    family: TaskFamily
    train_tasks: list[Task]
    store: Any
    normalizer: Normalizer


@dataclass
class Trained:
    model: SSM
    maml: MetaMAML
    losses: list[float]
    seconds: float


# --- collect --------------------------------------------------------------------------------


def collection_length(cfg: RunConfig) -> tuple[int, int | None]:
    """(steps_per_task, episodes_per_task) for `build_store`: episodes win when given."""
    episodes = cfg.episodes_per_task or None  # 0: collect steps_per_task env steps instead
    return (0 if episodes else cfg.steps_per_task), episodes


def collect_stage(cfg: RunConfig, run: RunDir) -> Data:
    family = get_family(cfg.env_name)
    tasks = train_tasks(cfg)
    steps, episodes = collection_length(cfg)
    # several workers: processes writing straight into one file-backed (memory-mapped) store
    shared = run.path / SHARED_STORE_FILE if cfg.workers > 1 else None
    if shared is not None:
        shared.unlink(missing_ok=True)  # RingBuffer.create needs a new file
    t0 = time.perf_counter()
    store, stats = build_store(
        tasks,
        steps,
        episodes_per_task=episodes,
        capacity=min(cfg.buffer_size, max_rows(tasks, steps, episodes_per_task=episodes)),
        store_seed=cfg.seed,
        path=shared,
        num_workers=cfg.workers,
        backend="thread" if shared is None else "shared",
        seed=cfg.seed,
        progress=None if not cfg.quiet else False,
    )
    norm = Normalizer.from_store(store)
    log.info(
        "collected %d transitions (%d episodes) from %d %s tasks in %.1f s",
        stats.transitions,
        stats.episodes,
        len(tasks),
        cfg.env_name,
        time.perf_counter() - t0,
    )
    run.log_metrics(
        "collect", transitions=stats.transitions, episodes=stats.episodes, seconds=stats.seconds
    )
    run.write_json("tasks.json", [{"task_id": i, **t.params} for i, t in enumerate(tasks)])
    if shared is None:  # a file-backed store already lives in the run folder
        store.save(str(run.path / STORE_FILE))
    return Data(family, tasks, store, norm)


# --- train ----------------------------------------------------------------------------------


def build_model(cfg: RunConfig, family: TaskFamily, device: torch.device) -> SSM:
    return SSM(
        state_dim=cfg.state_dim,
        input_dim=family.input_dim,
        output_dim=family.target_dim,
        hidden_dim=cfg.hidden_dim,
        num_layers=cfg.num_layers,
    ).to(device)


def build_maml(cfg: RunConfig, model: SSM) -> MetaMAML:
    return MetaMAML(
        model,
        inner_lr=cfg.inner_lr,
        outer_lr=cfg.outer_lr,
        first_order=cfg.first_order,
        num_inner_steps=cfg.num_inner_steps,
        learn_inner_lr=cfg.learn_inner_lr,
    )


def meta_loader(cfg: RunConfig, data: Data, device: torch.device, start: int = 0) -> StoreLoader:
    """The feed of meta-training: draw k is the batch of meta-step k, seeded by (seed, k)."""
    return StoreLoader(data.store, device, data.normalizer, seed=cfg.seed, start=start)


def meta_batch(cfg: RunConfig, loader: StoreLoader) -> TaskBatch:
    """The next meta-step's per-task contiguous support/query windows, normalized, as
    sequences (T, 1, l, d): one sequence per task."""
    sx, sy, qx, qy, _ = loader.tasks(
        cfg.meta_batch_size, cfg.support_len, cfg.query_len, contiguous=True
    )
    return TaskBatch(sx.unsqueeze(1), sy.unsqueeze(1), qx.unsqueeze(1), qy.unsqueeze(1))


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


def restore(cfg: RunConfig, run: RunDir, data: Data, trained: Trained) -> int:
    """Load the run's checkpoint into `trained` and `data.normalizer`; return its step."""
    ck = load_checkpoint(run.checkpoint_path, to_dict(cfg))
    trained.model.load_state_dict(ck["model"])
    trained.maml.load_state_dict(ck["maml"])
    data.normalizer.load_state_dict(ck["normalizer"])
    trained.losses = list(ck["losses"])
    set_rng_state(ck["rng"])
    return int(ck["step"])


def train_stage(
    cfg: RunConfig, run: RunDir, data: Data, resume: bool, *, train: bool = True
) -> Trained:
    """Meta-train (continuing from the checkpoint with `resume`); `train=False` only loads."""
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)  # the same initial weights whatever ran before
    model = build_model(cfg, data.family, device)
    maml = build_maml(cfg, model)
    trained = Trained(model, maml, [], 0.0)
    start = 0
    if resume and run.checkpoint_path.exists():
        start = restore(cfg, run, data, trained)
        if not train:
            if start < cfg.num_epochs:
                log.warning("the checkpoint stopped at meta-step %d of %d", start, cfg.num_epochs)
            return trained
        run.truncate_metrics("train", start)
        log.info("resuming meta-training at step %d of %d", start, cfg.num_epochs)
    every = max(1, cfg.num_epochs // 10)
    t0 = time.perf_counter()
    bar = progress(range(start, cfg.num_epochs), desc="meta-train", unit="step", quiet=cfg.quiet)
    loader = meta_loader(cfg, data, device, start)
    try:
        for step in bar:
            _meta_step(cfg, run, data, trained, loader, step, every)
            bar.set_postfix(loss=f"{trained.losses[-1]:.4f}")
    finally:
        loader.close()
    trained.seconds = time.perf_counter() - t0
    if start == cfg.num_epochs and not run.checkpoint_path.exists():
        save_checkpoint(run.checkpoint_path, checkpoint_payload(cfg, trained, data, start))
    return trained


def _meta_step(
    cfg: RunConfig,
    run: RunDir,
    data: Data,
    trained: Trained,
    loader: StoreLoader,
    step: int,
    every: int,
) -> None:
    """One meta-update on the loader's batch of `step`; logs and checkpoints."""
    loss = trained.maml.meta_update(meta_batch(cfg, loader))
    if not np.isfinite(loss):
        raise FloatingPointError(f"meta-training diverged at step {step} (loss {loss})")
    trained.losses.append(loss)
    run.log_metrics("train", step=step, meta_loss=loss)
    if (step + 1) % every == 0 or step + 1 == cfg.num_epochs:
        log.info("meta-step %d/%d  query loss %.4f", step + 1, cfg.num_epochs, loss)
        save_checkpoint(run.checkpoint_path, checkpoint_payload(cfg, trained, data, step + 1))


# --- adapt + evaluate -----------------------------------------------------------------------


def base_adapter(cfg: RunConfig, trained: Trained, data: Data, **extra: Any) -> Adapter:
    """The run's Adapter at the trained weights (``extra``: AdaptationConfig fields on top)."""
    device = resolve_device(cfg.device)
    return adapter_for(cfg, trained.maml, data.store, data.normalizer, device, **extra)


def adapter_for(
    cfg: RunConfig,
    maml: MetaMAML,
    store: Any,
    normalizer: Normalizer,
    device: torch.device,
    **extra: Any,
) -> Adapter:
    """The run's Adapter on ``maml.model`` (``extra``: AdaptationConfig fields on top)."""
    overrides: dict[str, Any] = {
        "experience_batch_size": cfg.experience_batch_size,
        "experience_weight": cfg.experience_weight,
        "seed": cfg.seed,
        # replayed windows: the stretch meta-training used (support warms the state up)
        "sequence_length": cfg.support_len + cfg.query_len,
        "burn_in": cfg.support_len,
    }
    if cfg.adapt_lr > 0:
        overrides["learning_rate"] = cfg.adapt_lr
        overrides["param_lrs"] = None
    if cfg.num_adapt_steps > 0:
        overrides["num_steps"] = cfg.num_adapt_steps
    overrides.update(extra)
    return Adapter.from_maml(maml, store, device, transform=normalizer, **overrides)


def methods(cfg: RunConfig, base: Adapter) -> dict[str, tuple[Adapter, bool]]:
    """name -> (adapter at the meta-learned weights, adapts?).

    The hybrid method runs twice: with the default `replay_live` and with the other choice
    (replay of old tasks only, or also of the live stream written into the store)."""
    w = cfg.experience_weight
    live = base.config.replay_live
    return {
        "no adaptation": (protocol.variant(base), False),
        "GrBAL reset (w=0)": (protocol.variant(base, mode="reset", experience_weight=0.0), True),
        "continual (w=0)": (protocol.variant(base, mode="continual", experience_weight=0.0), True),
        f"hybrid (w={w:g})": (protocol.variant(base, mode="continual", experience_weight=w), True),
        f"hybrid (w={w:g}, replay_live={not live})": (
            protocol.variant(base, mode="continual", experience_weight=w, replay_live=not live),
            True,
        ),
    }


LIVE_TASK_BASE = 1_000_000  # task ids of the evaluation's live streams (training: 0..n-1)


def live_store(store: Any, where: Path) -> Any:
    """A private copy of the store for one method's live stream (methods stay independent)."""
    import rust_buffer

    path = where / "live-store.rbuf"
    store.save(str(path))
    try:
        return rust_buffer.RingBuffer.load(str(path))
    finally:
        path.unlink(missing_ok=True)


def evaluate_stage(cfg: RunConfig, run: RunDir, data: Data, trained: Trained) -> dict[str, Any]:
    """Online adaptation on held-out and out-of-range streams, retention on old tasks."""
    norm, m = data.normalizer, cfg.adapt_every
    old_tasks = data.train_tasks[: min(4, len(data.train_tasks))]
    old = protocol.task_streams(old_tasks, cfg.stream_steps, norm, cfg.seed + 7919)
    old_pairs = [p for s in old for p in protocol.window_pairs(s, m, 3)]
    base = base_adapter(cfg, trained, data)
    shots = base.config.num_steps
    before = {
        "0-shot": protocol.retention(base, old_pairs, m, shots=0),
        "few-shot": protocol.retention(base, old_pairs, m, shots=shots),
    }
    rows: dict[str, dict[str, float]] = {}
    curves: dict[str, dict[str, list[float]]] = {}
    per_task: dict[str, dict[str, list[float]]] = {}
    task_names: dict[str, list[str]] = {}
    streams_total = len(SPLITS) * len(methods(cfg, base)) * cfg.num_test_tasks
    bar = progress(total=streams_total, desc="adapt", unit="stream", quiet=cfg.quiet)
    for split in SPLITS:
        test_tasks = sample_tasks(cfg.env_name, cfg.num_test_tasks, seed=cfg.seed, split=split)
        streams = protocol.task_streams(test_tasks, cfg.stream_steps, norm, cfg.seed + 104729)
        for name, (adapter, adapts) in methods(cfg, base).items():
            errs: list[float] = []
            task_means = []
            # each adapting method writes its stream into its own copy of the store, live
            store = live_store(data.store, run.path) if adapts else None
            if store is not None:
                adapter.experience = adapter.experience.fork(
                    adapter.config.seed, adapter.experience.feed.old_tasks, buffer=store
                )
            for i, s in enumerate(streams):  # A -> B -> C, without resetting between tasks
                task_id = LIVE_TASK_BASE + 1000 * SPLITS.index(split) + i
                e = protocol.prequential_run(
                    adapter, s, m, adapt=adapts, store=store, task_id=task_id
                ).errors
                bar.update(1)
                bar.set_postfix(split=split, method=name)
                errs += e
                task_means.append(float(np.mean(e)))
            row = rows.setdefault(name, {})
            row[f"{split} nMSE"] = float(np.mean(errs))
            row[f"{split} old tasks 0-shot"] = protocol.retention(adapter, old_pairs, m, shots=0)
            row[f"{split} old tasks few-shot"] = protocol.retention(
                adapter, old_pairs, m, shots=shots
            )
            row["rollbacks"] = row.get("rollbacks", 0) + adapter.stats.get("rollbacks", 0)
            curves.setdefault(split, {})[name] = errs
            per_task.setdefault(split, {})[name] = task_means
        for name, fn in (
            ("identity", lambda s: protocol.identity_windows(s, m, norm)),
            ("linear LS (best ridge)", lambda s: protocol.best_linear_windows(s, m, norm)[1]),
        ):
            errs = [e for s in streams for e in fn(s)]
            rows.setdefault(name, {})[f"{split} nMSE"] = float(np.mean(errs))
            curves[split][name] = errs
        task_names[split] = [s.name for s in streams]
    summary = {
        "env_name": cfg.env_name,
        "seed": cfg.seed,
        "window": m,
        "adaptation": base.config.to_dict(),
        "old_tasks_before": before,
        "methods": rows,
        "meta_training": {
            "steps": len(trained.losses),
            "final_loss": trained.losses[-1] if trained.losses else None,
            "seconds": round(trained.seconds, 2),
        },
    }
    bar.close()
    _plots(run, trained, curves, per_task, task_names, cfg)
    return summary


def _plots(
    run: RunDir,
    trained: Trained,
    curves: dict[str, dict[str, list[float]]],
    per_task: dict[str, dict[str, list[float]]],
    task_names: dict[str, list[str]],
    cfg: RunConfig,
) -> None:
    plots = run.path / "plots"
    plot_curve(
        plots / "meta_training_loss.png",
        list(range(1, len(trained.losses) + 1)),
        trained.losses,
        title=f"meta-training ({cfg.env_name})",
        xlabel="meta-step",
        ylabel="query loss (normalized MSE)",
    )
    hybrid = f"hybrid (w={cfg.experience_weight:g})"
    for split, named in curves.items():
        plot_curves(
            plots / f"adaptation_{split}.png",
            named,
            title=f"prequential error per window, {split} stream",
            xlabel="window (tasks A -> B -> C)",
            ylabel="nMSE",
        )
        tasks = per_task[split]
        plot_before_after(
            plots / f"before_after_{split}.png",
            task_names[split],
            tasks["no adaptation"],
            tasks[hybrid],
            title=f"{split}: error before and after hybrid adaptation",
        )


def format_table(summary: dict[str, Any]) -> str:
    cols = [
        "heldout nMSE",
        "ood nMSE",
        "heldout old tasks few-shot",
        "ood old tasks few-shot",
        "ood old tasks 0-shot",
    ]
    lines = [
        "| method | " + " | ".join(cols) + " |",
        "|---" * (len(cols) + 1) + "|",
    ]
    for name, row in summary["methods"].items():
        cells = [f"{row[c]:.4f}" if c in row else "-" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    before = summary["old_tasks_before"]
    lines.append(
        f"\nold (training) tasks before the streams: few-shot {before['few-shot']:.4f}, "
        f"0-shot {before['0-shot']:.4f} (nMSE; identity ~ 1)"
    )
    return "\n".join(lines)


# --- stages ---------------------------------------------------------------------------------


def control_stage(path: Path, options: Any, results: Path | None = None) -> dict[str, Any]:
    """Model-predictive control grid (eaml_ssm.control) on the trained run folder `path`;
    writes control.json, control.md and plots there (or at `results`)."""
    from eaml_ssm.control.report import write_outputs
    from eaml_ssm.control.run import load_trained, run_grid

    trained = load_trained(path, resolve_device(options.device))
    summary = run_grid(trained, options)
    write_outputs(summary, results or Path(path) / "control.json")
    return summary


def saved_store(cfg: RunConfig, run: RunDir) -> Any:
    """The store an earlier `collect` kept in this run folder, or None."""
    import rust_buffer

    saved, shared = run.path / STORE_FILE, run.path / SHARED_STORE_FILE
    if saved.exists():
        return rust_buffer.RingBuffer.load(str(saved))
    if shared.exists():
        return rust_buffer.RingBuffer.open(str(shared), seed=cfg.seed)
    return None


def train_tasks(cfg: RunConfig) -> list[Task]:
    """The run's meta-training tasks (task_id = position), from its env and seed."""
    return sample_tasks(cfg.env_name, cfg.num_tasks, seed=cfg.seed, split="train")


def checkpoint_config(ck: dict[str, Any], path: Path) -> RunConfig:
    """The RunConfig saved in a run checkpoint (errors name the file)."""
    try:
        return from_dict(dict(ck["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: no valid run config in the checkpoint ({exc})") from exc


def load_data(cfg: RunConfig, run: RunDir) -> Data:
    """The store of an earlier `collect` in this run folder, or a fresh collection."""
    store = saved_store(cfg, run)
    if store is None:
        return collect_stage(cfg, run)
    return Data(get_family(cfg.env_name), train_tasks(cfg), store, Normalizer.from_store(store))


def run_stage(command: str, cfg: RunConfig, *, resume: bool = False) -> int:
    """Run one stage (`run`, `collect`, `train`, `adapt`) and return an exit code.

    `adapt`, any stage with `resume`, and any stage whose --name names an existing run
    folder continue that folder (default name: <env>-seed<seed>): `collect --name s` then
    `train --name s` trains run s on the store collected there. Otherwise a new folder.
    This and ``eaml_ssm.cli.main(argv)`` are the programmatic entry points.
    """
    get_family(cfg.env_name)  # an unknown or unsupported env fails before anything is written
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
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
    trained = train_stage(cfg, run, data, resume=existing, train=command != "adapt")
    if command == "train":
        return 0
    summary = evaluate_stage(cfg, run, data, trained)
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    run.write_json("summary.json", summary)
    table = format_table(summary)
    (run.path / "summary.md").write_text(table + "\n")
    print(table)
    print(f"\nrun folder: {run.path}  ({summary['wall_seconds']} s)")
    return 0
