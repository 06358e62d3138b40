"""The process group of a torchrun job and its collectives, each with a timeout.

A rank joins the group from torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``): gloo on CPU, NCCL on CUDA, with a timeout on the
rendezvous and on every collective, so a rank that dies or hangs makes the others stop with
:class:`RankFailure` instead of waiting forever. Shapes: see the glossary in
eaml_ssm/__init__.py (``p``: the meta-parameters, or for a broadcast or a check the weights
and buffers of one dtype, flattened).
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from eaml_ssm.runtime import resolve_device

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 300.0
TIMEOUT_ENV = "EAML_DIST_TIMEOUT"  # seconds; overrides the default collective timeout
_REQUIRED_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
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
        return DistributedContext(device=resolve_device(device, local_rank=0), timeout_s=timeout)
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
    dev = resolve_device(device, local_rank)
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
    return torch.cat([t.detach().reshape(-1) for t in tensors])  # (p,)


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
        flat = _flat(group).to(ctx.device)  # (p,)
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
    flat = torch.cat(parts).to(ctx.device)  # (p [+ extra],)
    all_reduce_sum(flat, ctx, "all-reduce of the meta-gradients")
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.device)
        offset += n
    return flat[offset:] if extra is not None else None


def assert_same_across_ranks(
    tensors: Sequence[Tensor], ctx: DistributedContext, what: str = "weights"
) -> None:
    """Raise RuntimeError unless every rank holds bit-identical values (max == min == mine)."""
    if not ctx.active:
        return
    for group in _by_dtype(tensors):
        mine = _flat(group).to(ctx.device)  # (p,)
        hi, lo = mine.clone(), mine.clone()
        with _collective(ctx, f"consistency check of the {what}"):
            _wait(ctx, dist.all_reduce(hi, op=dist.ReduceOp.MAX, async_op=True))
            _wait(ctx, dist.all_reduce(lo, op=dist.ReduceOp.MIN, async_op=True))
        if not (torch.equal(hi, mine) and torch.equal(lo, mine)):
            worst = float((hi - lo).abs().max())
            raise RuntimeError(f"{ctx}: the {what} differ across ranks (max spread {worst:.3g})")


def agree(ctx: DistributedContext, fn: Callable[[], T], what: str) -> T:
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
