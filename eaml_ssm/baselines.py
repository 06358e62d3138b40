"""Reference predictors every learned model is reported beside.

* identity: the state does not change (raw delta = 0; in normalized target space that is
  ``-target_mean / target_std``, see `identity_predict`).
* ridge linear least squares on (state, action-encoding) -> change of state, with an
  unpenalized intercept: one fit per task (`fit_per_task`) or one fit per window
  (`fit_ridge` on batched support sets, as in few-shot evaluation).

Everything accepts NumPy arrays or torch tensors and returns torch tensors (float32, on the
input's device); the solves run in float64.

Shapes: see the glossary in eaml_ssm/__init__.py (``w`` windows, or tasks, fitted together).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from eaml_ssm.features import Normalizer

RIDGES = (1e-3, 0.1, 1.0, 10.0)  # the grid the feasibility study reported the best of


def _tensor(x: Any, what: str) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if not torch.is_floating_point(t):
        t = t.to(torch.float32)
    if t.ndim not in (2, 3):
        raise ValueError(f"{what} must be (n, d) or (w, n, d), got shape {tuple(t.shape)}")
    return t


def identity_predict(x: Any, target_dim: int, normalizer: Normalizer | None = None) -> torch.Tensor:
    """Predicted change of state for 'nothing changes': (..., o).

    Raw space: zeros. With `normalizer`: the normalized value of a zero change.
    """
    t = _tensor(x, "x")
    lead = tuple(t.shape[:-1])
    zero = torch.zeros((*lead, target_dim), dtype=torch.float32, device=t.device)
    if normalizer is None:
        return zero
    return normalizer.normalize_targets(zero.to(normalizer.device)).to(t.device)


@dataclass(frozen=True)
class LinearModel:
    """y = x @ weight + bias; weight (d, o) or (w, d, o), bias (o,) or (w, 1, o)."""

    weight: torch.Tensor
    bias: torch.Tensor

    def predict(self, x: Any) -> torch.Tensor:
        """x (n, d) or (w, n, d) -> (n, o) or (w, n, o), float32."""
        t = _tensor(x, "x").to(self.weight.device, torch.float64)
        if t.shape[-1] != self.weight.shape[-2]:
            raise ValueError(f"x has {t.shape[-1]} columns, the fit used {self.weight.shape[-2]}")
        return (t @ self.weight + self.bias).to(torch.float32)


def fit_ridge(x: Any, y: Any, ridge: float = 1e-3) -> LinearModel:
    """Ridge least squares with an unpenalized intercept, on (n, d) or batched (w, n, d).

    Solves (Xc^T Xc + ridge I) W = Xc^T Yc on centred data; bias = mean(y) - mean(x) W.
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    xt = _tensor(x, "x").to(torch.float64)  # (w?, n, d)
    yt = _tensor(y, "y").to(xt.device, torch.float64)  # (w?, n, o)
    if xt.ndim != yt.ndim or xt.shape[:-1] != yt.shape[:-1]:
        raise ValueError(f"x {tuple(xt.shape)} and y {tuple(yt.shape)} need the same rows")
    if xt.shape[-2] < 1:
        raise ValueError("need at least one row to fit")
    xm = xt.mean(dim=-2, keepdim=True)  # (w?, 1, d)
    ym = yt.mean(dim=-2, keepdim=True)  # (w?, 1, o)
    xc, yc = xt - xm, yt - ym
    gram = xc.transpose(-1, -2) @ xc  # (w?, d, d)
    eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
    # lstsq (not solve): ridge = 0 with collinear columns (e.g. a one-hot) stays defined.
    weight = torch.linalg.lstsq(gram + ridge * eye, xc.transpose(-1, -2) @ yc).solution
    bias = ym - xm @ weight  # (w?, 1, o)
    return LinearModel(weight=weight, bias=bias.squeeze(-2) if xt.ndim == 2 else bias)


