"""The evaluation's markdown tables, rendered from an aggregate (`aggregate.aggregate`):
every row of a split, the claims, the matched controls, the effect sizes, the test tasks'
quantities, the compact headline and the step-size study. Cells are seed means ± 95 % CI
(`stats.Summary.format`)."""

from __future__ import annotations

import math
from typing import Any

from eaml_ssm.evaluate.claims import REFERENCES
from eaml_ssm.evaluate.methods import (
    PREREGISTERED,
    REFERENCE,
    W_PRE,
    ZERO_SHOT,
    matched_control_name,
)
from eaml_ssm.markdown import md_table
from eaml_ssm.protocol import TEST_SPLITS
from eaml_ssm.stats import Summary, paired, percent

COLUMNS = (
    ("new", "new (whole stream)"),
    ("switch", "switch windows"),
    ("recovery", "recovery (windows)"),
    ("F_train_0", "F train 0-shot"),
    ("F_train_fs", "F train few-shot"),
    ("F_A_0", "F task A 0-shot"),
    ("F_A_fs", "F task A few-shot"),
)
# row labels of the references in the tables (a method row shows its key)
ROW_LABELS = {
    "linear": "linear LS, growing window",
    "ridge_prior": "ridge toward global fit",
    ZERO_SHOT: "J_none (joint, zero-shot)",
}
HEADLINE = ("none", "grbal", REFERENCE, matched_control_name(W_PRE), PREREGISTERED, "hybn_1",
            "hyb_1", "hyb_3", "l2_1", "FO_cont_w0", "J_cont_w0", "cont_w0_pos",
            "cont_w0_posm")  # fmt: skip
STEP_TAGS = ("", "_pos", "_abs", "_posm", "_absm", "_softplus")


def row_label(name: str) -> str:
    return ROW_LABELS.get(name, name)


def cell(summary: dict[str, Any], digits: int = 4) -> str:
    """A saved seed summary (`Summary.to_dict`) as `mean ± ci`."""
    return Summary.from_dict(summary).format(digits)


def share(summary: dict[str, Any] | None) -> str:
    """The negative-step-size share, or "not recorded" for runs made before it was."""
    return cell(summary) if summary and summary["n"] else "not recorded"


def diff(d: dict[str, Any] | None) -> str:
    """A paired difference (`stats.Paired.to_dict`): mean ± ci (median), * if it excludes 0."""
    if not d or not d["n"]:
        return "-"
    ci = f" ± {d['ci95']:.4f}" if d["ci95"] is not None and math.isfinite(d["ci95"]) else ""
    star = " *" if d.get("excludes_zero") else ""
    return f"{d['mean']:+.4f}{ci} (median {d['median']:+.4f}){star}"


def ratio_cell(r: dict[str, Any] | None) -> str:
    """A geometric-mean ratio (`stats.Ratio.to_dict`) with its interval."""
    if not r or not r["n"]:
        return "-"
    low, high = r["low"], r["high"]
    span = f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{r['gmean']:.3f}{span}"


def method_table(agg: dict[str, Any]) -> str:
    """Markdown table of one family and split: seed means ± 95% CI (whole-stream scoring)."""
    head = ["method", *(label for _, label in COLUMNS), "diverged", "rollbacks", "ms/step"]
    body = []
    for name, row in agg["rows"].items():
        cells = [cell(row[k], 2 if k == "recovery" else 4) if k in row else "—" for k, _ in COLUMNS]
        if "runs" in row:
            cells += [
                f"{row['diverged']}/{row['runs']}",
                str(row["rollbacks"]),
                cell(row["ms_per_step"], 1) if row["ms_per_step"]["n"] else "-",
            ]
        else:
            cells += ["—"] * 3
        body.append([row_label(name), *cells])
    return md_table(head, body)


def claims_table(agg: dict[str, Any]) -> str:
    """Each adapted method against the best reference, the growing-window linear fit and
    the best zero-shot model: paired per-seed differences and geometric-mean ratios."""
    cl = agg["claims"]
    head = [
        "method",
        f"Δ vs best reference ({row_label(cl['best_reference'])})",
        "ratio vs best reference",
        "Δ vs linear (growing)",
        "ratio vs linear",
        f"Δ vs best zero-shot ({cl['best_zero_shot']})",
    ]
    body = [
        [
            name,
            diff(e.get("best_reference", {}).get("diff")),
            ratio_cell(e.get("best_reference", {}).get("ratio")),
            diff(e.get("linear", {}).get("diff")),
            ratio_cell(e.get("linear", {}).get("ratio")),
            diff(e.get("zero_shot", {}).get("diff")),
        ]
        for name, e in cl["methods"].items()
    ]
    return md_table(head, body)


