"""Which run folder a command works in: its name, finding an earlier one, opening it.

A fresh run never overwrites a folder (it picks ``<name>-2``, ``-3``, ...); a stage that
continues a run (``adapt``, ``--resume``, or ``--name`` of an existing folder) opens it and
refuses a config that differs from the saved one in anything but the resume-free fields.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eaml_ssm.artifacts import RunDir, config_diff, fresh_run_dir
from eaml_ssm.config import RunConfig, from_dict, to_dict


def run_name(cfg: RunConfig) -> str:
    return cfg.name or f"{cfg.env_name}-seed{cfg.seed}"


def named_run(cfg: RunConfig) -> Path | None:
    """out/name when --name names a run folder that an earlier stage wrote, else None."""
    if not cfg.name:
        return None
    path = Path(cfg.out) / cfg.name
    return path if (path / "config.json").exists() else None


def existing_run(cfg: RunConfig) -> Path:
    """The folder an `adapt` or `--resume` works in: --name, else the newest default-named one."""
    base = Path(cfg.out) / run_name(cfg)
    candidates = [base] if cfg.name else [base, *base.parent.glob(f"{base.name}-*")]
    found = [p for p in candidates if (p / "config.json").exists()]
    if not found:
        raise FileNotFoundError(f"no run at {base} (looked for config.json); pass --out/--name")
    return max(found, key=lambda p: (p / "config.json").stat().st_mtime)


def saved_config(path: Path) -> RunConfig:
    """The config.json of a run folder; a damaged one raises ValueError naming the file."""
    data = RunDir(path, create=False).read_json("config.json")
    try:
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        return from_dict(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path / 'config.json'}: {exc}") from exc


def checkpoint_config(ck: dict[str, Any], path: Path) -> RunConfig:
    """The RunConfig saved in a run checkpoint (errors name the file)."""
    try:
        return from_dict(dict(ck["config"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: no valid run config in the checkpoint ({exc})") from exc


def open_run(cfg: RunConfig, resume: bool) -> RunDir:
    """The run folder; a fresh run never overwrites an existing one (it picks a new name)."""
    if resume:
        path = existing_run(cfg)
        diff = config_diff(to_dict(saved_config(path)), to_dict(cfg))
        if diff:
            raise ValueError(
                f"{path} was run with a different config (continue it with the same values, "
                "or pick another --name): "
                + ", ".join(f"{k} (saved {a!r}, now {b!r})" for k, a, b in diff)
            )
        run = RunDir(path)
        run.repair_metrics()
        return run
    return fresh_run_dir(cfg.out, run_name(cfg))