def fit_ridge_toward(x: Any, y: Any, prior: LinearModel, ridge: float) -> LinearModel:
    """Least squares shrunk toward `prior` (a global fit): the weights and the intercept minimize
    ||[X 1] W - Y||^2 + ridge ||W - W_prior||^2 on (n, d) rows. With no rows (n = 0) or a
    huge ridge it returns the prior; with ridge 0 it is ordinary least squares.
    """
    if not ridge >= 0:
        raise ValueError(f"ridge must be >= 0, got {ridge}")
    if prior.weight.ndim != 2:
        raise ValueError("fit_ridge_toward needs an unbatched prior (d, o)")
    xt = _tensor(x, "x").to(prior.weight.device, torch.float64)  # (n, d)
    yt = _tensor(y, "y").to(prior.weight.device, torch.float64)  # (n, o)
    if xt.ndim != 2 or yt.ndim != 2 or xt.shape[0] != yt.shape[0]:
        raise ValueError(f"need x (n, d) and y (n, o), got {tuple(xt.shape)}, {tuple(yt.shape)}")
    if xt.shape[1] != prior.weight.shape[0] or yt.shape[1] != prior.weight.shape[1]:
        raise ValueError(
            f"x {tuple(xt.shape)} / y {tuple(yt.shape)} do not match the prior's weight "
            f"{tuple(prior.weight.shape)}"
        )
    w0 = torch.cat([prior.weight, prior.bias.reshape(1, -1)]).to(torch.float64)  # (d+1, o)
    if xt.shape[0] == 0:
        return prior
    xa = torch.cat([xt, torch.ones_like(xt[:, :1])], dim=1)  # (n, d+1)
    eye = torch.eye(xa.shape[1], dtype=xa.dtype, device=xa.device)
    weight = torch.linalg.lstsq(xa.T @ xa + ridge * eye, xa.T @ yt + ridge * w0).solution
    return LinearModel(weight=weight[:-1], bias=weight[-1])


def fit_per_task(x: Any, y: Any, task_ids: Any, ridge: float = 1e-3) -> dict[int, LinearModel]:
    """One ridge fit per task id over flat rows x (n, d), y (n, o), task_ids (n,)."""
    xt, yt = _tensor(x, "x"), _tensor(y, "y")
    ids = torch.as_tensor(
        np.asarray(task_ids) if not isinstance(task_ids, torch.Tensor) else task_ids
    )
    if xt.ndim != 2 or ids.shape != (xt.shape[0],):
        raise ValueError(
            f"need x (n, d) and task_ids (n,), got {tuple(xt.shape)}, {tuple(ids.shape)}"
        )
    out: dict[int, LinearModel] = {}
    for tid in torch.unique(ids).tolist():
        mask = (ids == tid).to(xt.device)
        out[int(tid)] = fit_ridge(xt[mask], yt[mask], ridge)
    return out


def predict_per_task(models: dict[int, LinearModel], x: Any, task_ids: Any) -> torch.Tensor:
    """Rows x (n, d) predicted by the model of their task -> (n, o)."""
    xt = _tensor(x, "x")
    ids = torch.as_tensor(
        np.asarray(task_ids) if not isinstance(task_ids, torch.Tensor) else task_ids
    )
    missing = set(torch.unique(ids).tolist()) - set(models)
    if missing:
        raise ValueError(f"no linear fit for task ids {sorted(missing)}")
    target_dim = next(iter(models.values())).weight.shape[-1]
    out = torch.empty((xt.shape[0], target_dim), dtype=torch.float32, device=xt.device)
    for tid, model in models.items():
        mask = (ids == tid).to(xt.device)
        if mask.any():
            out[mask] = model.predict(xt[mask]).to(xt.device)
    return out


def window_ridge_predict(
    support_x: Any, support_y: Any, query_x: Any, ridge: float = 1e-3
) -> torch.Tensor:
    """Few-shot linear baseline: fit on each window's support, predict its query.

    support_x (w, s, d), support_y (w, s, o), query_x (w, q, d) -> (w, q, o).
    """
    model = fit_ridge(support_x, support_y, ridge)
    return model.predict(query_x)


def mse(pred: Any, target: Any) -> float:
    """Mean squared error over every element (use normalized targets for nMSE)."""
    p, t = _tensor(pred, "pred"), _tensor(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} differ")
    return float(((p.double() - t.to(p.device).double()) ** 2).mean())
