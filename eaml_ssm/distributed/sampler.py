"""Each rank's share of the training tasks, and meta-batches that do not depend on the
number of ranks (the world size).

Task ids are dealt round robin (`shard_tasks`); `ShardedTaskSampler` draws step k's global
meta-batch from (seed, k) alone and serves the tasks of it that this rank holds. See the
glossary in eaml_ssm/__init__.py for t (the meta-batch's tasks; t_r: this rank's tasks of
it), s, q, l, d and o.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eaml_ssm.config import RunConfig
from eaml_ssm.distributed.comm import DistributedContext, all_reduce_sum
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import StoreLoader, windowed_tasks
from eaml_ssm.maml import TaskBatch

log = logging.getLogger(__name__)

_TASK_TAG = 0x7A5C  # seed-sequence tags: which tasks / which windows a meta-step draws


def shard_tasks(num_tasks: int, rank: int, world_size: int) -> list[int]:
    """Task ids held by ``rank``: ``rank, rank + world_size, rank + 2 * world_size, ...``
    (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if num_tasks < 0:
        raise ValueError(f"num_tasks must be >= 0, got {num_tasks}")
    return list(range(rank, num_tasks, world_size))


def owner_of(task_id: int, world_size: int) -> int:
    """The rank that holds task ``task_id`` (see :func:`shard_tasks`)."""
    return task_id % world_size


class ShardedTaskSampler:
    """Meta-batches whose content depends on (seed, step) only, served from a rank's shard.

    A task is *eligible* when it has at least one window of ``l = s + q`` consecutive steps of
    one episode (the store's rule, asked through `eaml_ssm.feed.windowed_tasks`; tasks without
    one are never drawn). With several ranks, each rank knows its own tasks only: call
    :meth:`share_eligibility` (a collective) or :meth:`set_eligible` before sampling.

    Step k's global meta-batch of t tasks is stratified by task id modulo t: slot i holds a task
    drawn uniformly from the eligible tasks of ``{i, i + t, i + 2t, ...}`` (a slot whose class
    has none draws from the eligible tasks not yet chosen), with a generator seeded by
    ``(seed, k)``. So the t tasks are distinct, and each task of a class is drawn with
    probability one over the class's eligible tasks (uniform when every class has as many).
    Each task's window is drawn by the store's own sampler among that task's windows, with the
    per-call seed ``draw_seed(seed, k, task_id)`` (see `eaml_ssm.feed.StoreLoader.task_windows`),
    so it depends on (seed, k, task) only, not on which rank holds the task. The first s steps
    are the support, the next q the query.

    This rank serves the t_r tasks of the batch it holds (``owner_of(task_id, world_size) ==
    rank``). Since task ids are dealt round robin, slot i belongs to rank ``i mod world_size``:
    when the world size divides t (and no class is empty) every rank gets exactly
    t / world_size tasks of every batch, for any world size, while the batch itself does not
    depend on the world size.
    """

    def __init__(
        self,
        store: Any,
        num_tasks: int,
        support_len: int,
        query_len: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if support_len < 1 or query_len < 1:
            raise ValueError(f"need support_len, query_len >= 1, got {support_len}, {query_len}")
        self.store = store
        self.num_tasks, self.seed = int(num_tasks), int(seed)
        self.support_len, self.query_len = int(support_len), int(query_len)
        self.rank, self.world_size = rank, world_size
        self.task_ids = shard_tasks(num_tasks, rank, world_size)
        held = {int(t) for t, c in store.task_counts().items() if int(c) > 0}
        for task in self.task_ids:
            if task not in held:
                raise ValueError(f"rank {self.rank}: the store holds no rows of task {task}")
        length = self.support_len + self.query_len
        self._local = np.zeros(self.num_tasks, dtype=bool)  # (num_tasks,) my eligible tasks
        windowed = windowed_tasks(store, length)
        self._local[[t for t in self.task_ids if t in windowed]] = True
        self.eligible: np.ndarray | None = self._local.copy() if world_size == 1 else None

    def local_eligibility(self) -> np.ndarray:
        """(num_tasks,) bool: the tasks of this rank that have a window."""
        return self._local.copy()

    def set_eligible(self, eligible: np.ndarray) -> None:
        """Set the (num_tasks,) bool mask of eligible tasks over all ranks (the same on all)."""
        mask = np.asarray(eligible, dtype=bool)
        if mask.shape != (self.num_tasks,):
            raise ValueError(f"eligible must have shape ({self.num_tasks},), got {mask.shape}")
        if not np.array_equal(mask[self.task_ids], self._local[self.task_ids]):
            raise ValueError(f"eligible disagrees with rank {self.rank}'s own tasks")
        self.eligible = mask

    def share_eligibility(self, ctx: DistributedContext) -> None:
        """Learn which tasks of the other ranks are eligible (a collective on every rank)."""
        counts = torch.from_numpy(self._local.astype(np.float64)).to(ctx.device)  # (num_tasks,)
        all_reduce_sum(counts, ctx, "all-reduce of the eligible tasks")
        self.set_eligible(counts.cpu().numpy() > 0)

    def global_tasks(self, step: int, meta_batch_size: int) -> np.ndarray:
        """The task ids of step ``step``'s whole meta-batch, (t,) int64, slot order."""
        if self.eligible is None:
            raise ValueError("call share_eligibility(ctx) (or set_eligible) before sampling")
        n_ok = int(self.eligible.sum())
        if not 1 <= meta_batch_size <= n_ok:
            length = self.support_len + self.query_len
            raise ValueError(
                f"meta_batch_size must be in [1, {n_ok}]: {n_ok} of {self.num_tasks} tasks have "
                f"{length} consecutive steps in one episode (support_len + query_len), got "
                f"{meta_batch_size}; collect more steps per task or shorten the windows"
            )
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step, _TASK_TAG]))
        u = rng.random(meta_batch_size)  # (t,) one uniform per slot
        free = self.eligible.copy()  # (num_tasks,)
        out = np.full(meta_batch_size, -1, dtype=np.int64)  # (t,)
        for i in range(meta_batch_size):  # slots with a non-empty class first
            members = np.flatnonzero(free[i::meta_batch_size]) * meta_batch_size + i
            if members.size:
                out[i] = members[int(u[i] * members.size)]
                free[out[i]] = False
        for empty in np.flatnonzero(out < 0):  # empty classes: any eligible task not chosen
            pool = np.flatnonzero(free)
            out[empty] = pool[int(u[empty] * pool.size)]
            free[out[empty]] = False
        return out

    def local_tasks(self, step: int, meta_batch_size: int) -> list[int]:
        """The task ids of step ``step``'s meta-batch held by this rank, in batch order."""
        batch = self.global_tasks(step, meta_batch_size)
        return [int(t) for t in batch if owner_of(int(t), self.world_size) == self.rank]

    def loader(
        self, normalizer: Normalizer | None, device: torch.device, start: int = 0
    ) -> StoreLoader:
        """The feed of this rank's windows: draw k holds the batch of meta-step k."""
        return StoreLoader(self.store, device, normalizer, seed=self.seed, start=start)

    def next_batch(
        self, loader: StoreLoader, step: int, meta_batch_size: int
    ) -> tuple[TaskBatch | None, list[int]]:
        """The loader's next draw, that of meta-step ``step`` (the loader's draw index):
        (this rank's TaskBatch, (t_r, 1, s, d) support and (t_r, 1, q, d) query, or None; its
        task ids)."""
        tasks = self.local_tasks(step, meta_batch_size)  # on the host: no device read-back
        sx, sy, qx, qy, _ = loader.task_windows(
            lambda k: self.local_tasks(k, meta_batch_size),
            self.support_len,
            self.query_len,
            meta_batch_size,
        )
        if not tasks:
            return None, tasks
        return TaskBatch(sx.unsqueeze(1), sy.unsqueeze(1), qx.unsqueeze(1), qy.unsqueeze(1)), tasks

    def arrays(self, step: int, tasks: Sequence[int]) -> tuple[np.ndarray, ...]:
        """Raw (support_obs (t_r, s, d), support_target (t_r, s, o), query_obs,
        query_target)."""
        x, y, *_ = self.batch_tensors(step, tasks, None, torch.device("cpu"))
        return x[0].numpy(), x[1].numpy(), y[0].numpy(), y[1].numpy()

    def batch_tensors(
        self,
        step: int,
        tasks: Sequence[int],
        normalizer: Normalizer | None,
        device: torch.device,
    ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], Tensor]:
        """((sx, sy), (qx, qy), task ids) of ``tasks`` at step ``step`` through the feed."""
        for t in tasks:
            if owner_of(int(t), self.world_size) != self.rank or t not in self.task_ids:
                raise ValueError(f"rank {self.rank} does not hold task {t}")
            if not self._local[int(t)]:
                length = self.support_len + self.query_len
                raise ValueError(f"task {t} has no {length}-step window")
        chosen = [int(t) for t in tasks]
        with self.loader(normalizer, device, step) as loader:
            sx, sy, qx, qy, ids = loader.task_windows(
                lambda k: chosen, self.support_len, self.query_len, max(1, len(chosen))
            )
        return (sx, sy), (qx, qy), ids

    def batch(
        self, step: int, tasks: Sequence[int], normalizer: Normalizer, device: torch.device
    ) -> TaskBatch:
        """The normalized TaskBatch of ``tasks`` at step ``step``: (t_r, 1, s or q, d) per
        tensor."""
        (sx, sy), (qx, qy), _ = self.batch_tensors(step, tasks, normalizer, device)
        return TaskBatch(sx.unsqueeze(1), sy.unsqueeze(1), qx.unsqueeze(1), qy.unsqueeze(1))

    def load(self, meta_batch_size: int, steps: Iterable[int]) -> float:
        """Mean over ``steps`` of (busiest rank's task count) / (t / world size); 1.0 =
        perfect balance."""
        worst = []
        for k in steps:
            owners = [
                owner_of(int(t), self.world_size) for t in self.global_tasks(k, meta_batch_size)
            ]
            worst.append(max(owners.count(r) for r in range(self.world_size)))
        return float(np.mean(worst)) * self.world_size / meta_batch_size


def make_sampler(cfg: RunConfig, store: Any, ctx: DistributedContext) -> ShardedTaskSampler:
    """This rank's sampler for a RunConfig, eligibility shared (a collective on every rank)."""
    sampler = ShardedTaskSampler(
        store, cfg.num_tasks, cfg.support_len, cfg.query_len, cfg.seed, ctx.rank, ctx.world_size
    )
    sampler.share_eligibility(ctx)
    assert sampler.eligible is not None
    n_ok = int(sampler.eligible.sum())
    if n_ok < cfg.num_tasks:
        log.info(
            "%d of %d tasks have a window of %d consecutive steps in one episode; the others "
            "are not drawn",
            n_ok,
            cfg.num_tasks,
            cfg.support_len + cfg.query_len,
        )
    sampler.global_tasks(0, cfg.meta_batch_size)  # the same ValueError on every rank, early
    return sampler
