"""Seed statistics for the evaluation tables: means, 95% confidence intervals, effect sizes.

A result over seeds is summarized as ``mean ± half-width`` of the two-sided 95% Student-t
interval of the mean: ``t(0.975, n-1) * s / sqrt(n)`` with ``s`` the sample standard deviation
(``ddof=1``). Non-finite values (a diverged run) are left out of the mean and counted.

Effect sizes follow the calibration study (shared/research/hybrid-feasibility.md):
    change of new-task error     mean(new) / mean(new_ref) - 1          (negative = better)
    forgetting reduction         1 - mean(F) / mean(F_ref)              (n/a if F_ref <= 1e-4)
    adaptation gain              1 - mean(new) / mean(new_none)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Two-sided 95% Student-t quantiles t(0.975, df) for df = 1..30; beyond that the normal 1.96
# is within 2 % (no scipy dependency).
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

MIN_FORGETTING = 1e-4  # below this the reference forgetting is noise: no reduction ratio


def t_quantile_975(df: int) -> float:
    """t(0.975, df): the multiplier of the standard error for a two-sided 95% interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else 1.96


@dataclass(frozen=True)
class Summary:
    """Seed summary of one metric."""

    mean: float  # mean over the finite values (nan if none)
    ci95: float  # half-width of the 95% CI (nan with fewer than 2 finite values)
    n: int  # finite values
    n_bad: int  # non-finite values (diverged runs)

    def format(self, digits: int = 4) -> str:
        if self.n == 0:
            return "diverged" if self.n_bad else "-"
        text = f"{self.mean:.{digits}f}"
        if math.isfinite(self.ci95):
            text += f" ± {self.ci95:.{digits}f}"
        return text

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci95": self.ci95, "n": self.n, "n_bad": self.n_bad}


def summarize(values: Sequence[float]) -> Summary:
    """Mean and 95% CI half-width over seeds, ignoring (and counting) non-finite values."""
    arr = np.asarray(list(values), dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    n, bad = int(finite.size), int(arr.size - finite.size)
    if n == 0:
        return Summary(math.nan, math.nan, 0, bad)
    mean = float(finite.mean())
    if n < 2:
        return Summary(mean, math.nan, n, bad)
    half = t_quantile_975(n - 1) * float(finite.std(ddof=1)) / math.sqrt(n)
    return Summary(mean, half, n, bad)


def _finite_mean(values: Sequence[float]) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    return float(arr.mean()) if arr.size else math.nan


def relative_change(values: Sequence[float], reference: Sequence[float]) -> float:
    """mean(values) / mean(reference) - 1 (nan if either mean is missing or ref is 0)."""
    a, b = _finite_mean(values), _finite_mean(reference)
    if not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return math.nan
    return a / b - 1.0


def reduction(values: Sequence[float], reference: Sequence[float]) -> float:
    """1 - mean(values) / mean(reference); nan when the reference is <= MIN_FORGETTING."""
    a, b = _finite_mean(values), _finite_mean(reference)
    if not (math.isfinite(a) and math.isfinite(b)) or b <= MIN_FORGETTING:
        return math.nan
    return 1.0 - a / b


def pass_count(
    new: Sequence[float],
    forget: Sequence[float],
    new_ref: Sequence[float],
    forget_ref: Sequence[float],
    *,
    min_reduction: float = 0.5,
    max_new_ratio: float = 1.1,
) -> int:
    """Seeds where forgetting fell by >= `min_reduction` and new error rose <= `max_new_ratio`.

    Paired by position (seed i against seed i of the reference); a seed whose reference
    forgetting is <= MIN_FORGETTING cannot pass.
    """
    lengths = {len(new), len(forget), len(new_ref), len(forget_ref)}
    if len(lengths) != 1:
        raise ValueError(f"pass_count needs equal-length per-seed lists, got lengths {lengths}")
    count = 0
    for n, f, n0, f0 in zip(new, forget, new_ref, forget_ref, strict=True):
        if not all(math.isfinite(v) for v in (n, f, n0, f0)) or f0 <= MIN_FORGETTING:
            continue
        if 1.0 - f / f0 >= min_reduction and n <= max_new_ratio * n0:
            count += 1
    return count


def percent(value: float) -> str:
    """A ratio as a signed percentage for tables ('n/a' when undefined)."""
    return "n/a" if not math.isfinite(value) else f"{100 * value:+.0f} %"


__all__ = [
    "MIN_FORGETTING",
    "Summary",
    "pass_count",
    "percent",
    "reduction",
    "relative_change",
    "summarize",
    "t_quantile_975",
]
