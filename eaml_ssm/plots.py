"""PNG plots for a run folder (matplotlib, Agg backend; skipped with a warning if missing)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _pyplot():  # type: ignore[no-untyped-def]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        log.warning("matplotlib is not installed: no plots")
        return None
    return plt


def _finish(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curve(
    path: Path, xs: Sequence[float], ys: Sequence[float], *, title: str, xlabel: str, ylabel: str
) -> Path | None:
    plt = _pyplot()
    if plt is None or not xs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(xs, ys, lw=1.2)
    ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _finish(plt, fig, path)


def plot_curves(
    path: Path,
    curves: Mapping[str, Sequence[float]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = True,
) -> Path | None:
    """Several named curves on one axis (e.g. per-window error of each adaptation method)."""
    plt = _pyplot()
    if plt is None or not curves:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, ys in curves.items():
        ax.plot(range(len(ys)), ys, lw=1.2, label=label)
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _finish(plt, fig, path)


def plot_before_after(
    path: Path, tasks: Sequence[str], before: Sequence[float], after: Sequence[float], *, title: str
) -> Path | None:
    """Grouped bars: error before and after adaptation for each test task."""
    plt = _pyplot()
    if plt is None or not tasks:
        return None
    fig, ax = plt.subplots(figsize=(max(5, len(tasks) * 0.9), 3.8))
    idx = list(range(len(tasks)))
    ax.bar([i - 0.2 for i in idx], before, width=0.4, label="before (meta-learned)")
    ax.bar([i + 0.2 for i in idx], after, width=0.4, label="after adaptation")
    ax.set_xticks(idx, tasks, rotation=30, ha="right", fontsize=7)
    ax.set_yscale("log")
    ax.set(title=title, ylabel="nMSE")
    ax.legend(fontsize=8)
    return _finish(plt, fig, path)


def plot_pareto(
    path: Path,
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    points: Mapping[str, tuple[float, float]],
    *,
    title: str,
    legend: str,
) -> Path | None:
    """New-task error (x, log scale) against forgetting (y): one line per series of
    (label value, x, y) points, each point after the first labelled with its value, plus
    single named points."""
    plt = _pyplot()
    if plt is None or not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for label, pts in series.items():
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", ms=4, lw=1.2, label=label)
        for w, x, y in pts[1:]:
            ax.annotate(f"{w:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for name, (x, y) in points.items():
        ax.scatter([x], [y], marker="s", s=28, zorder=3)
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set(
        title=title,
        xlabel="new-task nMSE (prequential)",
        ylabel="few-shot forgetting, training tasks",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title=legend, title_fontsize=7)
    return _finish(plt, fig, path)


def plot_bars(
    path: Path,
    groups: Mapping[str, Mapping[str, tuple[float, float | None]]],
    *,
    title: str,
    ylabel: str,
) -> Path | None:
    """Grouped bars with error bars: groups (e.g. splits) -> label -> (mean, half-width)."""
    plt = _pyplot()
    if plt is None or not groups:
        return None
    labels = list(dict.fromkeys(k for g in groups.values() for k in g))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(labels) * len(groups)), 4))
    width = 0.8 / max(1, len(labels))
    for j, label in enumerate(labels):
        xs, ys, es = [], [], []
        for i, g in enumerate(groups.values()):
            if label in g:
                mean, half = g[label]
                xs.append(i + (j - (len(labels) - 1) / 2) * width)
                ys.append(mean)
                es.append(half if half is not None and half == half else 0.0)
        ax.bar(xs, ys, width=width, yerr=es, capsize=3, label=label)
    ax.set_xticks(range(len(groups)), list(groups))
    ax.set(title=title, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _finish(plt, fig, path)
