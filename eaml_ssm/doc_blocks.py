"""Marked blocks of README.md and docs/*.md, rendered from results files committed under
docs/results/ (numbers in the docs are never typed by hand).

A block is the text between `<!-- PREFIX:NAME/KEY -->` and `<!-- /PREFIX:NAME/KEY -->`.
`python -m eaml_ssm.doc_blocks` re-renders the pipeline summary block of the README from
docs/results/pipeline/summary.json (written by `python -m eaml_ssm`; copy the run folder's
summary.json there after a run to publish it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from eaml_ssm.method_names import label

PIPELINE_SUMMARY = Path("docs/results/pipeline/summary.json")


def update_doc(path: Path, name: str, blocks: dict[str, str], prefix: str = "evaluate") -> int:
    """Replace every `<!-- PREFIX:NAME/BLOCK -->` ... `<!-- /PREFIX:NAME/BLOCK -->` span of
    `path` by the rendered block; returns how many were replaced (0 leaves the file as is)."""
    if not path.exists():
        return 0
    text = path.read_text()
    count = 0
    for key, body in blocks.items():
        begin, end = f"<!-- {prefix}:{name}/{key} -->", f"<!-- /{prefix}:{name}/{key} -->"
        start = text.find(begin)
        if start < 0:
            continue
        stop = text.find(end, start)
        if stop < 0:
            raise ValueError(f"{path}: {begin} has no closing {end}")
        text = text[: start + len(begin)] + "\n" + body + "\n" + text[stop:]
        count += 1
    if count:
        path.write_text(text)
    return count


def pipeline_block(summary: dict, source: Path = PIPELINE_SUMMARY) -> str:
    """The README's table of what `python -m eaml_ssm` printed, from its summary.json."""
    from eaml_ssm.adapt_stage import summary_table

    return (
        f"From `{source}` (`python -m eaml_ssm`, {summary['env_name']}, seed {summary['seed']}, "
        f"{summary['wall_seconds']:.1f} s wall time in all):\n\n"
        + summary_table(summary)
        + "\n\n"
        + reduction_line(summary)
    )


def reduction_line(summary: dict) -> str:
    """How much the adapting methods cut the new-task error against no adaptation."""
    rows = summary["methods"]
    base = rows[label("none")]
    adapting = [r for n, r in rows.items() if n.startswith(("GrBAL", "continual", "hybrid"))]
    parts = []
    for split in ("heldout", "ood"):
        key = f"{split} nMSE"
        cuts = [100 * (1 - r[key] / base[key]) for r in adapting]
        parts.append(f"{min(cuts):.0f}-{max(cuts):.0f} % {split}")
    return "Adaptation cuts the new-task error against no adaptation by " + ", ".join(parts) + "."


def render_pipeline(root: Path = Path(".")) -> int:
    """Re-render the README's pipeline summary block; returns the blocks replaced (1)."""
    summary = json.loads((root / PIPELINE_SUMMARY).read_text())
    count = update_doc(root / "README.md", "pipeline", {"summary": pipeline_block(summary)}, "run")
    if count == 0:
        raise ValueError("README.md lacks the <!-- run:pipeline/summary --> block")
    return count


def main(argv: Sequence[str] | None = None) -> int:
    del argv  # no options: one block, one source
    render_pipeline()
    print(f"rendered README.md from {PIPELINE_SUMMARY}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
