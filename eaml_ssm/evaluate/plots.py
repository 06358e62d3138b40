"""The evaluation's plots (PNG, under the run folder's plots/): per family and split, the
Pareto front of the hybrids (new-task error against few-shot train forgetting, over the
experience weight w) and the per-window error curves of the key methods."""

from __future__ import annotations

import math
from typing import Any

from eaml_ssm.artifacts import RunDir
from eaml_ssm.evaluate.methods import PREREGISTERED, REFERENCE
from eaml_ssm.plots import plot_curves, plot_pareto

CURVE_METHODS = ("none", "grbal", REFERENCE, PREREGISTERED, "hybn_1", "hyb_1")
PARETO_SERIES = ("hybn uniform", "hyb uniform", "hybn task_balanced", "hybn nearest")
PARETO_POINTS = ("none", "grbal", REFERENCE, "cont_w0_lrx0.3", "l2_0.1", "l2_1")
PARETO_SPAN = 5.0  # points with a new-task error above 5x that of w = 0 are left out


def pareto_series(rows: dict[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """Experience-weight series (w, new-task nMSE, few-shot train forgetting) of the hybrids,
    starting at continual w = 0; near-divergent points (see PARETO_SPAN) are left out."""
    ref = rows.get(REFERENCE)
    if ref is None or not ref["new"]["n"]:
        return {}
    limit, ylim = _pareto_limits(rows)
    start = (0.0, ref["new"]["mean"], ref["F_train_fs"]["mean"])
    series: dict[str, list[tuple[float, float, float]]] = {}
    for name, row in rows.items():
        if row.get("group") not in PARETO_SERIES or "lrx" in name or "_g" in name:
            continue
        if name.endswith("_pos") or not row["new"]["n"]:
            continue
        x, y = row["new"]["mean"], row["F_train_fs"]["mean"]
        if math.isfinite(x) and math.isfinite(y) and x <= limit and abs(y) <= ylim:
            series.setdefault(row["group"], [start]).append((row["weight"], x, y))
    return {k: sorted(v) for k, v in series.items()}


def pareto_points(rows: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """The reference methods (PARETO_POINTS) as (new-task nMSE, few-shot train forgetting),
    inside the same window as the series."""
    limit, ylim = _pareto_limits(rows)
    out = {}
    for name in PARETO_POINTS:
        row = rows.get(name)
        if row is None or not row["new"]["n"]:
            continue
        x, y = row["new"]["mean"], row["F_train_fs"]["mean"]
        if math.isfinite(x) and math.isfinite(y) and x <= limit and abs(y) <= ylim:
            out[name] = (x, y)
    return out


def _pareto_limits(rows: dict[str, Any]) -> tuple[float, float]:
    """Plot window: new-task error up to PARETO_SPAN x that of w = 0, forgetting up to
    PARETO_SPAN x |forgetting of w = 0| (at least 0.01)."""
    ref = rows[REFERENCE]
    return (
        PARETO_SPAN * ref["new"]["mean"],
        PARETO_SPAN * max(abs(ref["F_train_fs"]["mean"]), 0.01),
    )


def make_plots(run: RunDir, agg: dict[str, Any]) -> None:
    """The Pareto and curve plots of every family and split of an aggregate."""
    for family, fam in agg.items():
        short = family.split("-")[0].lower()
        for split, s in fam["splits"].items():
            rows = s["rows"]
            series = pareto_series(rows)
            if series:
                plot_pareto(
                    run.path / "plots" / f"pareto_{short}_{split}.png",
                    series,
                    pareto_points(rows),
                    title=f"{family} {split}: seed means (outliers > {PARETO_SPAN:g}x w=0 omitted)",
                    legend="hybrid, labels = w",
                )
            curves = {
                n: rows[n]["curve"] for n in (*CURVE_METHODS, "identity", "linear") if n in rows
            }
            plot_curves(
                run.path / "plots" / f"curves_{short}_{split}.png",
                curves,
                title=f"{family} {split}: prequential nMSE per window (seed means)",
                xlabel="window (tasks A -> B -> C)",
                ylabel="nMSE",
            )
