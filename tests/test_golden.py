"""Golden results: the same seed gives the same numbers as the committed record.

Written before the package was reorganised into one concept per module (issue 12) and kept
unchanged through it: a move that changes what any stage computes fails here. Two records:
the `summary.json` methods of a tiny pipeline run (the CLI's default job at toy size) and
one evaluation unit (`evaluate_unit`: meta-training, the joint reference, every method of
the "sanity" grid on both splits, forgetting probes). Timings are left out; every other
number must match to 1e-5 (relative), on the CPU.

To re-record after a deliberate change of results (say which in the commit):
`EAML_SSM_UPDATE_GOLDEN=1 pytest tests/test_golden.py`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_run import TINY_RUN, tiny_profile

from eaml_ssm import evaluate

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("EAML_SSM_UPDATE_GOLDEN") == "1"
TIMING_KEYS = frozenset({"seconds", "train_seconds", "ms_per_step", "wall_seconds"})
RTOL, ATOL = 1e-5, 1e-8

PIPELINE = [*TINY_RUN, "--device", "cpu"]


def leaves(value: Any, path: str = "") -> dict[str, Any]:
    """path -> scalar for every leaf of a JSON-like value, timings left out."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key not in TIMING_KEYS:
                out.update(leaves(item, f"{path}/{key}"))
        return out
    if isinstance(value, list | tuple):
        out = {}
        for i, item in enumerate(value):
            out.update(leaves(item, f"{path}/{i}"))
        return out
    return {path: value}


def same(path: str, got: Any, want: Any) -> bool:
    if isinstance(want, float) or isinstance(got, float):
        if not isinstance(got, int | float) or not isinstance(want, int | float):
            return False
        g, w = float(got), float(want)
        if math.isnan(w) or math.isnan(g):
            return math.isnan(w) and math.isnan(g)
        return math.isclose(g, w, rel_tol=RTOL, abs_tol=ATOL)
    return bool(got == want)


def check_golden(name: str, record: Any) -> None:
    """Compare ``record`` with tests/golden/<name>.json (or write it, when re-recording)."""
    path = GOLDEN / f"{name}.json"
    got = json.loads(json.dumps(record, default=str))  # the JSON a run folder would hold
    if UPDATE:
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"re-recorded {path}")
    want = json.loads(path.read_text())
    g, w = leaves(got), leaves(want)
    assert sorted(g) == sorted(w), f"fields differ: {sorted(set(g) ^ set(w))[:10]}"
    wrong = [f"{p}: got {g[p]!r}, golden {w[p]!r}" for p in w if not same(p, g[p], w[p])]
    assert not wrong, f"{len(wrong)} of {len(w)} values differ:\n" + "\n".join(wrong[:20])


def test_tiny_pipeline_summary_matches_the_golden_record(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", *PIPELINE, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (folder,) = tmp_path.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    check_golden("pipeline_summary", summary["methods"])


def test_evaluation_unit_matches_the_golden_record(tmp_path: Path) -> None:
    profile = tiny_profile()
    grid = tuple(evaluate.method_grid("sanity"))
    unit = evaluate.Unit("Pendulum-v1", 0, profile, grid, str(tmp_path / "work"))
    check_golden("evaluation_unit", evaluate.evaluate_unit(unit))
