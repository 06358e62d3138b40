"""PEP 517 backend of the `eaml-ssm` distribution: a pure-Python wheel that depends on the store.

Two ways to install this repository, and in each exactly one distribution provides the
`rust_buffer` module:

* development (``make setup``, or ``maturin develop --release`` at the repository root): maturin
  reads ``[tool.maturin]`` of pyproject.toml and installs ONE editable distribution,
  ``eaml-ssm``, holding ``eaml_ssm`` and the compiled ``rust_buffer`` module. It does not use
  this file.
* distribution (``pip install .``, ``pip wheel .``, ``python -m build``): this backend builds
  ``eaml-ssm`` as a pure-Python wheel (``eaml_ssm`` only) whose metadata requires the store's
  own distribution, ``rust-buffer`` (``[tool.eaml-ssm] store`` of pyproject.toml), built from
  ``rust_buffer/pyproject.toml`` by maturin: ``rust-buffer`` sits under ``eaml-ssm`` as
  pydantic-core sits under pydantic.

Standard library only (tomllib, zipfile, tarfile).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tarfile
import tomllib
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "eaml_ssm"
_TAG = "py3-none-any"


def _project() -> tuple[dict[str, Any], str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return data["project"], data["tool"]["eaml-ssm"]["store"]


def _dist_name(project: dict[str, Any]) -> str:
    return str(project["name"]).replace("-", "_")


def metadata_text(project: dict[str, Any] | None = None, store: str | None = None) -> str:
    """Core metadata 2.1 of the pure wheel: [project] plus the store requirement."""
    if project is None or store is None:
        project, store = _project()
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {project['name']}",
        f"Version: {project['version']}",
        f"Summary: {project.get('description', '')}",
        f"Requires-Python: {project.get('requires-python', '')}",
        f"License: {project.get('license', {}).get('text', '')}",
    ]
    lines += [f"Requires-Dist: {dep}" for dep in [store, *project.get("dependencies", [])]]
    for extra, deps in project.get("optional-dependencies", {}).items():
        lines.append(f"Provides-Extra: {extra}")
        lines += [f'Requires-Dist: {dep}; extra == "{extra}"' for dep in deps]
    readme = project.get("readme")
    body = (ROOT / readme).read_text() if readme else ""
    lines.append("Description-Content-Type: text/markdown")
    return "\n".join(lines) + "\n\n" + body


def _entry_points(project: dict[str, Any]) -> str:
    scripts = project.get("scripts", {})
    if not scripts:
        return ""
    return "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _write_wheel(wheel_directory: str, files: dict[str, bytes]) -> str:
    project, store = _project()
    dist = _dist_name(project)
    info = f"{dist}-{project['version']}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = metadata_text(project, store).encode()
    files[f"{info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: eaml_ssm_build\nRoot-Is-Purelib: true\nTag: {_TAG}\n"
    ).encode()
    entry = _entry_points(project)
    if entry:
        files[f"{info}/entry_points.txt"] = entry.encode()
    record = [_record_line(n, d) for n, d in files.items()] + [f"{info}/RECORD,,"]
    files[f"{info}/RECORD"] = ("\n".join(record) + "\n").encode()
    name = f"{dist}-{project['version']}-{_TAG}.whl"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w", zipfile.ZIP_DEFLATED) as zf:
        for arcname, data in files.items():
            zf.writestr(zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return name


def _package_files() -> dict[str, bytes]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".typed"):
            out[path.relative_to(ROOT).as_posix()] = path.read_bytes()
    return out


# --- PEP 517 / PEP 660 hooks ---------------------------------------------------------------


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def get_requires_for_build_sdist(config_settings: Any = None) -> list[str]:
    return []


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    return []


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None
) -> str:
    return _write_wheel(wheel_directory, _package_files())


def build_editable(
    wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None
) -> str:
    # a path file: `eaml_ssm` is imported from this checkout
    return _write_wheel(wheel_directory, {"eaml_ssm_editable.pth": f"{ROOT}\n".encode()})


def build_sdist(sdist_directory: str, config_settings: Any = None) -> str:
    project, _ = _project()
    base = f"{_dist_name(project)}-{project['version']}"
    names = ["pyproject.toml", "README.md", "build_backend/eaml_ssm_build.py", *_package_files()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in names:
            data = (ROOT / name).read_bytes()
            info = tarfile.TarInfo(f"{base}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        pkg_info = metadata_text().encode()
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        info.size = len(pkg_info)
        tar.addfile(info, io.BytesIO(pkg_info))
    target = Path(sdist_directory) / f"{base}.tar.gz"
    target.write_bytes(buf.getvalue())
    return os.path.basename(target)
