"""Run folders: config, metrics, summary, checkpoints and RNG state.

A run folder holds
    config.json      the full resolved RunConfig
    metrics.jsonl    one JSON object per logged event (meta-training steps, adaptation windows)
    summary.json     the final results table
    checkpoint.pt    model, meta-optimizer, normalizer, RNG states, step (loads with
                     torch.load(weights_only=True))
    store.rbuf       the experience store (when the store supports save), or a reference to it
    plots/*.png      meta-training loss, adaptation curves, error before/after per task
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np

from eaml_ssm.config import resume_free_fields

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


def rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {
        "python": _jsonable(random.getstate()),
        "numpy": _jsonable(np.random.get_state(legacy=False)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = dict(state["numpy"])
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        restore_cuda_rng(list(state["cuda"]), torch.cuda.device_count())


def restore_cuda_rng(states: list[Any], visible: int) -> int:
    """Restore one saved CUDA generator state per device that is visible now; returns how many.

    A run saved on more GPUs than are visible now (resume or `adapt` on a smaller box) keeps
    the states of the devices that exist (``set_rng_state_all`` would raise IndexError);
    devices without a saved state keep their own.
    """
    import torch

    n = min(len(states), visible)
    for i in range(n):
        torch.cuda.set_rng_state(states[i], i)
    if len(states) != visible:
        log.info(
            "CUDA RNG: %d saved states, %d devices visible; restored %d", len(states), visible, n
        )
    return n


def _jsonable(value: Any) -> Any:
    """Tuples -> lists and numpy arrays -> lists, so the state loads with weights_only=True."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.integer):
        return int(value)
    return value


class RunDir:
    """A run folder with append-only metrics and atomic JSON/checkpoint writes."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True) -> None:
        self.path = Path(path)
        if create:  # create=False: read an existing run without writing to it
            self.path.mkdir(parents=True, exist_ok=True)
            (self.path / "plots").mkdir(exist_ok=True)

    @classmethod
    def create(cls, out: str, name: str) -> RunDir:
        return cls(Path(out) / name)

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint.pt"

    def write_json(self, name: str, data: Any) -> Path:
        target = self.path / name
        tmp = target.with_suffix(target.suffix + ".tmp")
        text = json.dumps(finite(data), indent=2, sort_keys=True, default=_json_default)
        tmp.write_text(text + "\n")
        os.replace(tmp, target)
        return target

    def read_json(self, name: str) -> Any:
        """Parse a JSON file of the run; a damaged file raises ValueError naming it."""
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc

    def log_metrics(self, kind: str, **values: Any) -> None:
        row = {"kind": kind, "time": round(time.time(), 3), **values}
        with open(self.path / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(finite(row), default=_json_default) + "\n")

    def _metric_rows(self) -> tuple[list[dict[str, Any]], bool]:
        """(rows of metrics.jsonl, whether a cut-off last line was skipped).

        A run killed mid-write leaves a last line without its newline: that line is skipped
        (with a warning). Any other unreadable line raises ValueError naming file and line.
        """
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return [], False
        text = path.read_text()
        lines = text.split("\n")
        rows, partial = [], False
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                if not isinstance(row, dict) or "kind" not in row:
                    raise ValueError("expected an object with a 'kind' field")
            except ValueError as exc:
                if i == len(lines) and not text.endswith("\n"):
                    log.warning("%s: skipping the cut-off last line %d", path, i)
                    partial = True
                    continue
                raise ValueError(f"{path}:{i}: unreadable metrics line ({exc})") from exc
            rows.append(row)
        return rows, partial

    def read_metrics(self, kind: str | None = None) -> list[dict[str, Any]]:
        rows, _ = self._metric_rows()
        return [r for r in rows if kind is None or r["kind"] == kind]

    def repair_metrics(self) -> None:
        """Drop a cut-off last line, so that new rows start on a line of their own."""
        rows, partial = self._metric_rows()
        if partial:
            self._write_metrics(rows)

    def truncate_metrics(self, kind: str, keep_step_below: int) -> None:
        """Drop `kind` rows logged at or after a step (used when resuming from a checkpoint)."""
        if not (self.path / "metrics.jsonl").exists():
            return
        rows, _ = self._metric_rows()
        kept = [r for r in rows if r["kind"] != kind or r.get("step", -1) < keep_step_below]
        self._write_metrics(kept)

    def _write_metrics(self, rows: list[dict[str, Any]]) -> None:
        path = self.path / "metrics.jsonl"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, path)


def finite(value: Any) -> Any:
    """JSON-ready copy: non-finite floats -> None (strict JSON has no NaN/inf), NumPy scalars
    -> Python, tuples -> lists, keys -> str; recursively."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def fresh_run_dir(out: str | os.PathLike[str], name: str) -> RunDir:
    """A new run folder out/name, or out/name-2, -3, ... if it exists: never overwrites."""
    base = Path(out) / name
    path, n = base, 1
    while path.exists() and any(path.iterdir()):
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return RunDir(path)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write atomically (temp file + rename): a crash leaves the old or the new checkpoint."""
    import torch

    payload = {"format": CHECKPOINT_FORMAT, **payload}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, expected_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load with weights_only=True; refuse a checkpoint written for a different config."""
    import torch

    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a file it cannot unpickle
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({first})") from exc
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: not a run checkpoint (holds a {type(payload).__name__})")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {payload.get('format')!r}, expected {CHECKPOINT_FORMAT}"
        )
    if expected_config is not None:
        diff = config_diff(payload.get("config", {}), expected_config)
        if diff:
            raise ValueError(
                f"{path} was written for a different config; differing fields: "
                + ", ".join(f"{k} (checkpoint {a!r}, now {b!r})" for k, a, b in diff)
            )
    return payload


def config_diff(saved: dict[str, Any], now: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    keys = sorted((set(saved) | set(now)) - resume_free_fields())
    return [(k, saved.get(k), now.get(k)) for k in keys if saved.get(k) != now.get(k)]
