"""Every evaluation number in README.md and docs/evaluation.md is rendered by the code from a
results file committed under docs/results (none typed by hand, none stale)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from eaml_ssm import evaluate

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["full", "quick", "steps"])
def test_committed_docs_equal_a_rerender_of_committed_results(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for doc in evaluate.DOC_FILES:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / doc, tmp_path / doc)
    results = Path("docs/results") / name
    (tmp_path / results).mkdir(parents=True)
    shutil.copy(ROOT / results / "results.json", tmp_path / results / "results.json")
    monkeypatch.chdir(tmp_path)
    assert evaluate.rerender(results, docs=evaluate.DOC_FILES, plots=False) == 0
    for doc in evaluate.DOC_FILES:
        assert (tmp_path / doc).read_text() == (ROOT / doc).read_text(), f"{doc} is stale"
    committed_md = (ROOT / results / "results.md").read_text()
    assert (tmp_path / results / "results.md").read_text() == committed_md
