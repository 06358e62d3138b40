"""End-to-end pipeline: a tiny CLI run writes a complete, valid run folder, reproducibly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_RUN

from eaml_ssm.artifacts import load_checkpoint

TINY = TINY_RUN


# The tiny run uses the default device (auto): on a CUDA machine it trains on the GPU, whose
# kernels need not be bit-reproducible (atomics, algorithm choice): compare with a tolerance
# there, bit for bit on the CPU.
TOL = {"rtol": 1e-4, "atol": 1e-6} if torch.cuda.is_available() else {"rtol": 0, "atol": 0}


def same_methods(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name, row in first.items():
        assert row.keys() == second[name].keys(), name
        for key, value in row.items():
            torch.testing.assert_close(
                torch.tensor(float(value)), torch.tensor(float(second[name][key])), **TOL
            )


def run_cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", *argv], capture_output=True, text=True, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    run_cli(*TINY, "--out", str(out), cwd=out)
    (folder,) = out.iterdir()
    return folder


def test_run_folder_is_complete(tiny_run: Path) -> None:
    for name in ["config.json", "metrics.jsonl", "summary.json", "summary.md", "checkpoint.pt"]:
        assert (tiny_run / name).is_file(), name
    for png in [
        "meta_training_loss.png",
        "adaptation_heldout.png",
        "adaptation_ood.png",
        "before_after_heldout.png",
        "before_after_ood.png",
    ]:
        assert (tiny_run / "plots" / png).stat().st_size > 1000, png
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["num_epochs"] == 4 and config["env_name"] == "CartPole-v1"
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [0, 1, 2, 3]


def test_summary_has_every_method_and_baseline(tiny_run: Path) -> None:
    summary = json.loads((tiny_run / "summary.json").read_text())
    methods = summary["methods"]
    for name in [
        "no adaptation",
        "continual (w=0)",
        "GrBAL reset (w=0)",
        "hybrid (w=0.1)",
        "identity",
        "linear LS (best ridge)",
    ]:
        assert name in methods
        for split in ("heldout", "ood"):
            value = methods[name][f"{split} nMSE"]
            assert isinstance(value, float) and value >= 0.0


def test_checkpoint_loads_with_weights_only_and_is_self_describing(tiny_run: Path) -> None:
    payload = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert payload["step"] == 4
    assert {"model", "maml", "normalizer", "rng", "config", "model_config"} <= set(payload)
    config = json.loads((tiny_run / "config.json").read_text())
    changed = dict(config, hidden_dim=32)
    with pytest.raises(ValueError, match="hidden_dim"):
        load_checkpoint(tiny_run / "checkpoint.pt", changed)


def test_same_seed_twice_gives_the_same_summary(tiny_run: Path, tmp_path: Path) -> None:
    run_cli(*TINY, "--out", str(tmp_path), cwd=tmp_path)
    (again,) = tmp_path.iterdir()
    first = json.loads((tiny_run / "summary.json").read_text())
    second = json.loads((again / "summary.json").read_text())
    same_methods(first["methods"], second["methods"])


def test_resume_continues_to_the_same_result(tiny_run: Path, tmp_path: Path) -> None:
    short = [a if a != "4" or TINY[i - 1] != "--num_epochs" else "2" for i, a in enumerate(TINY)]
    run_cli("train", *short, "--out", str(tmp_path), cwd=tmp_path)
    (folder,) = tmp_path.iterdir()
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == 2
    run_cli("--resume", *TINY, "--out", str(tmp_path), cwd=tmp_path)
    resumed = torch.load(folder / "checkpoint.pt", weights_only=True)
    straight = torch.load(tiny_run / "checkpoint.pt", weights_only=True)
    assert resumed["step"] == 4
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, **TOL)
    first = json.loads((tiny_run / "summary.json").read_text())
    second = json.loads((folder / "summary.json").read_text())
    same_methods(first["methods"], second["methods"])


def test_adapt_needs_a_trained_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", "adapt", *TINY, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "no run" in proc.stderr or "checkpoint" in proc.stderr


def test_stages_run_separately_on_one_folder(tmp_path: Path) -> None:
    """collect, then train and adapt on the saved store (collected once, by worker processes)."""
    args = [*TINY, "--out", str(tmp_path), "--workers", "2", "--episodes_per_task", "6"]
    run_cli("collect", *args, cwd=tmp_path)
    (folder,) = tmp_path.iterdir()
    assert (folder / "store.shared").is_file() and (folder / "tasks.json").is_file()
    run_cli("train", "--resume", *args, cwd=tmp_path)
    step = torch.load(folder / "checkpoint.pt", weights_only=True)["step"]
    # adapt finds the run and its config by itself; it evaluates, it does not train further
    run_cli("adapt", "--out", str(tmp_path), "--experience_weight", "0.3", cwd=tmp_path)
    assert torch.load(folder / "checkpoint.pt", weights_only=True)["step"] == step
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    collects = [r for r in rows if r["kind"] == "collect"]
    assert len(collects) == 1 and collects[0]["episodes"] == 4 * 6
    summary = json.loads((folder / "summary.json").read_text())
    assert "hybrid (w=0.3)" in summary["methods"]
