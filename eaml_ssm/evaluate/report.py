"""The evaluation report: the whole results.md of a run (`report`), the targets as text,
the line that says where the numbers come from (`source_line`), and the marked blocks of
README.md and docs/evaluation.md (`doc_blocks`)."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eaml_ssm.evaluate.methods import REFERENCE
from eaml_ssm.evaluate.tables import (
    claims_table,
    controls_table,
    diff,
    effects_table,
    headline_table,
    method_table,
    quantities_table,
    ratio_cell,
    share,
    steps_table,
)
from eaml_ssm.stats import percent


def targets_text(t: dict[str, Any]) -> str:
    def yes(ok: bool, required: bool = True) -> str:
        return ("met" if ok else "MISSED") + ("" if required else " (sanity family)")

    def diffs(methods: dict[str, Any]) -> str:
        return ", ".join(f"{k} {diff(v)}" for k, v in methods.items())

    lines = []
    for split, s in t.items():
        z = s["beats_zero_shot"]
        lines.append(
            f"- {split}: adaptation beats the best zero-shot model (`{z['zero_shot']}`), paired "
            f"interval excluding 0: {diffs(z['methods'])}: {yes(z['pass'], z['required'])}"
        )
        h = s["hybrid"]
        e = h["entry"]
        if e is None:
            lines.append(f"- {split}: hybrid vs matched control: not tested at this level")
        else:
            lines.append(
                f"- {split}: best hybrid `{h['best']}` vs matched control `{e['control']}`: "
                f"few-shot train forgetting cut {percent(e['cut_F_train_fs']).lstrip('+')} "
                f"(control {e['control_F_train_fs']:.4f}), new-task ratio "
                f"{ratio_cell(e['new_ratio'])} (>= 50 % at <= 1.1x): "
                f"{yes(h['pass'], h['required'])}"
            )
        st = s["stability"]
        if not st.get("tested", True):
            lines.append(f"- {split}: stability (w <= 3, 2x step): not tested at this level")
        else:
            lines.append(
                f"- {split}: stability (w <= 3, 2x step): diverged runs "
                f"{st['diverged_runs'] or 'none'}; rollbacks {st['rollbacks'] or 'none'}: "
                f"{yes(st['pass'], st['required'])}"
            )
        bl = s["beats_linear"]
        lines.append(
            f"- {split}: adapted SSM beats the growing-window linear fit: "
            f"{diffs(bl['methods'])}: {yes(bl['pass'], bl['required'])}"
        )
        br = s["beats_best_reference"]
        lines.append(
            f"- {split}: adapted SSM beats the best reference "
            f"(`{br['reference']}`): {diffs(br['methods'])}: {yes(br['pass'], br['required'])}"
        )
    return "\n".join(lines)


def report(agg: dict[str, Any], header: str) -> str:
    parts = [header, "\n## Headline (seed means ± 95% CI; nMSE, forgetting: positive = worse)\n"]
    parts.append(headline_table(agg))
    for family, fam in agg.items():
        alpha = fam["alpha"]
        parts.append(
            f"\n## {family} (seeds {fam['seeds']}; mean learned step size {alpha['mean']:.4f}; "
            f"share of negative learned step sizes {share(fam.get('negative_step_share'))})"
        )
        for split, s in fam["splits"].items():
            parts.append(f"\n### {family}, {split} stream: seed means ± 95% CI\n")
            parts.append(method_table(s))
            parts.append(
                "\nClaims (paired per-seed differences of the whole-stream error, mean ± 95 % CI "
                "over seeds and median, * = interval excludes 0; ratios = geometric mean of "
                "per-seed ratios [95 % CI])\n"
            )
            parts.append(claims_table(s))
            if s["controls"]:
                parts.append("\nHybrids against continual w = 0 at the same effective step\n")
                parts.append(controls_table(s))
            if s["effects"]:
                parts.append(
                    f"\nEffect sizes vs `{REFERENCE}` (seed means; pass = seeds with >= 50 % "
                    "less train forgetting and <= +10 % new-task error)\n"
                )
                parts.append(effects_table(s))
        if fam.get("quantities"):
            parts.append(f"\n### {family}: dynamics-setting quantities of the test tasks\n")
            parts.append(quantities_table(fam["quantities"]))
        parts.append(f"\n### {family}: targets\n")
        parts.append(targets_text(fam["targets"]))
    return "\n".join(parts) + "\n"


def source_line(saved: dict[str, Any]) -> str:
    """Where a set of numbers comes from: command, commit, wall and CPU time, machine load."""
    profile = saved["profile"]
    cpu = saved.get("cpu_seconds")
    cpu_text = f"; {cpu:.0f} CPU-seconds" if isinstance(cpu, int | float) else ""
    return (
        f"Command: `{saved['command']}` at commit `{saved.get('commit') or 'unknown'}`  \n"
        f"Wall time: {duration(saved['wall_seconds'])}{cpu_text} "
        f"({_cpu_note(profile['jobs'], saved['load_average'])})"
    )


def doc_blocks(agg: dict[str, Any], saved: dict[str, Any], where: Path) -> dict[str, str]:
    """The marked blocks of the docs, rendered from one result set."""
    targets_md = []
    quantities_md = []
    for family, fam in agg.items():
        targets_md += [f"**{family}**", "", targets_text(fam["targets"]), ""]
        if fam.get("quantities"):
            quantities_md += [f"**{family}**", "", quantities_table(fam["quantities"]), ""]
    return {
        "source": source_line(saved) + f"  \nFull tables: `{where / 'results.md'}`",
        "headline": headline_table(agg),
        "targets": "\n".join(targets_md).strip(),
        "quantities": "\n".join(quantities_md).strip(),
        "steps": steps_table(agg),
    }


def duration(wall: float | None) -> str:
    return "unknown" if wall is None or not math.isfinite(wall) else f"{wall:.0f} s"


def _cpu_note(jobs: int, load: Sequence[float | None]) -> str:
    start, end = ("?" if v is None or not math.isfinite(v) else f"{v:.1f}" for v in load)
    return (
        f"{os.cpu_count()} CPU cores visible, {jobs} worker process(es) with 1 torch thread "
        f"each; 1-min load average {start} at the start, {end} at the end"
    )
