"""The README's rendered blocks equal what the code renders from the committed results."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eaml_ssm import doc_blocks

ROOT = Path(__file__).resolve().parents[1]


def test_readme_pipeline_block_is_rendered_from_the_committed_summary(tmp_path: Path) -> None:
    (tmp_path / "docs/results/pipeline").mkdir(parents=True)
    shutil.copy(ROOT / doc_blocks.PIPELINE_SUMMARY, tmp_path / doc_blocks.PIPELINE_SUMMARY)
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    assert doc_blocks.render_pipeline(tmp_path) == 1
    assert (tmp_path / "README.md").read_text() == (ROOT / "README.md").read_text()


def test_update_doc_replaces_marked_blocks_and_names_an_unclosed_one(tmp_path: Path) -> None:
    doc = tmp_path / "d.md"
    doc.write_text("a\n<!-- p:n/k -->\nold\n<!-- /p:n/k -->\nb\n")
    assert doc_blocks.update_doc(doc, "n", {"k": "new", "other": "x"}, "p") == 1
    assert doc.read_text() == "a\n<!-- p:n/k -->\nnew\n<!-- /p:n/k -->\nb\n"
    doc.write_text("<!-- p:n/k -->\nno end\n")
    with pytest.raises(ValueError, match="no closing"):
        doc_blocks.update_doc(doc, "n", {"k": "new"}, "p")
    assert doc_blocks.update_doc(tmp_path / "missing.md", "n", {"k": "x"}, "p") == 0


def test_reduction_line_is_computed_from_the_rows() -> None:
    summary = {
        "methods": {
            "no adaptation": {"heldout nMSE": 1.0, "ood nMSE": 2.0},
            "continual (w=0)": {"heldout nMSE": 0.5, "ood nMSE": 0.2},
            "hybrid (w=0.1)": {"heldout nMSE": 0.25, "ood nMSE": 1.0},
            "identity": {"heldout nMSE": 9.0, "ood nMSE": 9.0},
        }
    }
    line = doc_blocks.reduction_line(summary)
    assert line.endswith("by 50-75 % heldout, 50-90 % ood.")
