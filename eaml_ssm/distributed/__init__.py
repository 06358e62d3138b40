"""Meta-training on ``torch.distributed``, launched with ``torchrun``.

    torchrun --nproc_per_node=N -m eaml_ssm train --distributed [flags]

Rank r of a job of several ranks (its world size):

1. joins the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
   ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA, with a timeout
   on the rendezvous and on every collective, so a rank that dies or hangs makes the others stop
   with :class:`RankFailure` instead of waiting forever;
2. collects its own share of the training tasks (task ids ``r``, ``r`` plus the world size,
   ``r`` plus twice it, ...) into its own store; the normalization statistics are merged
   across ranks (exact parallel moments);
3. every meta-step: the global meta-batch (which tasks, which windows) is drawn from the shared
   seed and the step number alone, so it does not depend on the world size (stratified so
   that each rank holds exactly t / world size of its t tasks when the world size divides t;
   see :class:`ShardedTaskSampler`). Rank r computes the meta-gradient of the t_r tasks of
   that batch it holds, weighted by its share ``t_r / t``; an all-reduce sums the weighted
   gradients, which is exactly the gradient of the mean query loss over the whole meta-batch.
   Every rank then takes the same optimizer step, so the weights stay identical (checked bit
   for bit at the end of training);
4. rank 0 alone writes the run folder (config, metrics, checkpoints), logs and shows progress
   bars. ``--resume`` loads the checkpoint on rank 0 and broadcasts it; because batches depend
   only on (seed, step), a run resumes with any number of ranks and gives the same weights.

Modules: ``comm`` (process group, collectives, timeouts, RankFailure), ``sampler`` (each
rank's tasks, the meta-batch of step k), ``moments`` (the merged normalizer), ``hooks``
(`RankHooks` on the one collect stage and training loop, `distributed_meta_step`), ``run``
(the torchrun entry point). See the glossary in eaml_ssm/__init__.py for t (the meta-batch's
tasks; t_r: this rank's tasks of it).
"""

from eaml_ssm.distributed.comm import (
    DEFAULT_TIMEOUT_S,
    TIMEOUT_ENV,
    DistributedContext,
    RankFailure,
    agree,
    all_reduce_gradients,
    all_reduce_sum,
    assert_same_across_ranks,
    broadcast_object,
    broadcast_parameters,
    init_from_env,
    shutdown,
    timeout_from_env,
)
from eaml_ssm.distributed.comm import _collective as _collective  # (private: for the tests)
from eaml_ssm.distributed.comm import _wait as _wait
from eaml_ssm.distributed.entry import collect_shard, run, train
from eaml_ssm.distributed.hooks import RankHooks, distributed_meta_step
from eaml_ssm.distributed.moments import _merge_moments as _merge_moments
from eaml_ssm.distributed.moments import _moments as _moments
from eaml_ssm.distributed.moments import global_normalizer
from eaml_ssm.distributed.sampler import ShardedTaskSampler, make_sampler, owner_of, shard_tasks

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "DistributedContext",
    "RankFailure",
    "RankHooks",
    "ShardedTaskSampler",
    "agree",
    "all_reduce_gradients",
    "all_reduce_sum",
    "assert_same_across_ranks",
    "broadcast_object",
    "broadcast_parameters",
    "collect_shard",
    "distributed_meta_step",
    "global_normalizer",
    "init_from_env",
    "make_sampler",
    "owner_of",
    "run",
    "shard_tasks",
    "shutdown",
    "timeout_from_env",
    "train",
]
