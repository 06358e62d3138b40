"""MAML / Meta-SGD for stateless and stateful (hidden-state) models, on ``torch.func``.

Shapes: see the glossary in eaml_ssm/__init__.py (here ``b`` counts the points or sequences of
one task, and ``b'`` the query's, which may differ from the support's for a stateless model).

A *task* is a tuple ``(support_x, support_y, query_x, query_y)``. For a stateless model (any
``nn.Module`` whose ``forward`` takes only ``x``) the tensors are e.g. ``(b, d)`` / ``(b, o)``.
For a stateful model (its ``forward(x, hidden_state, ...)`` returns ``(y, next_hidden_state)``,
like :class:`eaml_ssm.ssm.SSM`) they are sequences: ``(b, s, d)`` / ``(b, s, o)`` for the
support, ``(b, q, d)`` / ``(b, q, o)`` for the query.

Engine: the inner loop is ``torch.func.grad`` of a ``torch.func.functional_call`` loss, and the
update is ``fast = params - lr * grad``. Plain autograd then differentiates the query loss through
the inner loop, which gives the full second-order meta-gradient; ``first_order=True`` detaches the
inner gradients (FOMAML). A meta-batch of same-shaped tasks is evaluated with ``torch.func.vmap``
over the task axis; tasks of different shapes run in a Python loop. Both run the same per-task
function, so they give the same meta-gradient (up to float rounding).

Hidden state of stateful models (the contract):
    * The support sequences start from ``initial_hidden_state`` (default: ``model.init_hidden(b)``,
      zeros; a stateful model without ``init_hidden`` must be given a state). Every inner step
      re-runs the support from that same initial state - the state is never advanced by the
      inner loop itself.
    * The query continues the same stream: by default it starts from the support's final hidden
      state, computed by running the support through the *adapted* (fast) weights, i.e. exactly
      what an online model that has just adapted on the last window would carry forward. This
      needs query batch == support batch. Pass ``query_hidden_state`` to start the query from a
      given state instead (for queries that are separate windows).

Why one module: `MetaMAML` is one class whose inner loop, meta-gradient (vmap and loop
paths), learned step sizes and original-project API (``adapt_task``, ``meta_update``) all act
on the same parameters and state dict; the functional call it shares with the adapter is
`eaml_ssm.model_call`.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import grad, vmap

from eaml_ssm.model_call import call, initial_hidden, is_stateful

__all__ = ["MetaMAML", "TaskBatch"]

logger = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]
Params = dict[str, Tensor]
HiddenArg = Tensor | Sequence[Tensor] | None


class TaskBatch(NamedTuple):
    """A meta-batch of same-shaped tasks stacked on a leading task axis t (the vmap fast path)."""

    support_x: Tensor  # (t, b, [s,] d)
    support_y: Tensor  # (t, b, [s,] o)
    query_x: Tensor  # (t, b', [q,] d)
    query_y: Tensor  # (t, b', [q,] o)
    support_reset: Tensor | None = None  # (t, b, s) episode starts (stateful models only)
    query_reset: Tensor | None = None  # (t, b', q)


class Task(NamedTuple):
    """One task (internal): the TaskBatch fields without the task axis."""

    support_x: Tensor  # (b, [s,] d)
    support_y: Tensor  # (b, [s,] o)
    query_x: Tensor  # (b', [q,] d)
    query_y: Tensor  # (b', [q,] o)
    support_reset: Tensor | None = None  # (b, s)
    query_reset: Tensor | None = None  # (b', q)


def _mse(pred: Tensor, target: Tensor) -> Tensor:
    return F.mse_loss(pred, target)


class MetaMAML:
    """Model-agnostic meta-learning (MAML, FOMAML, Meta-SGD) for any ``nn.Module``.

    Args:
        model: the network whose parameters are meta-learned (updated in place by the
            meta-optimizer; never by the inner loop).
        inner_lr: inner-loop SGD step size (the initial value of every learned step size when
            ``learn_inner_lr``).
        outer_lr: learning rate of the meta-optimizer (Adam unless ``optimizer`` is given).
        first_order: detach the inner gradients (first-order MAML). Default: full second order.
        num_inner_steps: inner SGD steps per task during meta-training and the default of
            :meth:`adapt_task`.
        learn_inner_lr: Meta-SGD - a learned step size per parameter entry (same shape as the
            parameter), meta-trained with the model.
        loss_fn: ``loss_fn(pred, target) -> scalar``; default mean squared error.
        optimizer: a factory ``params -> torch.optim.Optimizer`` replacing the default Adam.
        use_vmap: run a meta-batch of same-shaped tasks through ``torch.func.vmap``.
        stateful: override the automatic detection (``forward`` has a ``hidden_state`` argument).
        grad_clip_norm: clip the meta-gradient to this global norm before each meta step.

    See the module docstring for the hidden-state contract of stateful models.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        first_order: bool = False,
        num_inner_steps: int = 1,
        learn_inner_lr: bool = False,
        loss_fn: LossFn | None = None,
        optimizer: Callable[[list[Tensor]], torch.optim.Optimizer] | None = None,
        use_vmap: bool = True,
        stateful: bool | None = None,
        grad_clip_norm: float | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(num_inner_steps, int) or num_inner_steps < 0:
            raise ValueError(f"num_inner_steps must be an int >= 0, got {num_inner_steps!r}")
        if inner_lr < 0 or outer_lr <= 0:
            raise ValueError(f"need inner_lr >= 0 and outer_lr > 0, got {inner_lr}, {outer_lr}")
        self.model = model
        self.inner_lr = float(inner_lr)
        self.outer_lr = float(outer_lr)
        self.first_order = bool(first_order)
        self.num_inner_steps = num_inner_steps
        self.learn_inner_lr = bool(learn_inner_lr)
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else _mse
        self.use_vmap = bool(use_vmap)
        self.stateful = is_stateful(model) if stateful is None else bool(stateful)
        self.grad_clip_norm = grad_clip_norm
        # Meta-SGD step sizes, one tensor per adapted parameter, same shape (leaf tensors).
        self.inner_lrs: dict[str, Tensor] = {}
        if self.learn_inner_lr:
            self.inner_lrs = {
                name: torch.full_like(p, self.inner_lr).detach().requires_grad_(True)
                for name, p in self._named_params().items()
            }
        if self.use_vmap and not self.first_order and _has_native_layer_norm(model):
            logger.warning(
                "model contains nn.LayerNorm: its second-order gradient under vmap is inexact "
                "in torch 2.13 (use eaml_ssm.ssm.LayerNorm, first_order=True or use_vmap=False)"
            )
        factory = optimizer if optimizer is not None else self._adam
        self.optimizer = factory(self.meta_parameters())

    @property
    def meta_optimizer(self) -> torch.optim.Optimizer:
        """The original project's name of :attr:`optimizer` (the meta-optimizer)."""
        return self.optimizer

    def _adam(self, params: list[Tensor]) -> torch.optim.Optimizer:
        return torch.optim.Adam(params, lr=self.outer_lr)

    # ----- parameters ------------------------------------------------------------------------
    def _named_params(self) -> Params:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _buffers(self) -> Params:
        return dict(self.model.named_buffers())

    def meta_parameters(self) -> list[Tensor]:
        """Every tensor the meta-optimizer trains: model parameters, then learned step sizes."""
        return [*self._named_params().values(), *self.inner_lrs.values()]

    def inner_lr_for(self, name: str) -> float | Tensor:
        """Step size used for parameter ``name``: the fixed float, or its learned tensor."""
        if name not in self._named_params():
            raise KeyError(f"{name!r} is not a trainable parameter of the model")
        return self.inner_lrs[name] if self.learn_inner_lr else self.inner_lr

    def _lrs(self) -> Mapping[str, Tensor | float]:
        if self.learn_inner_lr:
            return self.inner_lrs
        return dict.fromkeys(self._named_params(), self.inner_lr)

    # ----- forward pieces --------------------------------------------------------------------
    def functional_forward(
        self,
        x: Tensor,
        hidden_state: Tensor | None,
        params: Mapping[str, Tensor],
        reset: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """Run the model with the given parameters; returns ``(y, next_hidden_state)``.

        For a stateless model ``hidden_state`` is ignored and ``next_hidden_state`` is None.
        A stateful model needs a hidden state (ValueError otherwise); ``reset`` (episode-start
        mask, e.g. (b, l)) is passed on as ``forward(x, hidden_state, reset=reset)``.
        """
        if not self.stateful and reset is not None:
            raise ValueError("reset masks need a stateful model; this model is stateless")
        tensors = {**self._buffers(), **params}
        return call(self.model, tensors, x, hidden_state, reset, stateful=self.stateful)

    def _default_hidden(self, x: Tensor) -> Tensor | None:
        if not self.stateful:
            return None
        return initial_hidden(self.model, x.shape[0], hint="pass initial_hidden_state explicitly")

    def _loss(
        self,
        params: Params,
        x: Tensor,
        y: Tensor,
        hidden: Tensor | None,
        loss_fn: LossFn,
        reset: Tensor | None = None,
    ) -> Tensor:
        pred, _ = self.functional_forward(x, hidden, params, reset)
        return loss_fn(pred, y)

    def _adapt(
        self,
        params: Params,
        lrs: Mapping[str, Tensor | float],
        task: Task,
        hidden: Tensor | None,
        loss_fn: LossFn,
        num_steps: int,
    ) -> Params:
        """``num_steps`` SGD steps on the support loss; each re-runs the support from ``hidden``."""

        def support_loss(p: Params) -> Tensor:
            return self._loss(
                p, task.support_x, task.support_y, hidden, loss_fn, task.support_reset
            )

        fast = dict(params)
        for _ in range(num_steps):
            grads = grad(support_loss)(fast)
            if self.first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            fast = {k: fast[k] - lrs[k] * grads[k] for k in fast}
        return fast

    def _query_hidden(self, fast: Params, task: Task, hidden: Tensor | None) -> Tensor | None:
        """The support's final state under the adapted weights (stateful models), else None."""
        if not self.stateful:
            return None
        _, final = self.functional_forward(task.support_x, hidden, fast, task.support_reset)
        return final

    def _task_loss(
        self,
        params: Params,
        lrs: Mapping[str, Tensor | float],
        task: Task,
        hidden: Tensor | None,
        query_hidden: Tensor | None,
        loss_fn: LossFn,
    ) -> Tensor:
        """Query loss of one task after adaptation (differentiable w.r.t. params and lrs)."""
        fast = self._adapt(params, lrs, task, hidden, loss_fn, self.num_inner_steps)
        if query_hidden is None:
            query_hidden = self._query_hidden(fast, task, hidden)
        return self._loss(fast, task.query_x, task.query_y, query_hidden, loss_fn, task.query_reset)

    # ----- public API -----------------------------------------------------------------------
    def adapt_task(
        self,
        support_x: Tensor,
        support_y: Tensor,
        initial_hidden_state: Tensor | None = None,
        loss_fn: LossFn | None = None,
        num_steps: int | None = None,
        support_reset: Tensor | None = None,
    ) -> OrderedDict[str, Tensor]:
        """Fast weights after ``num_steps`` inner SGD steps (default ``num_inner_steps``).

        An ``OrderedDict`` in ``model.named_parameters()`` order, as in the original.

        The model's own parameters are not modified. The result stays differentiable w.r.t. the
        meta-parameters; call it under ``torch.no_grad()`` when only the weights are wanted.
        For a stateful model the support starts from ``initial_hidden_state``
        (default ``model.init_hidden(b)``), with optional episode starts ``support_reset``;
        use :meth:`functional_forward` with the returned weights to predict.
        """
        steps = self.num_inner_steps if num_steps is None else num_steps
        if not isinstance(steps, int) or steps < 0:
            raise ValueError(f"num_steps must be an int >= 0, got {steps!r}")
        hidden = initial_hidden_state
        if hidden is None:
            hidden = self._default_hidden(support_x)
        task = Task(support_x, support_y, support_x, support_y, support_reset, None)
        fast = self._adapt(
            self._named_params(), self._lrs(), task, hidden, loss_fn or self.loss_fn, steps
        )
        return OrderedDict(fast)

    def get_fast_weights(self) -> OrderedDict[str, Tensor]:
        """A copy of the model's trainable weights, still differentiable (as in the original)."""
        return OrderedDict((n, p.clone()) for n, p in self._named_params().items())

    def meta_loss(
        self,
        tasks: Sequence[Sequence[Tensor | None]] | TaskBatch,
        initial_hidden_state: HiddenArg = None,
        loss_fn: LossFn | None = None,
        query_hidden_state: HiddenArg = None,
    ) -> Tensor:
        """Mean post-adaptation query loss over the meta-batch, without stepping the optimizer.

        ``tasks`` is a list of ``(support_x, support_y, query_x, query_y)`` tuples (stateful
        models may append ``support_reset, query_reset`` episode-start masks, either may be
        None) or a :class:`TaskBatch` of stacked tensors. ``initial_hidden_state`` /
        ``query_hidden_state``: one tensor shared by every task, or a sequence with one tensor
        per task (stateful models only). Backpropagate the result to get the meta-gradient
        (e.g. to all-reduce it across ranks before :meth:`step`).
        """
        loss_fn = loss_fn or self.loss_fn
        batch = self._as_batch(tasks)
        if batch is not None:
            return self._meta_loss_vmap(batch, initial_hidden_state, query_hidden_state, loss_fn)
        task_list = self._as_list(tasks)
        losses = []
        params, lrs = self._named_params(), self._lrs()
        for i, task in enumerate(task_list):
            hidden = _pick(initial_hidden_state, i, len(task_list), "initial_hidden_state")
            if hidden is None:
                hidden = self._default_hidden(task.support_x)
            q_hidden = _pick(query_hidden_state, i, len(task_list), "query_hidden_state")
            losses.append(self._task_loss(params, lrs, task, hidden, q_hidden, loss_fn))
        return torch.stack(losses).mean()

    def meta_update(
        self,
        tasks: Sequence[Sequence[Tensor | None]] | TaskBatch,
        initial_hidden_state: HiddenArg = None,
        loss_fn: LossFn | None = None,
        query_hidden_state: HiddenArg = None,
    ) -> float:
        """One meta-optimizer step on the meta-batch; returns the meta-loss before the step."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.meta_loss(tasks, initial_hidden_state, loss_fn, query_hidden_state)
        loss.backward()
        self.step()
        return float(loss.detach())

    def step(self) -> None:
        """Clip (if configured) and apply the gradients already in ``.grad``, then zero them."""
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.meta_parameters(), self.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def adaptation_curve(
        self,
        tasks: TaskBatch,
        num_steps: int,
        initial_hidden_state: Tensor | None = None,
        loss_fn: LossFn | None = None,
        inner_lr: float | None = None,
    ) -> Tensor:
        """Per-task query loss after 0, 1, ..., ``num_steps`` inner steps, shape (t, num_steps+1).

        Evaluation helper (no meta-gradient; run under ``torch.no_grad()``), vmapped over the
        stacked tasks. Uses the learned step sizes for Meta-SGD unless ``inner_lr`` is given.
        For stateful models the query continues from the support's final state under the
        weights of each step, and ``initial_hidden_state`` (b, z) is shared by every task.
        """
        if not isinstance(tasks, TaskBatch):
            raise TypeError(f"adaptation_curve needs a TaskBatch, got {type(tasks).__name__}")
        loss_fn = loss_fn or self.loss_fn
        lrs = dict.fromkeys(self._named_params(), inner_lr) if inner_lr is not None else self._lrs()
        params = {k: v.detach() for k, v in self._named_params().items()}

        def curve(task: Task) -> Tensor:
            hidden = initial_hidden_state
            if hidden is None:
                hidden = self._default_hidden(task.support_x)
            fast, out = params, []
            for step in range(num_steps + 1):
                q_hidden = self._query_hidden(fast, task, hidden)
                out.append(
                    self._loss(
                        fast, task.query_x, task.query_y, q_hidden, loss_fn, task.query_reset
                    )
                )
                if step < num_steps:
                    fast = self._adapt(fast, lrs, task, hidden, loss_fn, 1)
            return torch.stack(out)  # (num_steps + 1,)

        batch = Task(*tasks)
        return vmap(curve, in_dims=(_task_in_dims(batch),), randomness="different")(batch)

    # ----- meta-batch plumbing ---------------------------------------------------------------
    def _as_batch(self, tasks: Any) -> TaskBatch | None:
        """A TaskBatch for the vmap path, or None for the loop path."""
        if isinstance(tasks, TaskBatch):
            return tasks if self.use_vmap else None
        task_list = self._as_list(tasks)
        if not self.use_vmap or len(task_list) < 2:
            return None
        shapes = {tuple(None if t is None else tuple(t.shape) for t in task) for task in task_list}
        if len(shapes) != 1:  # ragged shapes, or resets on some tasks only: loop
            return None
        parts = [
            None if part[0] is None else torch.stack(part)  # type: ignore[arg-type]
            for part in zip(*task_list, strict=True)
        ]
        return TaskBatch(*parts)  # type: ignore[arg-type]

    def _as_list(self, tasks: Any) -> list[Task]:
        if isinstance(tasks, TaskBatch):
            n_tasks = tasks.support_x.shape[0]
            rows = [[None if p is None else p[i] for p in tasks] for i in range(n_tasks)]
            return [Task(*row) for row in rows]  # type: ignore[arg-type]
        if isinstance(tasks, Tensor) or not isinstance(tasks, Sequence) or len(tasks) == 0:
            raise TypeError(
                "tasks must be a non-empty list of (support_x, support_y, query_x, query_y) "
                f"tuples or a TaskBatch, got {type(tasks).__name__}"
            )
        return [_as_task(i, task) for i, task in enumerate(tasks)]

    def _meta_loss_vmap(
        self, batch: TaskBatch, hidden: HiddenArg, q_hidden: HiddenArg, loss_fn: LossFn
    ) -> Tensor:
        n_tasks = batch.support_x.shape[0]
        h_arg, h_dim = _stack_hidden(hidden, n_tasks, "initial_hidden_state")
        q_arg, q_dim = _stack_hidden(q_hidden, n_tasks, "query_hidden_state")
        if h_arg is None and self.stateful:
            h_arg, h_dim = self._default_hidden(batch.support_x[0]), None
        params, lrs = self._named_params(), self._lrs()

        def task_loss(task: Task, h: Tensor | None, qh: Tensor | None) -> Tensor:
            return self._task_loss(params, lrs, task, h, qh, loss_fn)

        task = Task(*batch)
        in_dims = (_task_in_dims(task), h_dim, q_dim)
        losses = vmap(task_loss, in_dims=in_dims, randomness="different")(task, h_arg, q_arg)
        return losses.mean()  # mean over the t tasks

    # ----- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Meta-optimizer state and learned step sizes (the model is saved separately)."""
        return {
            "inner_lrs": {k: v.detach().clone() for k, v in self.inner_lrs.items()},
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():
            for name, value in state["inner_lrs"].items():
                if name not in self.inner_lrs:
                    raise KeyError(f"learned step size {name!r} not present (learn_inner_lr?)")
                self.inner_lrs[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])


def _has_native_layer_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.LayerNorm) for m in model.modules())


