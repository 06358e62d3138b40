"""References every adapted SSM is judged against, scored on the whole-stream windows.

* ``identity``   the state does not change;
* ``linear``     ridge least squares on the task's whole past (a growing window): window k of
                 task t is predicted by a fit on every earlier row of task t; the first window
                 after a switch (no rows of the new task yet) by the previous task's fit, the
                 stale-weights situation a continual learner is in;
* ``ridge_prior`` least squares shrunk toward a global fit of the meta-training store (a
                 meta-learned linear prior): on the task's past rows, the global fit itself at
                 a switch;
* the jointly trained SSM without adaptation (``J_none``, zero-shot) runs as a method row in
  `eaml_ssm.evaluate` because it is a neural model.

The ridge of each linear reference is the best of a grid chosen on the stream itself, which
favours the reference (a claim against it is conservative). Everything runs on the
store-normalized inputs and targets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from eaml_ssm.baselines import LinearModel, fit_ridge, fit_ridge_toward
from eaml_ssm.features import Normalizer
from eaml_ssm.protocol import best_ridge, identity_windows, nmse
from eaml_ssm.stream_scoring import WholeStream

GROWING_RIDGES = (1e-3, 0.1, 1.0, 10.0)
PRIOR_RIDGES = (1.0, 10.0, 100.0, 1000.0)  # in rows: 100 means "as much as ~100 rows"
PRIOR_ROWS = 50_000  # rows of the store used for the global fit (a deterministic stride)


def _task_rows(whole: WholeStream, k: int) -> slice:
    """Rows the growing window may use for window k: the task's rows before window k, or the
    whole previous task at a switch."""
    m, t = whole.m, whole.task_of(k)
    start = whole.starts[t]
    if k > start:
        return slice(start * m, k * m)
    return slice(whole.starts[t - 1] * m, start * m)


def growing_linear_errors(whole: WholeStream, ridge: float) -> list[float]:
    """Ridge least squares on the task's whole past (see the module doc), per window."""
    data, m = whole.data, whole.m
    out = []
    for k, _, _ in whole.scored():
        rows = _task_rows(whole, k)
        fit = fit_ridge(data.x[rows], data.y[rows], ridge)
        cur = slice(k * m, (k + 1) * m)
        out.append(nmse(fit.predict(data.x[cur]), data.y[cur]))
    return out


def global_fit(store: Any, norm: Normalizer, ridge: float = 1e-3) -> LinearModel:
    """One ridge fit over (a stride of) the meta-training store, in normalized space."""
    obs, tgt = np.asarray(store.obs_view()), np.asarray(store.target_view())
    if obs.shape[0] == 0:
        raise ValueError("global_fit needs a non-empty store")
    stride = max(1, obs.shape[0] // PRIOR_ROWS)
    x = norm.normalize_inputs(torch.from_numpy(np.array(obs[::stride], dtype=np.float32)))
    y = norm.normalize_targets(torch.from_numpy(np.array(tgt[::stride], dtype=np.float32)))
    return fit_ridge(x, y, ridge)


def ridge_prior_errors(whole: WholeStream, prior: LinearModel, ridge: float) -> list[float]:
    """Least squares on the task's past rows shrunk toward `prior`; the prior at a switch."""
    data, m = whole.data, whole.m
    out = []
    for k, task, first in whole.scored():
        start = whole.starts[task] * m
        rows = slice(start, start) if first else slice(start, k * m)
        fit = fit_ridge_toward(data.x[rows], data.y[rows], prior, ridge)
        cur = slice(k * m, (k + 1) * m)
        out.append(nmse(fit.predict(data.x[cur]), data.y[cur]))
    return out


def reference_rows(
    whole: WholeStream, norm: Normalizer, prior: LinearModel | None
) -> dict[str, dict[str, Any]]:
    """Per-window errors and their mean for every linear/identity reference."""
    identity = identity_windows(whole.data, whole.m, norm)  # every scored window
    rows: dict[str, dict[str, Any]] = {"identity": {"curve": identity}}
    ridge, errs = best_ridge(growing_linear_errors, GROWING_RIDGES, whole)
    rows["linear"] = {"curve": errs, "ridge": ridge}
    if prior is not None:
        ridge, errs = best_ridge(ridge_prior_errors, PRIOR_RIDGES, whole, prior)
        rows["ridge_prior"] = {"curve": errs, "ridge": ridge}
    for row in rows.values():
        row["new"] = float(np.mean(row["curve"]))
    return rows


__all__ = [
    "GROWING_RIDGES",
    "PRIOR_RIDGES",
    "global_fit",
    "growing_linear_errors",
    "reference_rows",
    "ridge_prior_errors",
]
