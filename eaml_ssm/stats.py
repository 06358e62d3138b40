"""Seed statistics for the evaluation tables: means, 95% confidence intervals, effect sizes.

A result over seeds is summarized as ``mean ± half-width`` of the two-sided 95% Student-t
interval of the mean: ``t(0.975, n-1) * s / sqrt(n)`` with ``s`` the sample standard deviation
(``ddof=1``). Non-finite values (a diverged run) are left out of the mean and counted.

Claims compare a method with a reference *per seed* (each seed is an independent unit: its
own training tasks and test tasks), so the interval that matters is the one of the paired
differences ``value_i - reference_i`` (`paired`), reported with their median (one seed can
dominate a mean); ratios are geometric means of the per-seed ratios with the interval taken
on the log scale (`ratio`).

Effect sizes follow the calibration study (shared/research/hybrid-feasibility.md):
    change of new-task error     mean(new) / mean(new_ref) - 1          (negative = better)
    forgetting reduction         1 - mean(F) / mean(F_ref)              (n/a if F_ref <= 1e-4)
    adaptation gain              1 - mean(new) / mean(new_none)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Summary:
        """The inverse of `to_dict`; None (a non-finite value in saved JSON) reads as NaN."""

        def num(v: Any) -> float:
            return math.nan if v is None else float(v)

        return cls(num(d["mean"]), num(d["ci95"]), int(d["n"]), int(d["n_bad"]))

    def format(self, digits: int = 4) -> str:
        """`mean ± ci` at `digits` decimals ("diverged" / "-" when no value is finite)."""
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


def _pairs(values: Sequence[float], reference: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(list(values), dtype=np.float64)
    b = np.asarray(list(reference), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(
            f"paired statistics need one value per seed on both sides, got {a.size} and {b.size}"
        )
    ok = np.isfinite(a) & np.isfinite(b)
    return a[ok], b[ok]


@dataclass(frozen=True)
class Paired:
    """Per-seed differences value - reference: mean, 95% CI, median, and the seed count."""

    mean: float
    ci95: float
    median: float
    n: int  # seeds where both values are finite
    n_bad: int  # seeds left out (either side non-finite)

    @property
    def excludes_zero(self) -> bool:
        """The 95% interval lies entirely on one side of 0 (needs >= 2 seeds)."""
        return math.isfinite(self.ci95) and abs(self.mean) > self.ci95

    def to_dict(self) -> dict[str, float | int | bool]:
        return {
            "mean": self.mean,
            "ci95": self.ci95,
            "median": self.median,
            "n": self.n,
            "n_bad": self.n_bad,
            "excludes_zero": self.excludes_zero,
        }


def paired(values: Sequence[float], reference: Sequence[float]) -> Paired:
    """Summary of the per-seed differences `values[i] - reference[i]` (position = seed)."""
    a, b = _pairs(values, reference)
    total = len(list(values))
    d = a - b
    s = summarize(d.tolist())
    median = float(np.median(d)) if d.size else math.nan
    return Paired(s.mean, s.ci95, median, s.n, total - s.n)


@dataclass(frozen=True)
class Ratio:
    """Geometric mean of per-seed ratios value / reference, with a 95% CI (log scale)."""

    gmean: float
    low: float
    high: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"gmean": self.gmean, "low": self.low, "high": self.high, "n": self.n}


def ratio(values: Sequence[float], reference: Sequence[float]) -> Ratio:
    """exp(mean(log(v_i / r_i))) over seeds with both values finite and positive."""
    a, b = _pairs(values, reference)
    ok = (a > 0) & (b > 0)
    logs = np.log(a[ok] / b[ok])
    if logs.size == 0:
        return Ratio(math.nan, math.nan, math.nan, 0)
    s = summarize(logs.tolist())
    half = s.ci95 if math.isfinite(s.ci95) else math.nan
    return Ratio(math.exp(s.mean), math.exp(s.mean - half), math.exp(s.mean + half), s.n)


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
    "Paired",
    "Ratio",
    "Summary",
    "paired",
    "pass_count",
    "percent",
    "ratio",
    "reduction",
    "relative_change",
    "summarize",
    "t_quantile_975",
]
