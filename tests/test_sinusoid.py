"""Tests of the sinusoid benchmark: task sampler, statistics, determinism, CLI, and a short run."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest
import torch

from eaml_ssm import sinusoid
from eaml_ssm.sinusoid import SinusoidConfig, draw_sinusoids, run_benchmark, summarize

# One torch thread: with 2 threads on the shared 2-core machine, contention makes OpenMP
# spin-waits dominate (a 3 s test took 66 s); the Makefile also sets OMP_NUM_THREADS=1.
torch.set_num_threads(1)


def test_draw_sinusoids_shapes_and_ranges() -> None:
    batch = draw_sinusoids(500, 10, 7, torch.Generator().manual_seed(0))
    assert batch.support_x.shape == (500, 10, 1) and batch.query_y.shape == (500, 7, 1)
    x = torch.cat((batch.support_x, batch.query_x), dim=1)
    y = torch.cat((batch.support_y, batch.query_y), dim=1)
    assert x.min() >= -5.0 and x.max() <= 5.0
    assert y.abs().max() <= 5.0
    # each task is one sinusoid: amplitude in [0.1, 5] bounds every |y| of that task
    assert (y.abs().amax(dim=(1, 2)) > 0.0).all()


def test_summarize_matches_formula_and_flags_nonfinite() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 4.0])
    got = summarize(values)
    sd = math.sqrt(sum((v - 2.5) ** 2 for v in (1, 2, 3, 4)) / 3)
    assert got["mean"] == pytest.approx(2.5)
    assert got["ci95"] == pytest.approx(1.96 * sd / 2.0)
    assert got["nonfinite"] == 0
    bad = summarize(torch.tensor([1.0, float("inf"), float("nan"), 2.0]))
    assert bad["nonfinite"] == 2 and math.isnan(bad["mean"])


def _tiny(**kw: object) -> SinusoidConfig:
    base = {"iterations": 30, "meta_batch": 5, "eval_tasks": 20, "eval_steps": 2}
    return SinusoidConfig(**{**base, **kw})  # type: ignore[arg-type]


def test_same_seed_same_results_and_engines_agree() -> None:
    a = run_benchmark(_tiny(), ("maml",), quiet=True)["maml"]["curves"]
    b = run_benchmark(_tiny(), ("maml",), quiet=True)["maml"]["curves"]
    assert a == b  # bit-identical across runs
    loop = run_benchmark(_tiny(engine="loop"), ("maml",), quiet=True)["maml"]["curves"]
    for c_vm, c_loop in zip(a["alpha=0.01"], loop["alpha=0.01"], strict=True):
        assert c_vm["mean"] == pytest.approx(c_loop["mean"], rel=1e-4)


def test_cli_writes_results_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    sinusoid.add_arguments(parser)
    out = tmp_path / "res.json"
    args = parser.parse_args(
        ["--iterations", "5", "--meta_batch", "3", "--eval_tasks", "10", "--out", str(out)]
    )
    assert sinusoid.run(args) == 0
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"maml", "metasgd", "pretrain"}
    assert report["config"]["eval_tasks"] == 10
    curve = report["methods"]["maml"]["curves"]["alpha=0.01"]
    assert [c["steps"] for c in curve] == list(range(11))
    assert "| maml (alpha=0.01)" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--iterations must be >= 1"):
        sinusoid.run(parser.parse_args(["--iterations", "0", "--out", str(out)]))


def test_short_maml_run_clearly_beats_no_adaptation() -> None:
    """CI gate: ~2k meta-iterations (a few seconds) reach 10-step MSE near 0.4 (ref: 0.41-0.42)."""
    cfg = SinusoidConfig(iterations=2000, eval_tasks=300)
    curve = run_benchmark(cfg, ("maml",), quiet=True)["maml"]["curves"]["alpha=0.01"]
    before, after = curve[0]["mean"], curve[10]["mean"]
    assert after < 0.6
    assert after < 0.25 * before
