"""Aggregation over seeds: per family and split, each row's seed means and 95 % intervals,
its per-seed values (for the paired claims), mean curves, divergence counts, and the test
tasks' dynamics quantities; then the claims and targets (`claims.py`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from eaml_ssm.dynamics_ood import DYNAMICS_QUANTITIES, outside_factor, quantity_ranges
from eaml_ssm.evaluate.claims import REFERENCES, claims, effects, hybrid_controls, targets
from eaml_ssm.evaluate.methods import REFERENCE, Method
from eaml_ssm.evaluate.unit import is_diverged
from eaml_ssm.protocol import TEST_SPLITS
from eaml_ssm.stats import summarize

METRICS = ("new", "F_train_0", "F_train_fs", "F_A_0", "F_A_fs")
STREAM_METRICS = ("new", "new_settled", "switch", "recovery")


def aggregate(units: Sequence[dict[str, Any]], methods: dict[str, list[Method]]) -> dict[str, Any]:
    """Seed means, CIs, effect sizes and targets per family and split."""
    out: dict[str, Any] = {}
    for family in dict.fromkeys(u["family"] for u in units):
        runs = sorted((u for u in units if u["family"] == family), key=lambda u: u["seed"])
        fam: dict[str, Any] = {"seeds": [u["seed"] for u in runs], "splits": {}}
        fam["alpha"] = summarize([u["alpha"] for u in runs]).to_dict()
        fam["negative_step_share"] = summarize(
            [u.get("negative_step_share", math.nan) for u in runs]
        ).to_dict()
        for split in TEST_SPLITS:
            fam["splits"][split] = _aggregate_split(
                [u["splits"][split] for u in runs], methods[family]
            )
        fam["quantities"] = task_quantities(
            family,
            {
                sp: [q for r in runs for q in [r["splits"][sp].get("task_quantities", [])]]
                for sp in TEST_SPLITS
            },
        )
        fam["targets"] = targets(fam, family)
        out[family] = fam
    return out


def _identity_curve(split_run: dict[str, Any]) -> list[float] | None:
    """The identity reference's per-window errors of a saved split (None if absent)."""
    ident = split_run.get("identity")
    return list(ident["curve"]) if ident and "curve" in ident else None


def _per_seed(split_runs: Sequence[dict[str, Any]], name: str, metric: str) -> list[float]:
    vals = []
    for r in split_runs:
        row = r["methods"][name]
        value = row.get(metric)
        bad = value is None or is_diverged(row, _identity_curve(r))
        vals.append(math.nan if bad else float(value))
    return vals


def _aggregate_split(split_runs: Sequence[dict[str, Any]], methods: list[Method]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for base in REFERENCES:
        if not all(base in r for r in split_runs):
            continue
        per = {k: [float(r[base].get(k, math.nan)) for r in split_runs] for k in STREAM_METRICS}
        rows[base] = {
            **{k: summarize(v).to_dict() for k, v in per.items()},
            "curve": np.mean([r[base]["curve"] for r in split_runs], axis=0).tolist(),
            "per_seed": per,
            "group": "reference",
        }
    methods = [m for m in methods if all(m.name in r["methods"] for r in split_runs)]
    for method in methods:  # (a row missing from a saved unit is left out, not invented)
        name = method.name
        keys = (*METRICS, *STREAM_METRICS[1:], "ratio_identity", "ratio_linear")
        per = {k: _per_seed(split_runs, name, k) for k in keys}
        curves = np.array([r["methods"][name]["curve"] for r in split_runs], dtype=np.float64)
        rows[name] = {
            **{k: summarize(v).to_dict() for k, v in per.items()},
            "diverged": sum(
                is_diverged(r["methods"][name], _identity_curve(r)) for r in split_runs
            ),
            "runs": len(split_runs),
            "rollbacks": int(sum(r["methods"][name]["rollbacks"] for r in split_runs)),
            "ms_per_step": summarize(
                [r["methods"][name]["ms_per_step"] for r in split_runs]
            ).to_dict(),
            "curve": np.nanmean(np.where(np.isfinite(curves), curves, np.nan), axis=0).tolist(),
            "per_seed": per,
            "group": method.group,
            "weight": method.weight,
            "adapt": method.adapt,
        }
    if REFERENCE in rows:
        rows_effects = {
            m.name: effects(rows[m.name]["per_seed"], rows[REFERENCE]["per_seed"], rows.get("none"))
            for m in methods
            if m.name != REFERENCE and m.adapt
        }
    else:
        rows_effects = {}
    return {
        "rows": rows,
        "effects": rows_effects,
        "claims": claims(rows),
        "controls": hybrid_controls(rows),
        "tasks": [r.get("tasks", []) for r in split_runs],
        "task_quantities": [r.get("task_quantities", []) for r in split_runs],
    }


def task_quantities(family: str, split_runs: dict[str, list[Any]]) -> dict[str, Any]:
    """Per split and dynamics quantity: the training range, the test tasks' values and how
    far outside the range they lie (outside_factor: 1 = inside)."""
    if family not in DYNAMICS_QUANTITIES:
        return {}
    ranges = quantity_ranges(family)
    out: dict[str, Any] = {}
    for split, per_unit in split_runs.items():
        values = [t for unit in per_unit for t in unit]
        out[split] = {
            q: {
                "train": ranges[q],
                "min": min(v[q] for v in values),
                "max": max(v[q] for v in values),
                "factor_min": min(outside_factor(v[q], ranges[q]) for v in values),
                "factor_max": max(outside_factor(v[q], ranges[q]) for v in values),
                "tasks": len(values),
            }
            for q in ranges
            if values and all(q in v for v in values)
        }
    return out
