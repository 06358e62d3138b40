"""`import rust_buffer` works on its own, from any directory, without torch/gymnasium/eaml_ssm."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

PROBE = """
import json, sys
import numpy as np
import rust_buffer
store = rust_buffer.RingBuffer(16, 3, 2, seed=0)
store.add(np.ones((4, 3)), np.zeros((4, 2)), task_id=1, episode_id=0, step=np.arange(4))
obs, target = store.sample(4)
seqs = store.sample_sequences(2, 3)
tasks = store.sample_tasks(1, 2, 2)
view = store.obs_view()
print(json.dumps({
    "file": rust_buffer.__file__,
    "shapes": [list(obs.shape), list(target.shape), list(seqs[0].shape), list(view.shape)],
    "heavy": [m for m in ("torch", "gymnasium", "eaml_ssm") if m in sys.modules],
}))
"""


def run_isolated(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # -I: no cwd on sys.path, no PYTHONPATH, no user site; only the installed packages.
    return subprocess.run(
        [sys.executable, "-I", "-c", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_import_rust_buffer_standalone(tmp_path: Path) -> None:
    proc = run_isolated(PROBE, tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], f"import rust_buffer pulled in {report['heavy']}"
    assert report["shapes"] == [[4, 3], [4, 2], [2, 3, 3], [4, 3]]
    assert not Path(report["file"]).is_relative_to(tmp_path)


def test_import_eaml_ssm_from_elsewhere(tmp_path: Path) -> None:
    proc = run_isolated("import eaml_ssm, rust_buffer; print(eaml_ssm.__name__)", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("eaml_ssm")
