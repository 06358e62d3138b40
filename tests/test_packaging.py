"""Packaging: the store installs on its own (NumPy only), eaml-ssm depends on it, one provider.

The slow test builds the store's wheel with `maturin build --release` (as a user would, from
rust_buffer/), installs it into a fresh virtual environment that has NumPy and nothing else,
and runs a smoke test there; then it adds the pure eaml-ssm wheel and checks that exactly one
installed distribution provides the `rust_buffer` module. It needs PyPI (or pip's cache) for
NumPy, and the Rust toolchain.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "build_backend"))
import eaml_ssm_build  # noqa: E402

SMOKE = r"""
import importlib.metadata as md, importlib.util, json
import numpy as np
import rust_buffer
store = rust_buffer.RingBuffer(16, 3, 2, seed=0)
store.add(np.arange(15, dtype=np.float32).reshape(5, 3), np.ones((5, 2), np.float32))
obs, tgt = store.sample(4)
providers = sorted(
    d.metadata["Name"] for d in md.distributions()
    if any(str(f) == "rust_buffer/__init__.py" for f in (d.files or []))
)
print(json.dumps({
    "len": len(store), "obs": list(obs.shape), "rows_ok": bool((obs[:, 1] == obs[:, 0] + 1).all()),
    "version": rust_buffer.__version__, "torch": importlib.util.find_spec("torch") is not None,
    "providers": providers,
}))
"""


def _store_version() -> str:
    cargo = tomllib.loads((ROOT / "rust_buffer" / "bindings" / "Cargo.toml").read_text())
    return str(cargo["package"]["version"])


def test_versions_and_the_store_requirement_agree() -> None:
    """eaml-ssm pins the store version that rust_buffer/bindings/Cargo.toml builds."""
    project, store = eaml_ssm_build._project()
    assert store == f"rust-buffer=={_store_version()}"
    store_project = tomllib.loads((ROOT / "rust_buffer" / "pyproject.toml").read_text())
    assert store_project["project"]["name"] == "rust-buffer"
    assert store_project["project"]["dependencies"] == ["numpy>=1.26"]  # NumPy only
    assert "torch" not in json.dumps(store_project)
    assert project["name"] == "eaml-ssm"


def test_pure_wheel_holds_eaml_ssm_only_and_requires_the_store(tmp_path: Path) -> None:
    name = eaml_ssm_build.build_wheel(str(tmp_path))
    assert name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(tmp_path / name) as zf:
        names = zf.namelist()
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        record = zf.read(next(n for n in names if n.endswith(".dist-info/RECORD"))).decode()
    assert "eaml_ssm/cli.py" in names and "eaml_ssm/py.typed" in names
    assert not any(n.startswith("rust_buffer/") for n in names)
    assert f"Requires-Dist: rust-buffer=={_store_version()}" in meta.splitlines()
    assert "Requires-Dist: torch>=2.4" in meta.splitlines()
    assert all(n in record for n in names)


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cargo") is None, reason="needs the Rust toolchain")
@pytest.mark.skipif(importlib.util.find_spec("maturin") is None, reason="needs maturin")
def test_store_wheel_installs_alone_with_numpy_only(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--out", str(wheels)],
        cwd=ROOT / "rust_buffer",
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("rust_buffer-*.whl")
    assert re.match(rf"rust_buffer-{re.escape(_store_version())}-cp311-abi3-", wheel.name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = _venv_python(venv)
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, str(wheel)], check=True)  # pulls NumPy, its only dependency
    run = subprocess.run(
        [str(py), "-c", SMOKE], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    out = json.loads(run.stdout)
    assert out == {
        "len": 5,
        "obs": [4, 3],
        "rows_ok": True,
        "version": _store_version(),
        "torch": False,
        "providers": ["rust-buffer"],
    }
    # eaml-ssm on top (its own dependencies left out: torch is not needed for this check)
    pure = eaml_ssm_build.build_wheel(str(wheels))
    subprocess.run([*pip, "--no-deps", str(wheels / pure)], check=True)
    run = subprocess.run(
        [str(py), "-c", SMOKE], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert json.loads(run.stdout)["providers"] == ["rust-buffer"]