def controls_table(agg: dict[str, Any]) -> str:
    """Each normalized hybrid against its matched-step w = 0 control."""
    head = ["hybrid", "control", "F train few-shot (control)", "cut", "Δ F (paired)"]
    head += ["new ratio", "pass"]
    body = [
        [
            name,
            f"`{c['control']}`",
            f"{c['control_F_train_fs']:.4f}",
            percent(c["cut_F_train_fs"]).lstrip("+"),
            diff(c["diff_F_train_fs"]),
            ratio_cell(c["new_ratio"]),
            "yes" if c["pass"] else "no",
        ]
        for name, c in agg["controls"].items()
    ]
    return md_table(head, body)


def effects_table(agg: dict[str, Any]) -> str:
    """Effect sizes of each adapted method against continual w = 0 (`claims.effects`)."""
    head = [
        "method",
        "Δ new",
        "↓F train 0-shot",
        "↓F train few-shot",
        "↓F A 0-shot",
        "↓F A few-shot",
        "pass 0-shot",
        "pass few-shot",
        "gain vs none",
    ]
    n = next(iter(v["runs"] for k, v in agg["rows"].items() if "runs" in v))
    body = []
    for name, e in agg["effects"].items():
        cells = [percent(e["delta_new"])] + [
            percent(e[k]).lstrip("+")
            for k in ("red_train_0", "red_train_fs", "red_A_0", "red_A_fs")
        ]
        cells += [
            f"{e['pass_0']}/{n}",
            f"{e['pass_fs']}/{n}",
            percent(e.get("gain_vs_none", math.nan)).lstrip("+"),
        ]
        body.append([name, *cells])
    return md_table(head, body)


def quantities_table(quantities: dict[str, Any]) -> str:
    """Per split and dynamics quantity: the training range, the test tasks' values and how
    far outside the range they lie (`aggregate.task_quantities`)."""
    head = ["split", "quantity", "training range", "test tasks", "outside by (x)"]
    body = []
    for split, table in quantities.items():
        for q, e in table.items():
            lo, hi = e["train"]
            fmin, fmax = e["factor_min"], e["factor_max"]
            outside = "inside" if fmax <= 1.0 else f"{fmin:.2f}-{fmax:.2f}"
            tested = f"{e['min']:.3g}-{e['max']:.3g} ({e['tasks']} tasks)"
            body.append([split, q, f"{lo:.3g}-{hi:.3g}", tested, outside])
    return md_table(head, body)


def headline_table(agg: dict[str, Any]) -> str:
    """One compact table: the key rows of every family, both streams side by side."""
    cols = [(split, k) for k in ("new", "F_train_fs") for split in TEST_SPLITS]
    head = [f"{'new' if k == 'new' else 'F train few-shot'} ({split})" for split, k in cols]
    body = []
    for family, fam in agg.items():
        splits = fam["splits"]
        for name in (*REFERENCES, ZERO_SHOT, *HEADLINE):
            if name not in splits[TEST_SPLITS[0]]["rows"]:
                continue
            cells = []
            for split, k in cols:
                row = splits[split]["rows"][name]
                cells.append(cell(row[k]) if k in row else "—")
            body.append([family, row_label(name), *cells])
    return md_table(["family", "method", *head], body)


def steps_table(agg: dict[str, Any]) -> str:
    """The step-size study: signed, clamped, absolute, mean-matched and softplus-trained step
    sizes, for continual w = 0 and hybn_0.3, per family and split (seed means ± 95 % CI), and
    the measured comparison of the two candidate defaults (softplus vs clamp) for w = 0."""
    head = ["family", "split", "method", "new", "F train few-shot", "F task A few-shot"]
    body = []
    verdicts = []
    for family, fam in agg.items():
        for split, sp in fam["splits"].items():
            rows = sp["rows"]
            for base in (REFERENCE, PREREGISTERED):
                for tag in STEP_TAGS:
                    row = rows.get(base + tag)
                    if row is None:
                        continue
                    cells = [cell(row[k]) for k in ("new", "F_train_fs", "F_A_fs")]
                    body.append([family, split, base + tag, *cells])
            soft, pos = rows.get(f"{REFERENCE}_softplus"), rows.get(f"{REFERENCE}_pos")
            if soft and pos:
                d_new = paired(soft["per_seed"]["new"], pos["per_seed"]["new"]).to_dict()
                d_f = paired(soft["per_seed"]["F_train_fs"], pos["per_seed"]["F_train_fs"])
                verdicts.append(
                    f"- {family} {split}: softplus-trained minus clamped, continual w = 0: new "
                    f"{diff(d_new)}; few-shot train forgetting {diff(d_f.to_dict())}"
                )
    if not body:
        return ""
    return "\n".join([md_table(head, body), "", *verdicts])
