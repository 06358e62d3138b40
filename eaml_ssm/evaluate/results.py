"""Results of a run folder, and the ones committed to the repository: aggregate saved
per-seed results and write results.json, results.md and the plots (`render`); rebuild them
from a finished or interrupted run (`rerender`); copy a compact results.json under
docs/results and render the docs' marked blocks from it (`publish`)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eaml_ssm.artifacts import RunDir, finite
from eaml_ssm.doc_blocks import update_doc
from eaml_ssm.evaluate.aggregate import aggregate
from eaml_ssm.evaluate.methods import method_grid
from eaml_ssm.evaluate.plots import make_plots
from eaml_ssm.evaluate.report import doc_blocks, duration, report, source_line

DOC_FILES = (Path("README.md"), Path("docs/evaluation.md"))


def render(
    run_dir: RunDir, saved: dict[str, Any], *, plots: bool = True, docs: Sequence[Path] = ()
) -> int:
    """Aggregate saved per-seed results, write results.json/results.md/plots, print them;
    with `docs` (a published docs/results folder), rewrite the marked result blocks of those
    files instead, leaving the committed results.json as it is."""
    agg = _aggregate_saved(saved)
    text = report(agg, f"# Evaluation\n\n{source_line(saved)}")
    if not docs:
        run_dir.write_json("results.json", finite({**saved, "aggregate": agg}))
    (run_dir.path / "results.md").write_text(text)
    if plots:
        make_plots(run_dir, agg)
    for doc in docs:
        update_doc(doc, run_dir.path.name, doc_blocks(agg, saved, run_dir.path))
    print(text)
    print(f"run folder: {run_dir.path}  ({duration(saved['wall_seconds'])})")
    return 0


def _aggregate_saved(saved: dict[str, Any]) -> dict[str, Any]:
    profile = saved["profile"]
    levels = dict(profile["levels"])
    grids = {f: method_grid(levels.get(f, "core")) for f in profile["families"]}
    return aggregate(saved["units"], grids)


def _compact(value: Any) -> Any:
    """Floats to 5 significant digits (the JSON stays small enough to commit)."""
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    return value


def publish(run_path: Path, dest: Path) -> int:
    """Copy a run's per-seed results (compact, without the aggregate: it is recomputed) to
    `dest` (e.g. docs/results/full), render results.md there and the docs' marked blocks."""
    saved = _load_saved(run_path)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(finite(_compact(saved)), indent=0) + "\n")
    return rerender(dest, docs=DOC_FILES, plots=False)


def _load_saved(path: Path) -> dict[str, Any]:
    """The saved per-seed results of a run folder: results.json, or, for an interrupted run,
    config.json and the per-seed work/*/unit.json files."""
    if (path / "results.json").exists():
        saved = json.loads((path / "results.json").read_text())
        saved.pop("aggregate", None)
        return saved
    units = sorted(path.glob("work/*/unit.json"))
    if not (path / "config.json").exists() or not units:
        raise FileNotFoundError(f"--rerender: no results.json (nor config.json + units) in {path}")
    config = json.loads((path / "config.json").read_text())
    return {
        **config,
        "command": config["command"] + f"  (interrupted: {len(units)} units)",
        "wall_seconds": math.nan,
        "load_average": (math.nan, math.nan),
        "units": [json.loads(u.read_text()) for u in units],
    }


def rerender(path: Path, *, docs: Sequence[Path] = (), plots: bool = True) -> int:
    """Re-aggregate a run folder (no training, no streams) from its saved results; with
    `docs`, rewrite their marked blocks (named after the folder) from it."""
    return render(RunDir(path), _load_saved(path), plots=plots, docs=docs)
