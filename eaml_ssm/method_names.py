"""Method names: the short keys of the evaluation's rows and their display labels.

One registry for both names of a method: the evaluation's tables use the keys (`grbal`,
`cont_w0`, `hybn_0.3`, ...; docs/evaluation.md), the pipeline's summary the labels
("GrBAL reset (w=0)", ...), both from here.
"""

from __future__ import annotations

import re

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


__all__ = ["LABELS", "REFERENCE", "hybrid_key", "label"]