def _as_task(i: int, task: Any) -> Task:
    """Validate one user task: 4 tensors, optionally followed by two reset masks (or None)."""
    ok = (
        not isinstance(task, Tensor)
        and isinstance(task, Sequence)
        and len(task) in (4, 6)
        and all(isinstance(t, Tensor) for t in task[:4])
        and all(t is None or isinstance(t, Tensor) for t in task[4:])
    )
    if not ok:
        raise TypeError(
            f"task {i} must be a (support_x, support_y, query_x, query_y) tuple of tensors, "
            "optionally followed by (support_reset, query_reset)"
        )
    return Task(*task)


def _task_in_dims(task: Task) -> Task:
    """vmap in_dims for a stacked Task: 0 for tensors, None for absent resets."""
    return Task(*(None if t is None else 0 for t in task))  # type: ignore[arg-type]


def _pick(hidden: HiddenArg, i: int, n_tasks: int, what: str) -> Tensor | None:
    """Task i's hidden state from a shared tensor or a per-task sequence."""
    if hidden is None or isinstance(hidden, Tensor):
        return hidden
    if len(hidden) != n_tasks:
        raise ValueError(f"{what} has {len(hidden)} entries but there are {n_tasks} tasks")
    return hidden[i]


def _stack_hidden(hidden: HiddenArg, n_tasks: int, what: str) -> tuple[Tensor | None, int | None]:
    """(argument, vmap in_dim) for a shared tensor (None) or a per-task sequence (0)."""
    if hidden is None or isinstance(hidden, Tensor):
        return hidden, None
    if len(hidden) != n_tasks:
        raise ValueError(f"{what} has {len(hidden)} entries but there are {n_tasks} tasks")
    return torch.stack(list(hidden)), 0
