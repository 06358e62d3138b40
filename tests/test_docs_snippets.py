"""Every Python snippet in README.md, docs/*.md and rust_buffer/README.md runs, so none can rot.

Convention (written in the Markdown, on the line right before the opening fence):

* no marker: the block runs as written. The blocks of one file run in order in one namespace
  (a later block may use names an earlier one made), in a fresh temporary folder as the
  working directory.
* ``<!-- snippet: run-folder -->``: the block needs a trained run; it runs with
  ``runs/CartPole-v1-seed0`` in the working directory holding a tiny one (a few meta-steps).
* ``<!-- snippet: illustrative -->``: a sketch with placeholders (shapes of a larger program,
  commands for other machines); it is compiled, to catch syntax errors, but not run.

``python -m pytest tests/test_docs_snippets.py -k README`` runs one file's blocks.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "rust_buffer/README.md"]
FENCE = re.compile(
    r"(?:<!-- snippet: (?P<mark>[\w-]+) -->\n)?```python\n(?P<code>.*?)^```", re.M | re.S
)
MARKS = {None, "run-folder", "illustrative"}


def snippets(path: Path) -> list[tuple[int, str | None, str]]:
    """(line, marker, code) of every ```python block of a Markdown file."""
    text = path.read_text()
    return [
        (text.count("\n", 0, m.start("code")), m.group("mark"), m.group("code"))
        for m in FENCE.finditer(text)
    ]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eaml_ssm.cli import main

    out = tmp_path_factory.mktemp("snippet_runs") / "runs"
    argv = ["train", "--num_tasks", "4", "--meta_batch_size", "2", "--steps_per_task", "150"]
    argv += ["--num_epochs", "2", "--hidden_dim", "16", "--state_dim", "8", "--device", "cpu"]
    assert main([*argv, "--quiet", "--out", str(out), "--name", "CartPole-v1-seed0"]) == 0
    return out


def test_markers_are_known() -> None:
    for path in FILES:
        for line, mark, _ in snippets(path):
            assert mark in MARKS, f"{path.name}:{line}: unknown snippet marker {mark!r}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_snippets_run(
    path: Path, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = snippets(path)
    if not blocks:
        pytest.skip("no Python snippet")
    monkeypatch.chdir(tmp_path)
    if any(mark == "run-folder" for _, mark, _ in blocks):
        os.symlink(request.getfixturevalue("tiny_run"), tmp_path / "runs")
    namespace: dict[str, object] = {"__name__": f"snippets_of_{path.stem}"}
    for line, mark, code in blocks:
        where = f"{path.relative_to(ROOT)}:{line + 1}"
        compiled = compile(code, where, "exec")
        if mark == "illustrative":
            continue
        try:
            exec(compiled, namespace)
        except Exception as exc:
            raise AssertionError(f"the snippet at {where} fails: {exc!r}") from exc
