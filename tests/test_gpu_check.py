"""benchmarks/gpu_check.py: its logic runs on the CPU (--dry-run), and it fails without CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_check


def test_dry_run_runs_every_section_on_the_cpu(tmp_path: Path) -> None:
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--skip", "resume"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 0 and report["ok"] and report["dry_run"]
    sections = report["sections"]
    assert set(sections) >= {"cuda_tests", "meta_train", "adapt", "h2d", "loader_stress"}
    assert sections["cuda_tests"]["collected"] >= 5  # the gpu-marked tests exist
    for kind in ("feed x1", "naive x1", "feed x4", "naive x4"):
        assert sections["meta_train"][kind]["steps_per_s"] > 0
        assert 0 <= sections["meta_train"][kind]["data_wait_share"] <= 1
        assert sections["adapt"][kind]["update_step_ms"] > 0
    assert sections["loader_stress"]["cpu pinned=False"]["bad"] == 0
    assert "# GPU check (dry run on CPU): PASS" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without CUDA")
def test_without_cuda_the_check_fails_instead_of_skipping(tmp_path: Path) -> None:
    assert gpu_check.main(["no-such.whl", "--out", str(tmp_path)]) == 1
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert not report["ok"] and "CUDA is not available" in report["sections"]["cuda"]["error"]


def test_unknown_sections_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--dry-run", "--out", str(tmp_path), "--skip", "nope"])
