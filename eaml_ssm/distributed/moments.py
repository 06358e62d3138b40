"""Normalization statistics of the union of every rank's store, merged exactly.

Each rank sends (n, mean, M2) of its own store's columns; Chan et al.'s parallel merge, in
float64 and in rank order, gives the statistics of the whole training set.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from eaml_ssm.distributed.comm import DistributedContext, _collective, _wait
from eaml_ssm.features import Normalizer, column_moments


def _moments(store: Any) -> Tensor:
    """(n, mean_in, m2_in, mean_t, m2_t) of this rank's store, float64, flat (1 + 2di + 2dt,)."""
    n = len(store)
    di, dt = store.obs_dim, store.target_dim
    if n == 0:
        return torch.zeros(1 + 2 * di + 2 * dt, dtype=torch.float64)
    im, isd = column_moments(store.obs_view())
    tm, tsd = column_moments(store.target_view())
    parts = [np.array([float(n)]), im, isd**2 * n, tm, tsd**2 * n]
    return torch.from_numpy(np.concatenate(parts))


def _merge_moments(rows: Tensor, di: int, dt: int) -> tuple[np.ndarray, ...]:
    """Chan et al.'s merge of per-rank (n, mean, M2) rows, in rank order:
    (ranks, moments) -> stats."""
    n_tot = 0.0
    mean = np.zeros(di + dt)
    m2 = np.zeros(di + dt)
    for row in rows.numpy():
        n = row[0]
        if n == 0:
            continue
        r_mean = np.concatenate([row[1 : 1 + di], row[1 + 2 * di : 1 + 2 * di + dt]])
        r_m2 = np.concatenate([row[1 + di : 1 + 2 * di], row[1 + 2 * di + dt :]])
        delta = r_mean - mean
        tot = n_tot + n
        mean = mean + delta * (n / tot)
        m2 = m2 + r_m2 + delta**2 * (n_tot * n / tot)
        n_tot = tot
    if n_tot == 0:
        raise ValueError("cannot compute normalization statistics: every rank's store is empty")
    std = np.sqrt(m2 / n_tot)
    return mean[:di], std[:di], mean[di:], std[di:]


def global_normalizer(store: Any, ctx: DistributedContext) -> Normalizer:
    """The Normalizer of the union of every rank's store (same on all ranks).

    With one rank it equals ``Normalizer.from_store(store)``; with several, the per-rank
    moments are gathered and merged exactly (in float64), so it matches the single-store
    statistics up to float64 rounding.
    """
    di, dt = store.obs_dim, store.target_dim
    mine = _moments(store).to(ctx.device)  # (moments,) = 1 + 2 di + 2 dt
    if ctx.active:
        rows = [torch.empty_like(mine) for _ in range(ctx.world_size)]
        with _collective(ctx, "all-gather of the normalization statistics"):
            _wait(ctx, dist.all_gather(rows, mine, async_op=True))
        table = torch.stack(rows).cpu()  # (ranks, moments)
    else:
        table = mine.cpu().unsqueeze(0)  # (1, moments)
    in_mean, in_std, t_mean, t_std = _merge_moments(table, di, dt)
    return Normalizer.from_moments(in_mean, in_std, t_mean, t_std, state_dim=dt)
