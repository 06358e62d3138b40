"""The pipeline's adapt stage: online adaptation on held-out and out-of-range streams.

Every method of `eaml_ssm.run_adapter.methods` runs prequentially (see eaml_ssm.protocol) on
streams of test tasks A -> B -> C, without resets between tasks, against identity and
per-window linear least squares; retention is scored on old (training) tasks. Writes the
plots; returns the summary that `summary_table` renders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eaml_ssm import protocol
from eaml_ssm.artifacts import RunDir
from eaml_ssm.config import RunConfig
from eaml_ssm.markdown import md_table
from eaml_ssm.method_names import hybrid_key, label
from eaml_ssm.plots import plot_before_after, plot_curve, plot_curves
from eaml_ssm.progress import progress
from eaml_ssm.run_adapter import base_adapter, methods
from eaml_ssm.run_data import Data
from eaml_ssm.tasks import draw_tasks
from eaml_ssm.train import Trained

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


def adapt_streams(cfg: RunConfig, run: RunDir, data: Data, trained: Trained) -> dict[str, Any]:
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
    streams_total = len(protocol.TEST_SPLITS) * len(methods(cfg, base)) * cfg.num_test_tasks
    bar = progress(total=streams_total, desc="adapt", unit="stream", quiet=cfg.quiet)
    for split in protocol.TEST_SPLITS:
        test_tasks = draw_tasks(cfg.env_name, cfg.num_test_tasks, seed=cfg.seed, split=split)
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
                task_id = LIVE_TASK_BASE + 1000 * protocol.TEST_SPLITS.index(split) + i
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
            ("linear LS (best ridge)", lambda s: protocol.best_linear_windows(s, m)[1]),
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
    hybrid = label(hybrid_key(cfg.experience_weight))
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
            tasks[label("none")],
            tasks[hybrid],
            title=f"{split}: error before and after hybrid adaptation",
        )


def summary_table(summary: dict[str, Any]) -> str:
    cols = [
        "heldout nMSE",
        "ood nMSE",
        "heldout old tasks few-shot",
        "ood old tasks few-shot",
        "ood old tasks 0-shot",
    ]
    rows = [
        [name, *(f"{row[c]:.4f}" if c in row else "-" for c in cols)]
        for name, row in summary["methods"].items()
    ]
    before = summary["old_tasks_before"]
    return (
        md_table(["method", *cols], rows)
        + f"\n\nold (training) tasks before the streams: few-shot {before['few-shot']:.4f}, "
        f"0-shot {before['0-shot']:.4f} (nMSE; identity ~ 1)"
    )
