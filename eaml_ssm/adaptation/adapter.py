"""Hybrid test-time adaptation of a meta-learned model.

The adapter fine-tunes the model it was given, in place, on a window of the new task with

    loss = loss_current + experience_weight * loss_experience        (normalize=False)
    loss = (loss_current + experience_weight * loss_experience) / (1 + experience_weight)

plus an optional L2 anchor ``anchor_weight * ||theta - theta*||^2`` to the meta-learned
weights ``theta*``. ``loss_experience`` is measured on a batch drawn from the experience store
(rows, or sequence windows with a burn-in for stateful models). When the store is empty (or
``experience_weight == 0``) the loss is exactly ``loss_current``.

Semantics that the original project got wrong and this module gets right:

- every inner step recomputes the loss on the *same* window from the *same* initial hidden
  state; the hidden state is never advanced across inner steps;
- like the original and the usual test-time-adaptation libraries (Tent and its successors),
  ``update_step`` writes the adapted weights into the model it was given; the adapter keeps a
  snapshot of the starting weights, so ``reset()`` restores them exactly. Code that must not
  touch the meta-learned weights (evaluation, planning) adapts a ``fork()``, which owns a copy;
- a step whose loss is non-finite or explodes (``> max_loss_ratio`` times the loss at the
  start of the update) is rolled back, logged, and counted in ``Adapter.stats``.

This module is the `Adapter` alone (its step sizes, Adam moments, replay source and config
live beside it). Why one module: it is longer than the house's ~400 lines because the
adapter is one object with one invariant, the weights it holds: their snapshot and reset,
the inner-step loop that changes them with its rollback guard, and the hybrid objective it
differentiates share that state; cut apart, each piece would have to reach back into the
others.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from eaml_ssm.adaptation.adam import AdamState
from eaml_ssm.adaptation.config import AdaptationConfig
from eaml_ssm.adaptation.replay import ExperienceSource, find_ring
from eaml_ssm.adaptation.step_sizes import learned_inner_lrs, resolve_lrs
from eaml_ssm.model_call import call, initial_hidden, is_stateful

if TYPE_CHECKING:
    from eaml_ssm.feed.replay import Transform

logger = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor], Tensor]
ParamDict = dict[str, Tensor]


@dataclass
class UpdateResult:
    """What one ``update_step`` did (also kept as ``Adapter.last_update``)."""

    loss: float  # hybrid loss at the weights before the update
    steps: int  # accepted gradient steps
    losses: list[float] = field(default_factory=list)  # loss at each evaluated iterate
    current_losses: list[float] = field(default_factory=list)  # loss_current at each iterate
    rolled_back: bool = False
    reason: str = ""  # why the update stopped early ("non-finite loss", ...)


class Adapter:
    """Hybrid test-time adaptation of a model, in place (as in the original project).

    ``update_step`` writes the adapted weights into ``model`` (moved to ``device`` when one is
    given); ``reset()`` writes back the weights the adapter started from. ``fork()`` gives an
    adapter on its own copy of the model, for code that must keep the given weights.

    Example::

        adapter = Adapter.from_maml(maml, store, device="cpu", experience_weight=0.3)
        trial = adapter.fork()  # adapt a copy: maml.model keeps the meta-learned weights
        loss, steps = trial.update_step(x_window, y_window, h_at_window_start)
        y_next, h_next = trial.predict(x_next, h_after_window)
        trial.reset()  # back to the meta-learned weights, exactly
    """

    def __init__(
        self,
        model: nn.Module,
        config: AdaptationConfig | None = None,
        experience_buffer: Any = None,
        device: torch.device | str | None = None,
        *,
        loss_fn: LossFn | None = None,
        param_lrs: Mapping[str, float | Tensor] | None = None,
        stateful: bool | None = None,
        transform: Transform | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.config = config if config is not None else AdaptationConfig()
        if not isinstance(self.config, AdaptationConfig):
            raise TypeError(f"config must be an AdaptationConfig, got {type(config).__name__}")
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("model has no parameters to adapt")
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = first.dtype
        # the adapter adapts `model` itself, so the model lives where the adapter computes
        self.model = model.to(self.device)
        self.stateful = is_stateful(model) if stateful is None else bool(stateful)
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else nn.functional.mse_loss
        self.experience = ExperienceSource(
            experience_buffer,
            self.device,
            self.dtype,
            self.config.seed,
            transform,
            old_tasks=self._old_tasks(experience_buffer),
        )
        # theta*: a detached snapshot of the starting weights, for reset() and the anchor.
        self._meta: ParamDict = {
            n: p.detach().to(self.device).clone()
            for n, p in model.named_parameters()
            if p.requires_grad
        }
        self._frozen: ParamDict = {
            n: p.detach().to(self.device).clone()
            for n, p in model.named_parameters()
            if not p.requires_grad
        }
        self._frozen.update(
            {n: b.detach().to(self.device).clone() for n, b in model.named_buffers()}
        )
        self._given_lrs = dict(param_lrs or {})
        self._lrs = self._resolve_lrs(self._given_lrs)
        self.stats: dict[str, int] = {}
        self.last_update: UpdateResult | None = None
        self.reset()
        self.stats = _zero_stats()

    @classmethod
    def from_maml(
        cls,
        maml: Any,
        experience_buffer: Any = None,
        device: torch.device | str | None = None,
        *,
        loss_fn: LossFn | None = None,
        transform: Transform | None = None,
        **overrides: Any,
    ) -> Adapter:
        """Adapter for ``maml.model`` using the meta-trained step size(s) and step count.

        Per-element learned rates (Meta-SGD style tensors) are passed through too; scalar
        ones also land in ``config.param_lrs``. ``overrides`` set other config fields.
        """
        config = AdaptationConfig.from_maml(maml, **overrides)
        lrs = learned_inner_lrs(maml)
        if "param_lrs" in overrides:
            lrs = {}
        return cls(
            maml.model,
            config,
            experience_buffer,
            device,
            loss_fn=loss_fn,
            param_lrs=lrs,
            transform=transform,
        )

    @property
    def experience_buffer(self) -> Any:
        """The experience store or buffer the adapter replays (as given; the original's name)."""
        return self.experience.buffer

    # ---- weights ----------------------------------------------------------------------------
    @property
    def _params(self) -> ParamDict:
        """The adapted weights: the model's own trainable parameters (detached views)."""
        return {n: p.detach() for n, p in self.model.named_parameters() if n in self._meta}

    @_params.setter
    def _params(self, params: Mapping[str, Tensor]) -> None:
        with torch.no_grad():
            for n, p in self.model.named_parameters():
                if n in self._meta:
                    p.copy_(params[n])

    @property
    def params(self) -> ParamDict:
        """A copy of the adapted weights (frozen parameters and buffers excluded)."""
        return {n: p.clone() for n, p in self._params.items()}

    @property
    def meta_params(self) -> ParamDict:
        """The meta-learned weights theta* (detached copies' views; do not modify)."""
        return dict(self._meta)

    def reset(self) -> None:
        """Write the starting (meta-learned) weights back into the model, exactly."""
        self._params = self._meta

    def fork(self, **overrides: Any) -> Adapter:
        """An independent adapter on its own copy of the model, at the current weights.

        Adapting the fork never changes ``self.model``. Same store and theta* (so ``reset()``
        and the anchor still refer to the meta-learned weights); its own weights, stats,
        random stream (restarted from ``config.seed``, so a fork's draws do not depend on
        what other forks did) and, with ``overrides``, config (``param_lrs=None`` there also
        drops learned per-element rates, so ``learning_rate`` applies everywhere). Use it to
        score "few-shot" retention (adapt a copy on an old task) or to build method variants
        without touching ``self``.
        """
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)  # its own weights
        # same store, its own draw sequence (restarted from config.seed below)
        other.stats = _zero_stats()
        other.last_update = None
        if overrides:
            other.config = dataclasses.replace(self.config, **overrides)
            if "param_lrs" in overrides:  # replaces the learned per-parameter rates as well
                other._given_lrs = {}
            other._lrs = other._resolve_lrs(other._given_lrs)
        other.experience = self.experience.fork(
            other.config.seed, other._old_tasks(self.experience.buffer)
        )
        return other

    def _old_tasks(self, buffer: Any) -> frozenset[int] | None:
        """The task ids replay is limited to (``replay_live=False``), else None (all)."""
        ring = find_ring(buffer)
        if self.config.replay_live or ring is None or len(ring) == 0:
            return None
        old = getattr(self, "experience", None)
        if old is not None and old.ring is ring and old.feed.old_tasks is not None:
            return old.feed.old_tasks  # a fork keeps the snapshot of the adapter it came from
        return frozenset(int(t) for t, c in ring.task_counts().items() if int(c) > 0)

    def load_params(self, params: Mapping[str, Tensor]) -> None:
        """Set the adapted weights (e.g. a saved adaptation); names must match."""
        missing = sorted(set(self._meta) - set(params))
        if missing:
            raise ValueError(f"load_params: missing parameters {missing}")
        self._params = {n: params[n].detach().to(self.device, self.dtype) for n in self._meta}

    def adapted_model(self) -> nn.Module:
        """An independent deep copy of ``model`` at the adapted weights."""
        return copy.deepcopy(self.model)

    def init_hidden(self, batch_size: int) -> Tensor | None:
        """Zero hidden state for a stateful model (on the adapter's device), else None."""
        if not self.stateful:
            return None
        hint = "pass hidden_state_current explicitly and use replay='rows'"
        return initial_hidden(self.model, batch_size, hint=hint).to(self.device)

    # ---- inference --------------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self, x: Tensor, hidden_state: Tensor | None = None, reset: Tensor | None = None
    ) -> Any:
        """Forward with the adapted weights: ``(y, h')`` for stateful models, else ``y``."""
        x = x.to(self.device, self.dtype)
        if self.stateful:
            h = self._hidden(hidden_state, x.shape[0])
            reset = None if reset is None else reset.to(self.device)
            return call(self.model, self._all(self._params), x, h, reset, stateful=True)
        return call(self.model, self._all(self._params), x, stateful=False)[0]

    # ---- adaptation -------------------------------------------------------------------------
    def update_step(
        self,
        x_current: Tensor,
        y_current: Tensor,
        hidden_state_current: Tensor | None = None,
        *,
        reset: Tensor | None = None,
    ) -> tuple[float, int]:
        """Adapt ``model`` in place on one window -> (loss before the update, accepted steps).

        ``x_current`` ``(b, l, d)`` or ``(b, d)``, ``y_current`` ``(b, l, o)`` or ``(b, o)``;
        ``hidden_state_current`` is the hidden state at the start of the window (zeros when
        None). Every inner step scores the same window from that same state. In
        ``mode="reset"`` the weights restart from theta* first (GrBAL). ``reset`` is the
        optional episode-start mask passed to a stateful model.
        """
        cfg = self.config
        x, y = self._check_window(x_current, y_current)
        h0 = self._hidden(hidden_state_current, x.shape[0])
        if cfg.mode == "reset":
            self.reset()
        reset = None if reset is None else reset.to(self.device)
        result = self._run_steps(x, y, h0, reset)
        self.last_update = result
        self.stats["updates"] += 1
        self.stats["steps"] += result.steps
        return result.loss, result.steps

    def loss(
        self,
        x_current: Tensor,
        y_current: Tensor,
        hidden_state_current: Tensor | None = None,
        params: Mapping[str, Tensor] | None = None,
        experience: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The adaptation objective at ``params`` (default: the adapted weights).

        Returns ``(total, loss_current)``. ``experience`` is an (obs, target) batch (rows or
        windows) to use instead of drawing one; pass ``None`` to draw per the config.
        """
        x, y = self._check_window(x_current, y_current)
        h0 = self._hidden(hidden_state_current, x.shape[0])
        use = dict(self._params if params is None else params)
        batch = experience if experience is not None else self._draw_experience(x)
        return self._objective(use, x, y, h0, None, batch)

    # ---- internals --------------------------------------------------------------------------
    def _run_steps(
        self, x: Tensor, y: Tensor, h0: Tensor | None, reset: Tensor | None
    ) -> UpdateResult:
        cfg = self.config
        params = {n: p.detach().clone().requires_grad_(True) for n, p in self._params.items()}
        adam = AdamState(params) if cfg.optimizer == "adam" else None
        result = UpdateResult(loss=float("nan"), steps=0)
        batch = self._draw_experience(x)
        ref: float | None = None
        prev = params
        for step in range(cfg.num_steps + 1):
            if step > 0 and cfg.resample_each_step and step < cfg.num_steps:
                batch = self._draw_experience(x)
            # the last iteration only checks the final iterate (same batch as the last step)
            final = step == cfg.num_steps
            with torch.set_grad_enabled(not final):
                total, current = self._objective(params, x, y, h0, reset, batch)
            # one device-to-host read per inner step (both losses at once)
            value, value_current = torch.stack([total.detach(), current.detach()]).tolist()
            result.losses.append(value)
            result.current_losses.append(value_current)
            if step == 0:
                result.loss, ref = value, value
            bad = self._diverged(value, ref)
            if bad:
                self._record_failure(result, bad, step)
                if step > 0:  # roll back the step that produced these weights
                    params = prev
                    result.steps -= 1
                break
            if final:
                break
            grads = torch.autograd.grad(total, list(params.values()), allow_unused=True)
            grads_t = [
                torch.zeros_like(p) if g is None else g
                for p, g in zip(params.values(), grads, strict=True)
            ]
            # one fused check (a single host sync), not one per parameter
            if not bool(torch.stack([torch.isfinite(g).all() for g in grads_t]).all()):
                self._record_failure(result, "non-finite gradient", step)
                break
            prev = {n: p.detach() for n, p in params.items()}
            params = self._apply(params, grads_t, adam, step)
            result.steps += 1
        self._params = {n: p.detach() for n, p in params.items()}
        return result

    def _diverged(self, value: float, ref: float | None) -> str:
        if not math.isfinite(value):
            return "non-finite loss"
        ratio = self.config.max_loss_ratio
        if ratio is not None and ref is not None and value > ratio * max(ref, 1e-8):
            return f"exploding loss ({value:.4g} > {ratio:g} x {ref:.4g})"
        return ""

    def _record_failure(self, result: UpdateResult, reason: str, step: int) -> None:
        # every firing of the guard counts as a rollback: the offending step never stays
        result.rolled_back = True
        result.reason = reason
        self.stats["nonfinite" if reason.startswith("non-finite") else "exploding"] += 1
        self.stats["rollbacks"] += 1
        logger.warning("adaptation stopped at inner step %d (%s); step rolled back", step, reason)

    def _apply(
        self,
        params: ParamDict,
        grads: list[Tensor],
        adam: AdamState | None,
        step: int,
    ) -> ParamDict:
        cfg = self.config
        if cfg.grad_clip_norm is not None:
            norm = torch.sqrt(sum(g.pow(2).sum() for g in grads))  # type: ignore[arg-type]
            scale = torch.clamp(cfg.grad_clip_norm / (norm + 1e-6), max=1.0)
            grads = [g * scale for g in grads]
        updates = adam.direction(grads, step, cfg) if adam is not None else grads
        new: ParamDict = {}
        for (name, p), u in zip(params.items(), updates, strict=True):
            lr = self._lrs[name]
            new[name] = (p.detach() - cfg.lr_scale * lr * u).requires_grad_(True)
        return new

    def _objective(
        self,
        params: Mapping[str, Tensor],
        x: Tensor,
        y: Tensor,
        h0: Tensor | None,
        reset: Tensor | None,
        batch: tuple[Tensor, Tensor] | None,
    ) -> tuple[Tensor, Tensor]:
        cfg = self.config
        full = self._all(params)
        pred, _ = call(self.model, full, x, h0, reset, stateful=self.stateful)  # (b, l, o)
        current = self.loss_fn(pred, y)
        total = current
        w = cfg.experience_weight
        if batch is not None and w > 0:
            total = current + w * self._experience_loss(full, batch)
            if cfg.normalize:
                total = total / (1.0 + w)
        if cfg.anchor_weight > 0:
            drift = sum(((params[n] - self._meta[n]) ** 2).sum() for n in self._meta)
            total = total + cfg.anchor_weight * drift
        return total, current

    def _experience_loss(self, full: Mapping[str, Tensor], batch: tuple[Tensor, Tensor]) -> Tensor:
        obs, tgt = batch  # rows (n, d), (n, o) or windows (b, l, d), (b, l, o)
        if obs.dim() == 2 or not self.stateful:
            if obs.dim() == 3:  # windows for a stateless model: score the steps after burn-in
                burn = self.config.burn_in
                obs, tgt = obs[:, burn:], tgt[:, burn:]
            h = self.init_hidden(obs.shape[0])
            pred, _ = call(self.model, full, obs, h, stateful=self.stateful)
            return self.loss_fn(pred, tgt)
        burn = self.config.burn_in
        h = self.init_hidden(obs.shape[0])  # (b, z): each window runs from its own context
        if burn > 0:
            with torch.no_grad():
                _, h = call(self.model, full, obs[:, :burn], h, stateful=True)
        pred, _ = call(self.model, full, obs[:, burn:], h, stateful=True)  # (b, l - burn, o)
        return self.loss_fn(pred, tgt[:, burn:])

    def _draw_experience(self, x: Tensor) -> tuple[Tensor, Tensor] | None:
        cfg = self.config
        if cfg.experience_weight == 0 or len(self.experience) == 0:
            return None
        if self._use_sequences():
            return self.experience.windows(
                cfg.sampling,
                cfg.experience_batch_size,
                cfg.sequence_length,
                query=x,
                recent=cfg.recent_window,
                candidates=cfg.nearest_candidates,
            )
        return self.experience.rows(
            cfg.sampling,
            cfg.experience_batch_size,
            query=x,
            recent=cfg.recent_window,
            candidates=cfg.nearest_candidates,
        )

    def _use_sequences(self) -> bool:
        replay = self.config.replay
        return replay == "sequences" or (replay == "auto" and self.stateful)

    def _resolve_lrs(self, given: Mapping[str, float | Tensor] | None) -> dict[str, Any]:
        return resolve_lrs(self.config, self._meta, given, self.device, self.dtype)

    def _all(self, params: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {**self._frozen, **params}

    def _hidden(self, hidden: Tensor | None, batch_size: int) -> Tensor | None:
        if not self.stateful:
            return None
        if hidden is None:
            return self.init_hidden(batch_size)
        return hidden.detach().to(self.device)

    def _check_window(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError(
                f"x_current and y_current must be torch tensors, got "
                f"{type(x).__name__} and {type(y).__name__}"
            )
        if x.dim() not in (2, 3) or y.dim() != x.dim() or x.shape[:-1] != y.shape[:-1]:
            raise ValueError(
                f"expected x_current (b, l, d) / (b, d) and y_current (b, l, o) / (b, o) with "
                f"matching leading dims, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        return x.to(self.device, self.dtype), y.to(self.device, self.dtype)


def _zero_stats() -> dict[str, int]:
    return {"updates": 0, "steps": 0, "rollbacks": 0, "nonfinite": 0, "exploding": 0}
