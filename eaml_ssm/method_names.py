"""The adaptation methods the pipeline, the control grid and the evaluation share: their keys,
display labels and settings.

One registry for both names of a method: the evaluation's tables use the keys (`grbal`,
`cont_w0`, `hybn_0.3`, ...; docs/evaluation.md), the pipeline's summary and the control grid
the labels ("GrBAL reset (w=0)", ...). `core_method(key)` is what a core method does (does it
adapt, and the AdaptationConfig fields it sets), `pipeline_keys` the methods the pipeline and
the control grid compare; the evaluation's grid (`eaml_ssm.evaluate.methods`) builds its core
rows from the same `core_method`.
"""

from __future__ import annotations

import re
from typing import Any

REFERENCE = "cont_w0"  # effect sizes are measured against continual w = 0

# Display labels of the keys that are not hybrids (hybrids: `label` builds theirs).
LABELS: dict[str, str] = {
    "none": "no adaptation",
    "grbal": "GrBAL reset (w=0)",
    REFERENCE: "continual (w=0)",
}
_HYBRID_KEY = re.compile(r"hybn_([0-9]+(?:\.[0-9]+)?)(?:_(live|oldonly))?")


def label(key: str) -> str:
    """The display label of method `key`: LABELS; a normalized hybrid `hybn_<w>` is
    "hybrid (w=<w>)", with its replay source (`hybn_<w>_live` / `_oldonly`)
    "hybrid (w=<w>, replay_live=True/False)"; any other key is its own label."""
    if key in LABELS:
        return LABELS[key]
    match = _HYBRID_KEY.fullmatch(key)
    if match is None:
        return key
    w = f"{float(match[1]):g}"
    if match[2] is None:
        return f"hybrid (w={w})"
    return f"hybrid (w={w}, replay_live={match[2] == 'live'})"


def hybrid_key(w: float, replay_live: bool | None = None) -> str:
    """The key of the normalized hybrid of weight ``w`` (with an explicit replay source)."""
    base = f"hybn_{w:g}"
    if replay_live is None:
        return base
    return f"{base}_{'live' if replay_live else 'oldonly'}"


def core_method(key: str) -> tuple[bool, dict[str, Any]]:
    """(adapts?, AdaptationConfig fields) of a core method: `none` (the meta-learned weights,
    no adaptation), `grbal` (reset to them before each update, w = 0), `cont_w0` (continual,
    w = 0) and the normalized hybrids `hybn_<w>` (continual, replay weight w; `_live` /
    `_oldonly`: replay the live stream too, or old tasks only)."""
    if key == "none":
        return False, {}
    if key == "grbal":
        return True, {"mode": "reset", "experience_weight": 0.0}
    if key == REFERENCE:
        return True, {"mode": "continual", "experience_weight": 0.0}
    match = _HYBRID_KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"not a core method: {key!r} (none, grbal, {REFERENCE}, hybn_<w>)")
    fields: dict[str, Any] = {
        "mode": "continual",
        "experience_weight": float(match[1]),
        "normalize": True,
    }
    if match[2] is not None:
        fields["replay_live"] = match[2] == "live"
    return True, fields


def pipeline_keys(w: float, replay_live: bool) -> list[str]:
    """The methods the pipeline's adapt stage and the control grid compare: no adaptation,
    GrBAL, continual w = 0, the hybrid of weight ``w``, and the same hybrid with the other
    replay source than ``replay_live`` (the adapter's default)."""
    return ["none", "grbal", REFERENCE, hybrid_key(w), hybrid_key(w, not replay_live)]


__all__ = ["LABELS", "REFERENCE", "core_method", "hybrid_key", "label", "pipeline_keys"]
