"""A torchrun rank's hooks on the one collect stage and the one meta-training loop.

`RankHooks` overrides `eaml_ssm.hooks.Hooks` where a rank differs from one process: it
collects its share of the tasks, merges the normalization statistics and the counts, reads
the checkpoint on rank 0 and broadcasts it, draws its tasks of each meta-batch from the
sharded sampler, and sums the weighted meta-gradients in one all-reduce
(`distributed_meta_step`). See the glossary in eaml_ssm/__init__.py for t (the meta-batch's
tasks) and t_r (this rank's tasks of it).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from eaml_ssm.artifacts import RunDir
from eaml_ssm.config import RunConfig
from eaml_ssm.distributed.comm import (
    DistributedContext,
    agree,
    all_reduce_gradients,
    all_reduce_sum,
    assert_same_across_ranks,
    broadcast_parameters,
)
from eaml_ssm.distributed.moments import global_normalizer
from eaml_ssm.distributed.sampler import ShardedTaskSampler, make_sampler, shard_tasks
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import StoreLoader
from eaml_ssm.hooks import Hooks
from eaml_ssm.maml import MetaMAML, TaskBatch
from eaml_ssm.run_data import Data
from eaml_ssm.train import Trained

log = logging.getLogger(__name__)


def distributed_meta_step(
    maml: MetaMAML,
    local_tasks: TaskBatch | Sequence[Sequence[Tensor | None]] | None,
    n_local: int,
    n_total: int,
    ctx: DistributedContext,
) -> float:
    """One meta-optimizer step on a meta-batch of ``n_total`` tasks split over the ranks.

    This rank holds ``n_local`` of them (``local_tasks``; None when ``n_local == 0``). The
    gradient is that of the mean query loss over all ``n_total`` tasks: each rank backpropagates
    ``meta_loss(local) * n_local / n_total`` and the gradients are summed across ranks, then
    every rank applies ``maml.step()`` (clipping included) to identical gradients. Returns the
    meta-loss before the step, averaged over the whole meta-batch (the same on every rank).
    """
    if not 0 <= n_local <= n_total or n_total < 1:
        raise ValueError(f"need 0 <= n_local <= n_total and n_total >= 1, got {n_local}, {n_total}")
    if (local_tasks is None) != (n_local == 0):
        raise ValueError("local_tasks must be None exactly when n_local == 0")
    maml.optimizer.zero_grad(set_to_none=True)
    params = maml.meta_parameters()
    loss_sum = torch.zeros(1)  # (1,) sum of this rank's task losses
    if local_tasks is not None:
        loss = maml.meta_loss(local_tasks)  # mean over the t_r local tasks
        (loss * (n_local / n_total)).backward()
        loss_sum = loss.detach().reshape(1) * n_local
    total = all_reduce_gradients(params, ctx, extra=loss_sum)
    assert total is not None
    maml.step()
    return float(total.sum()) / n_total


class RankHooks(Hooks):
    """Rank ``ctx.rank`` of a torchrun job (a one-rank job without torchrun too)."""

    keeps_store = False  # each rank's store holds its shard only
    # batches are drawn from (seed, step); rank 0's CUDA RNG states would not fit a job with
    # a different number of GPUs: no RNG state to restore
    restores_rng = False

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx = ctx
        self.rank, self.world_size = ctx.rank, ctx.world_size
        self.sampler: ShardedTaskSampler | None = None

    def check(self, cfg: RunConfig) -> None:
        w = self.world_size
        if cfg.num_tasks < w:
            raise ValueError(
                f"--num_tasks ({cfg.num_tasks}) must be >= the number of ranks ({w}): "
                "every rank collects its own share of the training tasks"
            )
        if cfg.meta_batch_size < w:
            raise ValueError(
                f"--meta_batch_size ({cfg.meta_batch_size}) must be >= the number of ranks "
                f"({w}): with fewer tasks per meta-batch some ranks would idle"
            )
        if cfg.meta_batch_size % w:
            log.warning(
                "--meta_batch_size %d is not a multiple of the %d ranks: some ranks get one "
                "task more per meta-step than others (correct, but the others wait)",
                cfg.meta_batch_size,
                w,
            )

    def tasks_held(self, num_tasks: int) -> list[int]:
        return shard_tasks(num_tasks, self.rank, self.world_size)

    def total(self, transitions: int, episodes: int) -> tuple[int, int]:
        counts = torch.tensor([transitions, episodes], dtype=torch.float64)
        counts = all_reduce_sum(
            counts.to(self.ctx.device), self.ctx, "all-reduce of the collection counts"
        )
        return int(counts[0]), int(counts[1])

    def collect_metrics(self) -> dict[str, Any]:
        return {"world_size": self.world_size}

    def normalizer(self, store: Any) -> Normalizer:
        return global_normalizer(store, self.ctx)

    def read_checkpoint(self, cfg: RunConfig, run: RunDir | None) -> dict[str, Any] | None:
        """Rank 0 reads the checkpoint (if any); every rank gets the payload."""
        read = super().read_checkpoint
        return agree(self.ctx, lambda: read(cfg, run), "broadcast of the checkpoint")

    def start(self, cfg: RunConfig, data: Data, trained: Trained) -> None:
        """Rank 0's weights on every rank; this rank's sampler (eligibility shared)."""
        model, maml = trained.model, trained.maml
        broadcast_parameters(
            [*model.parameters(), *model.buffers(), *maml.inner_lrs.values()], self.ctx
        )
        self.sampler = make_sampler(cfg, data.store, self.ctx)

    def draw(self, cfg: RunConfig, loader: StoreLoader, step: int) -> tuple[TaskBatch | None, int]:
        assert self.sampler is not None, "start() makes the sampler"
        batch, local = self.sampler.next_batch(loader, step, cfg.meta_batch_size)
        return batch, len(local)

    def update(self, maml: MetaMAML, batch: TaskBatch | None, n_local: int, n_total: int) -> float:
        return distributed_meta_step(maml, batch, n_local, n_total, self.ctx)

    def finish(self, trained: Trained) -> None:
        assert_same_across_ranks(
            [*trained.maml.meta_parameters()], self.ctx, "meta-learned weights"
        )
