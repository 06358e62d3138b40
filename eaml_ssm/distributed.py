"""Meta-training on ``torch.distributed``, launched with ``torchrun``.

    torchrun --nproc_per_node=N -m eaml_ssm train --distributed [flags]

Rank r of W:

1. joins the process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
   ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA, with a timeout
   on the rendezvous and on every collective, so a rank that dies or hangs makes the others stop
   with :class:`RankFailure` instead of waiting forever;
2. collects its own share of the training tasks (task ids ``r, r + W, r + 2W, ...``) into its
   own store; the normalization statistics are merged across ranks (exact parallel moments);
3. every meta-step: the global meta-batch (which tasks, which windows) is drawn from the shared
   seed and the step number alone, so it does not depend on W (stratified so that each rank
   holds exactly T / W of its tasks when W divides T; see :class:`ShardedTaskSampler`). Rank r
   computes the meta-gradient of the tasks of that batch it holds, weighted by its share
   ``T_r / T``; an all-reduce sums the weighted gradients, which is exactly the gradient of the
   mean query loss over the whole meta-batch. Every rank then takes the same optimizer step, so
   the weights stay identical (checked bit for bit at the end of training);
4. rank 0 alone writes the run folder (config, metrics, checkpoints), logs and shows progress
   bars. ``--resume`` loads the checkpoint on rank 0 and broadcasts it; because batches depend
   only on (seed, step), a run resumes with any number of ranks and gives the same weights.

Shape glossary: T tasks in the global meta-batch, T_r of them on this rank, S support length,
Q query length (L = S + Q), d input features, o target features, P all meta-parameters
flattened, W world size.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from eaml_ssm.config import RunConfig
from eaml_ssm.features import Normalizer, column_moments
from eaml_ssm.maml import MetaMAML, TaskBatch
from eaml_ssm.progress import progress

if TYPE_CHECKING:  # the pipeline pulls in adaptation, plots, ...: imported where used
    from eaml_ssm.artifacts import RunDir
    from eaml_ssm.feed import StoreLoader
    from eaml_ssm.pipeline import Data, Trained

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DistributedContext",
    "RankFailure",
    "ShardedTaskSampler",
    "all_reduce_gradients",
    "assert_same_across_ranks",
    "average_gradients",
    "broadcast_object",
    "broadcast_parameters",
    "distributed_meta_step",
    "get_rank",
    "get_world_size",
    "global_normalizer",
    "init_from_env",
    "is_main",
    "make_sampler",
    "owner_of",
    "run",
    "shard_tasks",
    "shutdown",
]

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "EAML_DIST_TIMEOUT"  # seconds; overrides the default collective timeout
_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
_TASK_TAG = 0x7A5C  # seed-sequence tags: which tasks / which windows a meta-step draws
T = TypeVar("T")


class RankFailure(RuntimeError):
    """A collective failed: another rank died, or stopped answering within the timeout."""


# --- process group --------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits in the job. ``backend=None``: a single process, no group."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0: the only rank that writes files, logs at INFO and shows progress bars."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """True when a process group exists (collectives go over the network)."""
        return self.backend is not None

    def __str__(self) -> str:
        where = self.backend or "no process group"
        return f"rank {self.rank}/{self.world_size} ({where}, {self.device})"


def _env_int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = env.get(name)
    if raw is None:
        if default is None:
            raise ValueError(f"environment variable {name} is not set (torchrun sets it)")
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {raw!r}") from None


def timeout_from_env(env: Mapping[str, str] | None = None) -> float:
    """The collective timeout in seconds: ``$EAML_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT_S`."""
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be > 0 seconds, got {raw!r}")
    return value


def _pick_device(device: str, local_rank: int) -> torch.device:
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device cuda was asked for, but torch sees no CUDA device")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} needs GPU {local_rank}, but this node has {count}; "
            "use --nproc_per_node <= the number of GPUs"
        )
    return torch.device("cuda", local_rank)


def init_from_env(
    device: str = "auto",
    *,
    timeout_s: float | None = None,
    backend: str | None = None,
) -> DistributedContext:
    """Join the process group described by torchrun's environment variables.

    Backend: NCCL when this rank runs on CUDA, gloo on CPU (or ``backend``). Without torchrun's
    variables the process runs alone (a one-rank job without a process group) and says so.
    ``timeout_s`` bounds the rendezvous and every collective (default ``$EAML_DIST_TIMEOUT`` or
    300 s). Raises ValueError for malformed or inconsistent variables.
    """
    env = os.environ
    timeout = timeout_from_env(env) if timeout_s is None else float(timeout_s)
    if not timeout > 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
    present = [k for k in _REQUIRED_ENV if k in env]
    if not present:
        log.warning("--distributed without torchrun: running as a single rank")
        return DistributedContext(device=_pick_device(device, 0), timeout_s=timeout)
    missing = [k for k in _REQUIRED_ENV if k not in env]
    if missing:
        raise ValueError(
            f"torchrun environment incomplete: {missing} not set (have {present}); launch with "
            "`torchrun --nproc_per_node=N -m eaml_ssm train --distributed ...`"
        )
    rank, world = _env_int(env, "RANK"), _env_int(env, "WORLD_SIZE")
    local_rank = _env_int(env, "LOCAL_RANK", default=rank)
    _env_int(env, "MASTER_PORT")  # fail early on a malformed port
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"need 0 <= RANK < WORLD_SIZE, got RANK={rank}, WORLD_SIZE={world}")
    dev = _pick_device(device, local_rank)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be gloo or nccl, got {backend!r}")
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("the nccl backend needs CUDA tensors; use gloo on CPU")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if backend == "nccl":
        # errors and timeouts of NCCL collectives raise in the waiting call (see _wait) instead
        # of the watchdog tearing the process down
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    ctx = DistributedContext(rank, world, local_rank, backend, dev, timeout)
    if dist.is_initialized():
        if dist.get_rank() != rank or dist.get_world_size() != world:
            raise ValueError("a different process group is already initialized in this process")
        return ctx
    with _collective(ctx, "joining the process group (rendezvous)"):
        dist.init_process_group(
            backend,
            init_method="env://",  # torchrun's store (or MASTER_ADDR:MASTER_PORT)
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
    (log.info if ctx.is_main else log.debug)(
        "joined the process group as %s, collective timeout %g s", ctx, timeout
    )
    return ctx


def shutdown(ctx: DistributedContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()


def get_rank() -> int:
    """This process's rank (0 when no process group is initialized)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of ranks (1 when no process group is initialized)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """True on rank 0, and in a single process."""
    return get_rank() == 0


@contextmanager
def _collective(ctx: DistributedContext, what: str) -> Any:
    """Turn a backend error (peer gone, timeout) into a RankFailure that says what to do."""
    try:
        yield
    except RuntimeError as exc:
        if isinstance(exc, RankFailure):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise RankFailure(
            f"{ctx}: {what} failed; another rank has probably died or stopped responding "
            f"(collective timeout {ctx.timeout_s:g} s). Look for the first error in the other "
            f"ranks' output. Backend error: {first}"
        ) from exc


def _wait(ctx: DistributedContext, work: Any) -> None:
    """Block until an ``async_op`` collective has finished, at most ``ctx.timeout_s``.

    NCCL collectives are asynchronous: without this wait a dead peer is noticed only by NCCL's
    watchdog, which aborts the process; ``work.wait(timeout)`` raises here instead, inside
    ``_collective``, which turns it into a RankFailure (as on gloo, where the wait is the same).
    """
    if work is not None and not work.wait(datetime.timedelta(seconds=ctx.timeout_s)):
        raise RuntimeError(f"collective did not finish within {ctx.timeout_s:g} s")


# --- collectives ------------------------------------------------------------------------------


def all_reduce_sum(tensor: Tensor, ctx: DistributedContext, what: str = "all-reduce") -> Tensor:
    """Sum ``tensor`` over ranks in place (identity for a single process); returns it."""
    if ctx.active:
        with _collective(ctx, what):
            _wait(ctx, dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True))
    return tensor


def broadcast_object(obj: T, ctx: DistributedContext, src: int = 0, what: str = "broadcast") -> T:
    """Rank ``src``'s picklable ``obj`` on every rank."""
    if not ctx.active:
        return obj
    box: list[Any] = [obj if ctx.rank == src else None]
    with _collective(ctx, what):
        dist.broadcast_object_list(box, src=src, device=ctx.device)
    return box[0]  # type: ignore[no-any-return]


def _flat(tensors: Sequence[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])  # (P,)


def _unflat_into(flat: Tensor, tensors: Sequence[Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for t in tensors:
            n = t.numel()
            t.copy_(flat[offset : offset + n].view_as(t))
            offset += n


def _tensors_of(obj: nn.Module | Iterable[Tensor]) -> list[Tensor]:
    if isinstance(obj, nn.Module):
        return [*obj.parameters(), *obj.buffers()]
    return list(obj)


def _by_dtype(tensors: Iterable[Tensor]) -> list[list[Tensor]]:
    """Non-empty tensors grouped by dtype (one flat message per group, no casts)."""
    groups: dict[torch.dtype, list[Tensor]] = {}
    for t in tensors:
        if t.numel() > 0:
            groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


def broadcast_parameters(
    obj: nn.Module | Iterable[Tensor], ctx: DistributedContext, src: int = 0
) -> None:
    """Copy rank ``src``'s values of a module's parameters and buffers (or of the given
    tensors) to every rank, in place, in one flat broadcast."""
    if not ctx.active:
        return
    for group in _by_dtype(_tensors_of(obj)):
        flat = _flat(group).to(ctx.device)  # (P,)
        with _collective(ctx, "broadcast of the initial weights"):
            _wait(ctx, dist.broadcast(flat, src=src, async_op=True))
        _unflat_into(flat, group)


def all_reduce_gradients(
    params: Sequence[Tensor],
    ctx: DistributedContext,
    *,
    scale: float = 1.0,
    extra: Tensor | None = None,
) -> Tensor | None:
    """``p.grad <- sum over ranks of scale * p.grad`` for every tensor, in one flat all-reduce.

    A missing ``.grad`` counts as zeros (a rank with no task this step, or an unused
    parameter), so every rank ends with a ``.grad`` on every tensor. ``extra`` (a small 1-D
    tensor, e.g. a loss) rides along in the same message and is returned summed, not scaled.
    """
    if not params:
        raise ValueError("all_reduce_gradients needs at least one parameter")
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    parts = [g.detach().reshape(-1) * scale for g in grads]
    if extra is not None:
        parts.append(extra.detach().reshape(-1).to(grads[0]))  # grads' dtype and device
    flat = torch.cat(parts).to(ctx.device)  # (P [+ extra],)
    all_reduce_sum(flat, ctx, "all-reduce of the meta-gradients")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.device)
        offset += n
    return flat[offset:] if extra is not None else None


def average_gradients(params: Sequence[Tensor], ctx: DistributedContext) -> None:
    """Replace every ``p.grad`` by its mean over ranks (equal-sized shards)."""
    all_reduce_gradients(params, ctx, scale=1.0 / ctx.world_size)


def assert_same_across_ranks(
    tensors: Sequence[Tensor], ctx: DistributedContext, what: str = "weights"
) -> None:
    """Raise RuntimeError unless every rank holds bit-identical values (max == min == mine)."""
    if not ctx.active:
        return
    for group in _by_dtype(tensors):
        mine = _flat(group).to(ctx.device)  # (P,)
        hi, lo = mine.clone(), mine.clone()
        with _collective(ctx, f"consistency check of the {what}"):
            _wait(ctx, dist.all_reduce(hi, op=dist.ReduceOp.MAX, async_op=True))
            _wait(ctx, dist.all_reduce(lo, op=dist.ReduceOp.MIN, async_op=True))
        if not (torch.equal(hi, mine) and torch.equal(lo, mine)):
            worst = float((hi - lo).abs().max())
            raise RuntimeError(f"{ctx}: the {what} differ across ranks (max spread {worst:.3g})")


# --- the meta-step ----------------------------------------------------------------------------


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
        loss = maml.meta_loss(local_tasks)  # mean over the T_r local tasks
        (loss * (n_local / n_total)).backward()
        loss_sum = loss.detach().reshape(1) * n_local
    total = all_reduce_gradients(params, ctx, extra=loss_sum)
    assert total is not None
    maml.step()
    return float(total.sum()) / n_total


# --- data: each rank's share of the tasks -----------------------------------------------------


def shard_tasks(num_tasks: int, rank: int, world_size: int) -> list[int]:
    """Task ids held by ``rank``: ``rank, rank + W, rank + 2W, ...`` (round robin)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank {rank}, world_size {world_size}")
    if num_tasks < 0:
        raise ValueError(f"num_tasks must be >= 0, got {num_tasks}")
    return list(range(rank, num_tasks, world_size))


def owner_of(task_id: int, world_size: int) -> int:
    """The rank that holds task ``task_id`` (see :func:`shard_tasks`)."""
    return task_id % world_size


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
    """Chan et al.'s merge of per-rank (n, mean, M2) rows, in rank order: (W, k) -> stats."""
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
    mine = _moments(store).to(ctx.device)  # (k,)
    if ctx.active:
        rows = [torch.empty_like(mine) for _ in range(ctx.world_size)]
        with _collective(ctx, "all-gather of the normalization statistics"):
            _wait(ctx, dist.all_gather(rows, mine, async_op=True))
        table = torch.stack(rows).cpu()  # (W, k)
    else:
        table = mine.cpu().unsqueeze(0)  # (1, k)
    in_mean, in_std, t_mean, t_std = _merge_moments(table, di, dt)
    return Normalizer.from_moments(in_mean, in_std, t_mean, t_std, state_dim=dt)


class ShardedTaskSampler:
    """Meta-batches whose content depends on (seed, step) only, served from a rank's shard.

    A task is *eligible* when it has at least one window of ``L = S + Q`` consecutive steps of
    one episode (the store's rule, asked through `eaml_ssm.feed.windowed_tasks`; tasks without
    one are never drawn). With several ranks, each rank knows its own tasks only: call
    :meth:`share_eligibility` (a collective) or :meth:`set_eligible` before sampling.

    Step k's global meta-batch of T tasks is stratified by task id modulo T: slot c holds a task
    drawn uniformly from the eligible tasks of ``{c, c + T, c + 2T, ...}`` (a slot whose class
    has none draws from the eligible tasks not yet chosen), with a generator seeded by
    ``(seed, k)``. So the T tasks are distinct, and each task of a class of n eligible tasks is
    drawn with probability 1 / n (uniform when every class has as many). Each task's window is
    drawn by the store's own sampler among that task's windows, with the per-call seed
    ``draw_seed(seed, k, task_id)`` (see `eaml_ssm.feed.StoreLoader.task_windows`), so it
    depends on (seed, k, task) only, not on which rank holds the task. The first S steps are
    the support, the next Q the query.

    This rank serves the tasks of the batch it holds (``owner_of(task_id, W) == rank``). Since
    task ids are dealt round robin, slot c belongs to rank ``c mod W``: when W divides T (and
    no class is empty) every rank gets exactly T / W tasks of every batch, for any W, while the
    batch itself does not depend on W.
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
        from eaml_ssm.feed import windowed_tasks

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
        """The task ids of step ``step``'s whole meta-batch, (T,) int64, slot order."""
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
        u = rng.random(meta_batch_size)  # (T,) one uniform per slot
        free = self.eligible.copy()  # (num_tasks,)
        out = np.full(meta_batch_size, -1, dtype=np.int64)  # (T,)
        for c in range(meta_batch_size):  # slots with a non-empty class first
            members = np.flatnonzero(free[c::meta_batch_size]) * meta_batch_size + c
            if members.size:
                out[c] = members[int(u[c] * members.size)]
                free[out[c]] = False
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
        from eaml_ssm.feed import StoreLoader

        return StoreLoader(self.store, device, normalizer, seed=self.seed, start=start)

    def next_batch(
        self, loader: StoreLoader, step: int, meta_batch_size: int
    ) -> tuple[TaskBatch | None, list[int]]:
        """The loader's next draw, that of meta-step ``step`` (the loader's draw index):
        (this rank's TaskBatch (T_r, 1, l, d) or None, its task ids)."""
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
        """Raw (support_obs (T_r, S, d), support_target (T_r, S, o), query_obs, query_target)."""
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
        """The normalized TaskBatch of ``tasks`` at step ``step``: (T_r, 1, l, d) per tensor."""
        (sx, sy), (qx, qy), _ = self.batch_tensors(step, tasks, normalizer, device)
        return TaskBatch(sx.unsqueeze(1), sy.unsqueeze(1), qx.unsqueeze(1), qy.unsqueeze(1))

    def load(self, meta_batch_size: int, steps: Iterable[int]) -> float:
        """Mean over ``steps`` of (busiest rank's task count) / (T / W); 1.0 = perfect balance."""
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


# --- the `train --distributed` stage ----------------------------------------------------------


def _agree(ctx: DistributedContext, fn: Callable[[], T], what: str) -> T:
    """Run ``fn`` on rank 0 and give its result to every rank; a ValueError or
    FileNotFoundError it raises is raised on every rank (so no rank is left waiting)."""
    outcome: tuple[str, Any] = ("ok", None)
    if ctx.is_main:
        try:
            outcome = ("ok", fn())
        except (ValueError, FileNotFoundError) as exc:
            outcome = ("error", exc)
    outcome = broadcast_object(outcome, ctx, what=what)
    if outcome[0] == "error":
        raise outcome[1]
    return outcome[1]  # type: ignore[no-any-return]


def quiet_other_ranks(ctx: DistributedContext) -> None:
    """Ranks other than 0 log warnings and errors only."""
    if not ctx.is_main:
        logging.getLogger("eaml_ssm").setLevel(logging.WARNING)


def run(
    command: str, cfg: RunConfig, *, resume: bool = False, timeout_s: float | None = None
) -> int:
    """``train`` (or ``run``) with ``--distributed``: called on every rank by the CLI.

    ``run`` meta-trains on all ranks, then rank 0 adapts and evaluates in the same run folder
    (``pipeline.run_stage("adapt", ...)``); the other ranks exit.
    """
    if command not in ("train", "run"):
        raise ValueError(
            f"--distributed applies to `train` and `run` (meta-training), not `{command}`"
        )
    from eaml_ssm import pipeline
    from eaml_ssm.artifacts import seed_everything

    torch.set_num_threads(1)
    ctx = init_from_env(cfg.device, timeout_s=timeout_s)
    try:
        quiet_other_ranks(ctx)
        seed_everything(cfg.seed)
        opened = _agree(ctx, lambda: pipeline.open_run(cfg, resume), "opening the run folder")
        path = opened.path
        train(cfg, ctx, opened if ctx.is_main else None, resume=resume)
    finally:
        shutdown(ctx)
    if command == "run" and ctx.is_main:
        here = dataclasses.replace(cfg, out=str(path.parent), name=path.name)
        return pipeline.run_stage("adapt", here)
    return 0


def collect_shard(cfg: RunConfig, ctx: DistributedContext, run_dir: RunDir | None) -> Data:
    """Each rank collects its share of the training tasks; returns a ``pipeline.Data``."""
    from eaml_ssm import pipeline
    from eaml_ssm.collect import build_store, max_rows
    from eaml_ssm.tasks import get_family, sample_tasks

    if cfg.num_tasks < ctx.world_size:
        raise ValueError(
            f"--num_tasks ({cfg.num_tasks}) must be >= the number of ranks ({ctx.world_size}): "
            "every rank collects its own share of the training tasks"
        )
    if cfg.meta_batch_size < ctx.world_size:
        raise ValueError(
            f"--meta_batch_size ({cfg.meta_batch_size}) must be >= the number of ranks "
            f"({ctx.world_size}): with fewer tasks per meta-batch some ranks would idle"
        )
    if cfg.meta_batch_size % ctx.world_size:
        log.warning(
            "--meta_batch_size %d is not a multiple of the %d ranks: some ranks get one task "
            "more per meta-step than others (correct, but the others wait)",
            cfg.meta_batch_size,
            ctx.world_size,
        )
    tasks = sample_tasks(cfg.env_name, cfg.num_tasks, seed=cfg.seed, split="train")
    mine = shard_tasks(cfg.num_tasks, ctx.rank, ctx.world_size)
    steps, episodes = pipeline.collection_length(cfg)
    rows = max_rows([tasks[i] for i in mine], steps, episodes_per_task=episodes)
    capacity = min(rows, -(-cfg.buffer_size * len(mine) // cfg.num_tasks))
    t0 = time.perf_counter()
    store, stats = build_store(
        [tasks[i] for i in mine],
        steps,
        episodes_per_task=episodes,
        capacity=capacity,
        store_seed=cfg.seed + ctx.rank,
        task_ids=mine,
        num_workers=cfg.workers,
        seed=cfg.seed,
        progress=None if ctx.is_main and not cfg.quiet else False,
    )
    counts = torch.tensor([stats.transitions, stats.episodes], dtype=torch.float64)
    counts = all_reduce_sum(counts.to(ctx.device), ctx, "all-reduce of the collection counts")
    log.info(
        "collected %d transitions from %d %s tasks on %d ranks in %.1f s",
        int(counts[0]),
        len(tasks),
        cfg.env_name,
        ctx.world_size,
        time.perf_counter() - t0,
    )
    if run_dir is not None:
        run_dir.log_metrics(
            "collect",
            transitions=int(counts[0]),
            episodes=int(counts[1]),
            seconds=stats.seconds,
            world_size=ctx.world_size,
        )
        run_dir.write_json("tasks.json", [{"task_id": i, **t.params} for i, t in enumerate(tasks)])
    norm = global_normalizer(store, ctx)
    return pipeline.Data(get_family(cfg.env_name), tasks, store, norm)


def _load_resume(
    cfg: RunConfig, run_dir: RunDir | None, ctx: DistributedContext
) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint (if any); every rank gets the payload."""
    from eaml_ssm.artifacts import load_checkpoint
    from eaml_ssm.config import to_dict

    def read() -> dict[str, Any] | None:
        assert run_dir is not None  # rank 0
        if not run_dir.checkpoint_path.exists():
            return None
        return load_checkpoint(run_dir.checkpoint_path, to_dict(cfg))

    return _agree(ctx, read, "broadcast of the checkpoint")


def train(
    cfg: RunConfig, ctx: DistributedContext, run_dir: RunDir | None, *, resume: bool = False
) -> Trained:
    """Meta-train on every rank; rank 0 (``run_dir`` not None there) writes. Returns Trained."""
    from eaml_ssm import pipeline
    from eaml_ssm.artifacts import save_checkpoint

    if run_dir is not None:
        run_dir.write_json("config.json", _config_dict(cfg))
        log.info("run folder: %s (%d ranks, %s)", run_dir.path, ctx.world_size, ctx.backend)
    data = collect_shard(cfg, ctx, run_dir)
    model = pipeline.build_model(cfg, data.family, ctx.device)
    maml = pipeline.build_maml(cfg, model)
    trained = pipeline.Trained(model, maml, [], 0.0)
    start = 0
    ck = _load_resume(cfg, run_dir, ctx) if resume else None
    if ck is not None:
        model.load_state_dict(ck["model"])
        maml.load_state_dict(ck["maml"])
        data.normalizer.load_state_dict(ck["normalizer"])
        trained.losses, start = list(ck["losses"]), int(ck["step"])
        # No RNG state to restore: batches are drawn from (seed, step), and rank 0's CUDA RNG
        # states would not fit a job with a different number of GPUs.
        if run_dir is not None:
            run_dir.truncate_metrics("train", start)
        log.info("resuming meta-training at step %d of %d", start, cfg.num_epochs)
    broadcast_parameters([*model.parameters(), *model.buffers(), *maml.inner_lrs.values()], ctx)
    sampler = make_sampler(cfg, data.store, ctx)
    loader = sampler.loader(data.normalizer, ctx.device, start)  # the one feed, per rank
    try:
        trained.seconds = _train_steps(cfg, ctx, run_dir, data, trained, sampler, loader, start)
    finally:
        loader.close()
    assert_same_across_ranks([*maml.meta_parameters()], ctx, "meta-learned weights")
    if run_dir is not None:
        if start == cfg.num_epochs and not run_dir.checkpoint_path.exists():
            payload = pipeline.checkpoint_payload(cfg, trained, data, start)
            save_checkpoint(run_dir.checkpoint_path, payload)
        _write_summary(cfg, ctx, run_dir, trained, start)
    return trained


def _train_steps(
    cfg: RunConfig,
    ctx: DistributedContext,
    run_dir: RunDir | None,
    data: Data,
    trained: Trained,
    sampler: ShardedTaskSampler,
    loader: StoreLoader,
    start: int,
) -> float:
    """The meta-steps start..num_epochs on this rank; returns the seconds they took."""
    from eaml_ssm import pipeline
    from eaml_ssm.artifacts import save_checkpoint

    every = max(1, cfg.num_epochs // 10)
    quiet = cfg.quiet or not ctx.is_main
    t0 = time.perf_counter()
    bar = progress(range(start, cfg.num_epochs), desc="meta-train", unit="step", quiet=quiet)
    for step in bar:
        batch, local = sampler.next_batch(loader, step, cfg.meta_batch_size)
        loss = distributed_meta_step(trained.maml, batch, len(local), cfg.meta_batch_size, ctx)
        if not np.isfinite(loss):
            raise FloatingPointError(f"meta-training diverged at step {step} (loss {loss})")
        trained.losses.append(loss)
        bar.set_postfix(loss=f"{loss:.4f}")
        if run_dir is not None:
            run_dir.log_metrics("train", step=step, meta_loss=loss)
        if (step + 1) % every == 0 or step + 1 == cfg.num_epochs:
            log.info("meta-step %d/%d  query loss %.4f", step + 1, cfg.num_epochs, loss)
            if run_dir is not None:
                payload = pipeline.checkpoint_payload(cfg, trained, data, step + 1)
                save_checkpoint(run_dir.checkpoint_path, payload)
    return time.perf_counter() - t0


def _config_dict(cfg: RunConfig) -> dict[str, Any]:
    from eaml_ssm.config import to_dict

    return to_dict(cfg)


def _write_summary(
    cfg: RunConfig, ctx: DistributedContext, run_dir: RunDir, trained: Trained, start: int
) -> None:
    steps = cfg.num_epochs - start
    rate = steps * cfg.meta_batch_size / trained.seconds if trained.seconds > 0 else None
    run_dir.write_json(
        "distributed.json",
        {
            "world_size": ctx.world_size,
            "backend": ctx.backend,
            "device": str(ctx.device),
            "meta_steps": steps,
            "first_step": start,
            "seconds": round(trained.seconds, 3),
            "tasks_per_second": rate,
        },
    )
    log.info("meta-trained %d steps on %d ranks in %.1f s", steps, ctx.world_size, trained.seconds)
