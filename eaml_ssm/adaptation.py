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

Shape glossary: ``b`` batch (parallel streams / windows), ``l`` time steps of a window,
``d`` model input features, ``o`` model outputs (targets), ``n`` rows (flattened ``b * l``),
``c`` nearest-neighbour candidates, ``h`` the model's hidden-state shape (batch first).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import math
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

logger = logging.getLogger(__name__)

OptimizerName = Literal["sgd", "adam"]
SamplingName = Literal["uniform", "task_balanced", "recent", "nearest"]
ReplayName = Literal["auto", "rows", "sequences"]
ModeName = Literal["continual", "reset"]
LossFn = Callable[[Tensor, Tensor], Tensor]
ParamDict = dict[str, Tensor]

_OPTIMIZERS = ("sgd", "adam")
_SAMPLINGS = ("uniform", "task_balanced", "recent", "nearest")
_REPLAYS = ("auto", "rows", "sequences")
_MODES = ("continual", "reset")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass
class AdaptationConfig:
    """Everything that defines one test-time adaptation (the single source of truth)."""

    learning_rate: float = 0.01  # inner step size (per-parameter rates in param_lrs win)
    num_steps: int = 5  # gradient steps per update_step call
    grad_clip_norm: float | None = 1.0  # global L2 clip of the gradient; None = no clipping
    experience_batch_size: int = 32  # replayed rows (row replay) or windows (sequence replay)
    experience_weight: float = 0.1  # lambda of the hybrid loss; 0 = plain fine-tuning
    optimizer: OptimizerName = "sgd"  # "sgd" or "adam" (Adam moments restart each update)
    sampling: SamplingName = "uniform"  # which stored experience is replayed
    replay: ReplayName = "auto"  # "rows", "sequences", or "auto" (sequences if model stateful)
    sequence_length: int = 32  # replayed window length, burn-in included
    burn_in: int = 16  # leading steps of a replayed window that only warm the hidden state
    recent_window: int = 4096  # "recent": sample among the newest rows of the store
    nearest_candidates: int = 4096  # "nearest": random candidate rows scored by distance
    resample_each_step: bool = True  # draw a fresh experience batch for every inner step
    anchor_weight: float = 0.0  # mu of mu * ||theta - theta*||^2 (EATA-style); 0 = off
    normalize: bool = True  # divide the hybrid loss by 1 + experience_weight
    mode: ModeName = "continual"  # "continual" or "reset" (GrBAL: restart from theta* each time)
    lr_scale: float = 1.0  # multiplies every step size (e.g. 2.0 for 2x the meta-learned rate)
    max_loss_ratio: float | None = 10.0  # roll back a step whose loss exceeds ratio * start loss
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    param_lrs: dict[str, float] | None = None  # per-parameter (learned) step sizes, by name
    # clamp the step sizes at >= 0: Meta-SGD learns a few negative ones, useful for the steps it
    # was trained for but gradient *ascent* over a long continual stream. None (default): clamp
    # in continual mode only; chosen over meta-training softplus step sizes by measurement
    # (docs/evaluation.md, "Step-size parameterization")
    nonnegative_lrs: bool | None = None
    seed: int | None = None  # seed of the adapter's replay draws (one store seed per draw)
    # replay also the live stream written into the store (True), or only the tasks the store
    # held when the adapter was built (False; an empty store then: no restriction); measured
    # in docs/data-path.md
    replay_live: bool = False

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, _OPTIMIZERS)
        _check_choice("sampling", self.sampling, _SAMPLINGS)
        _check_choice("replay", self.replay, _REPLAYS)
        _check_choice("mode", self.mode, _MODES)
        _check_positive("learning_rate", self.learning_rate, allow_zero=True)
        _check_positive("lr_scale", self.lr_scale, allow_zero=True)
        _check_positive("experience_weight", self.experience_weight, allow_zero=True)
        _check_positive("anchor_weight", self.anchor_weight, allow_zero=True)
        for name in ("num_steps",):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("experience_batch_size", "sequence_length", "recent_window"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.nearest_candidates < 1:
            raise ValueError(f"nearest_candidates must be >= 1, got {self.nearest_candidates}")
        if not 0 <= self.burn_in < self.sequence_length:
            raise ValueError(
                f"burn_in must be in [0, sequence_length={self.sequence_length}), "
                f"got {self.burn_in}"
            )
        if self.grad_clip_norm is not None:
            _check_positive("grad_clip_norm", self.grad_clip_norm, allow_zero=False)
        if self.max_loss_ratio is not None and not self.max_loss_ratio > 1.0:
            raise ValueError(f"max_loss_ratio must be > 1 or None, got {self.max_loss_ratio}")
        if self.param_lrs is not None:
            for key, value in self.param_lrs.items():
                _check_positive(f"param_lrs[{key!r}]", float(value), allow_zero=True)

    @property
    def clamps_lrs(self) -> bool:
        """Whether step sizes are clamped at >= 0 (``nonnegative_lrs``, None = continual mode)."""
        if self.nonnegative_lrs is None:
            return self.mode == "continual"
        return self.nonnegative_lrs

    @classmethod
    def from_maml(cls, maml: Any, **overrides: Any) -> AdaptationConfig:
        """Config with the step size, step count and learned per-parameter rates of ``maml``.

        Reads ``maml.inner_lr`` (float or scalar tensor), ``maml.num_inner_steps`` and, when
        the inner rates were learned, one rate per parameter through ``maml.inner_lr_for(name)``
        (or a ``maml.inner_lrs`` mapping). The meta-training inner loop does not clip its
        gradient, so neither does this config (``grad_clip_norm=None``): with
        ``experience_weight=0`` an update is then exactly ``maml.adapt_task``. ``overrides``
        set any field (e.g. ``grad_clip_norm=1.0``, ``lr_scale=2.0``).
        """
        base_lr = _as_float(getattr(maml, "inner_lr", cls.learning_rate), "maml.inner_lr")
        values: dict[str, Any] = {
            "learning_rate": base_lr,
            "num_steps": int(getattr(maml, "num_inner_steps", cls.num_steps)),
            "grad_clip_norm": None,
        }
        lrs = learned_inner_lrs(maml)
        if lrs:
            scalars = {k: v for k, v in lrs.items() if not isinstance(v, Tensor) or v.numel() == 1}
            values["param_lrs"] = {k: _as_float(v, k) for k, v in scalars.items()}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (for config.json / checkpoints)."""
        out = dataclasses.asdict(self)
        out["adam_betas"] = list(self.adam_betas)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdaptationConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown AdaptationConfig fields {unknown}; expected {sorted(known)}")
        values = dict(data)
        if "adam_betas" in values:
            values["adam_betas"] = tuple(values["adam_betas"])
        return cls(**values)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(name: str, value: float, *, allow_zero: bool) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be finite and {bound}, got {value}")


def _as_float(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    return float(value)


def learned_inner_lrs(maml: Any) -> dict[str, float | Tensor]:
    """Per-parameter inner step sizes of a MetaMAML when they were learned, else ``{}``.

    Works with ``maml.inner_lr_for(name)`` (the shared interface) or an ``inner_lrs``
    mapping / ``nn.ParameterDict``. Values are detached copies (a float-like scalar tensor
    or a per-element tensor for Meta-SGD-style rates).
    """
    if not getattr(maml, "learn_inner_lr", False):
        return {}
    model = getattr(maml, "model", None)
    getter = getattr(maml, "inner_lr_for", None)
    if callable(getter) and isinstance(model, nn.Module):
        out: dict[str, float | Tensor] = {}
        for name, _ in model.named_parameters():
            value = getter(name)
            out[name] = value.detach().clone() if isinstance(value, Tensor) else float(value)
        return out
    table = getattr(maml, "inner_lrs", None)
    if isinstance(table, Mapping | nn.ParameterDict):
        return {
            str(k): v.detach().clone() if isinstance(v, Tensor) else float(v)
            for k, v in table.items()
        }
    return {}


# --------------------------------------------------------------------------------------------
# Experience sources (a rust_buffer.RingBuffer or an eaml_ssm.buffer.ExperienceBuffer)
# --------------------------------------------------------------------------------------------


Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class ExperienceSource:
    """The adapter's replay: a `eaml_ssm.feed.ReplayFeed` over whatever store the caller has.

    Accepts a ``rust_buffer.RingBuffer``, an ``eaml_ssm.buffer.ExperienceBuffer`` (its ring
    store, made at its first ``add``, is replayed through the feed with the facade's
    normalizer), another object exposing a RingBuffer as ``store``/``ring``/``buffer``, a
    facade with ``get_batch(k)`` only (uniform rows through it), or ``None``. Every batch is
    chosen and gathered by the store (see `eaml_ssm.feed.replay`) and returned as float
    tensors on ``device``, passed through ``transform(obs, target)`` (e.g. the pipeline's
    ``Normalizer``: the store holds raw rows, the model sees normalized ones):
    rows ``(n, d)``, ``(n, o)``; windows ``(b, l, d)``, ``(b, l, o)``.

    ``old_tasks``: replay only these task ids (``AdaptationConfig.replay_live=False``: the
    adapter snapshots the store's tasks when it is built, so the live stream written into
    the store is not replayed); ``None`` replays everything the store holds.
    """

    def __init__(
        self,
        buffer: Any,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        transform: Transform | None = None,
        old_tasks: Any = None,
    ) -> None:
        from eaml_ssm.feed import ReplayFeed

        self.buffer = buffer
        self.device = torch.device(device)
        self.dtype = dtype
        facade_norm = getattr(buffer, "normalizer", None) if not _is_ring(buffer) else None
        if facade_norm is not None and transform is not None:
            raise ValueError(
                "the experience buffer already normalizes its rows (buffer.normalizer); "
                "pass transform=None, or pass the raw rust_buffer.RingBuffer with transform"
            )
        self.transform = facade_norm if facade_norm is not None else transform
        self.feed = ReplayFeed(
            lambda: _find_ring(self.buffer), self.device, dtype, self.transform, seed, old_tasks
        )

    def __len__(self) -> int:
        return 0 if self.buffer is None else len(self.buffer)

    @property
    def ring(self) -> Any:
        """The store with the RingBuffer API (looked up each time: a facade makes it lazily)."""
        return _find_ring(self.buffer)

    def fork(
        self, seed: int | None, old_tasks: Any = None, *, buffer: Any = None
    ) -> ExperienceSource:
        """The same store (or ``buffer``) with its own draw sequence restarted from ``seed``."""
        other = copy.copy(self)
        if buffer is not None:
            other.buffer = buffer
        other.feed = copy.copy(self.feed)
        other.feed._store = lambda: _find_ring(other.buffer)
        other.feed.old_tasks = None if old_tasks is None else frozenset(old_tasks)
        other.feed.restart(seed)
        return other

    def rows(
        self,
        strategy: SamplingName,
        k: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor] | None:
        """``k`` rows by ``strategy`` -> obs ``(k, d)``, target ``(k, o)`` (None: nothing)."""
        if self.ring is None:
            return self._facade_rows(strategy, k)
        return self.feed.rows(strategy, k, query, recent=recent, candidates=candidates)

    def windows(
        self,
        strategy: SamplingName,
        b: int,
        seq_len: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor] | None:
        """``b`` windows of ``seq_len`` steps of one episode -> ``(b, l, d)``, ``(b, l, o)``;
        rows when the store has no episode structure (logged once); None: nothing to draw."""
        if self.ring is None:
            return self._facade_rows(strategy, b)
        return self.feed.windows(strategy, b, seq_len, query, recent=recent, candidates=candidates)

    # the strategies by name, for rows (kept for callers of the former API)
    def uniform(self, k: int) -> tuple[Tensor, Tensor]:
        return _some(self.rows("uniform", k))

    def task_balanced(self, k: int) -> tuple[Tensor, Tensor]:
        return _some(self.rows("task_balanced", k))

    def recent(self, k: int, window: int) -> tuple[Tensor, Tensor]:
        return _some(self.rows("recent", k, recent=window))

    def nearest(self, k: int, query: Tensor, candidates: int) -> tuple[Tensor, Tensor]:
        return _some(self.rows("nearest", k, query, candidates=candidates))

    def _facade_rows(self, strategy: str, k: int) -> tuple[Tensor, Tensor]:
        """Uniform rows through a facade's own ``get_batch`` (it has no store to sample)."""
        get_batch = getattr(self.buffer, "get_batch", None)
        if strategy != "uniform" or get_batch is None:
            raise ValueError(
                f"{strategy} replay needs a store with the RingBuffer samplers (a "
                f"rust_buffer.RingBuffer or an ExperienceBuffer); got {type(self.buffer).__name__}"
            )
        batch = get_batch(k)
        if batch is None:
            raise ValueError("the experience buffer holds no rows")
        obs, tgt = (t.to(self.device, self.dtype) for t in batch[:2])
        if self.transform is not None:
            obs, tgt = self.transform(obs, tgt)
        return obs, tgt


def _some(batch: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    if batch is None:
        raise ValueError("no experience may be replayed (no rows of the replayed tasks)")
    return batch


def _is_ring(obj: Any) -> bool:
    return obj is not None and hasattr(obj, "sample") and hasattr(obj, "task_counts")


def _find_ring(buffer: Any) -> Any:
    """The object that implements the RingBuffer sampling API, if any."""
    if buffer is None or _is_ring(buffer):
        return buffer
    for attr in ("store", "ring", "buffer", "_store", "_ring", "_buffer"):
        inner = getattr(buffer, attr, None)
        if _is_ring(inner):
            return inner
    return None


# --------------------------------------------------------------------------------------------
# Model calls (stateful SSM or stateless module)
# --------------------------------------------------------------------------------------------


def is_stateful(model: nn.Module) -> bool:
    """True for models with an explicit hidden state: ``forward(x, hidden_state) -> (y, h')``.

    Same rule as ``eaml_ssm.maml.is_stateful`` (a ``hidden_state`` argument of ``forward``),
    plus any model that offers ``init_hidden``.
    """
    try:
        if "hidden_state" in inspect.signature(model.forward).parameters:
            return True
    except (TypeError, ValueError):
        pass
    return callable(getattr(model, "init_hidden", None))


def _call(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    hidden: Tensor | None,
    stateful: bool,
    reset: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``functional_call`` of ``model`` -> (prediction, next hidden state or None)."""
    if not stateful:
        out = functional_call(model, dict(params), (x,))
        return (out[0] if isinstance(out, tuple) else out), None
    kwargs = {} if reset is None else {"reset": reset}
    y, h_next = functional_call(model, dict(params), (x, hidden), kwargs)
    return y, h_next


# --------------------------------------------------------------------------------------------
# The adapter
# --------------------------------------------------------------------------------------------


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
        ring = _find_ring(buffer)
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
        init = getattr(self.model, "init_hidden", None)
        if not callable(init):
            raise ValueError(
                f"{type(self.model).__name__} is stateful but has no init_hidden(batch_size); "
                "pass hidden_state_current explicitly and use replay='rows'"
            )
        return init(batch_size).to(self.device)

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
            return _call(self.model, self._all(self._params), x, h, True, reset)
        return _call(self.model, self._all(self._params), x, None, False)[0]

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
        adam = _AdamState(params) if cfg.optimizer == "adam" else None
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
        adam: _AdamState | None,
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
        pred, _ = _call(self.model, full, x, h0, self.stateful, reset)  # (b, l, o)
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
        obs, tgt = batch  # rows (k, d), (k, o) or windows (b, l, d), (b, l, o)
        if obs.dim() == 2 or not self.stateful:
            if obs.dim() == 3:  # windows for a stateless model: score the steps after burn-in
                burn = self.config.burn_in
                obs, tgt = obs[:, burn:], tgt[:, burn:]
            h = self.init_hidden(obs.shape[0])
            pred, _ = _call(self.model, full, obs, h, self.stateful)
            return self.loss_fn(pred, tgt)
        burn = self.config.burn_in
        h = self.init_hidden(obs.shape[0])  # (b, h): each window runs from its own context
        if burn > 0:
            with torch.no_grad():
                _, h = _call(self.model, full, obs[:, :burn], h, True)
        pred, _ = _call(self.model, full, obs[:, burn:], h, True)  # (b, l - burn, o)
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
        table: dict[str, float | Tensor] = dict(self.config.param_lrs or {})
        table.update(given or {})
        unknown = sorted(set(table) - set(self._meta))
        if unknown:
            raise ValueError(f"param_lrs names {unknown} are not trainable parameters of the model")
        out: dict[str, Any] = {}
        for name, p in self._meta.items():
            lr = table.get(name, self.config.learning_rate)
            if isinstance(lr, Tensor):
                lr = lr.detach().to(self.device, self.dtype)
                if lr.numel() != 1 and lr.shape != p.shape:
                    raise ValueError(
                        f"param_lrs[{name!r}] has shape {tuple(lr.shape)}, expected a scalar "
                        f"or {tuple(p.shape)}"
                    )
                if self.config.clamps_lrs:
                    lr = lr.clamp(min=0.0)
            elif self.config.clamps_lrs:
                lr = max(float(lr), 0.0)
            out[name] = lr
        return out

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


class _AdamState:
    """Functional Adam moments for one update (restarted every update_step)."""

    def __init__(self, params: ParamDict) -> None:
        self.m = [torch.zeros_like(p) for p in params.values()]
        self.v = [torch.zeros_like(p) for p in params.values()]

    def direction(self, grads: list[Tensor], step: int, cfg: AdaptationConfig) -> list[Tensor]:
        b1, b2 = cfg.adam_betas
        t = step + 1
        out = []
        for i, g in enumerate(grads):
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            m_hat = self.m[i] / (1 - b1**t)
            v_hat = self.v[i] / (1 - b2**t)
            out.append(m_hat / (v_hat.sqrt() + cfg.adam_eps))
        return out


# --------------------------------------------------------------------------------------------
# Online use: predict, observe, adapt every M steps on the latest window
# --------------------------------------------------------------------------------------------


class OnlineAdapter:
    """Streams one step at a time and adapts every ``adapt_every`` steps (prequential).

    ``step(x_t, y_t)`` first predicts ``y_t`` from ``x_t`` with the current weights and the
    carried hidden state (that prediction is what a prequential score uses), then records
    the true ``y_t``; after every ``adapt_every`` recorded steps it adapts on the latest
    ``window`` steps, starting from the hidden state that preceded that window, and
    recomputes the carried state through the window with the new weights. Continual or
    GrBAL-style reset follows ``adapter.config.mode``. With ``live`` (an
    ``eaml_ssm.feed.LiveWriter``, one stream) every observed transition is written into the
    store as it arrives, before any adaptation that could replay it.
    """

    def __init__(
        self,
        adapter: Adapter,
        window: int = 16,
        adapt_every: int | None = None,
        *,
        live: Any = None,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.adapter = adapter
        self.window = window
        self.adapt_every = window if adapt_every is None else adapt_every
        if self.adapt_every < 1:
            raise ValueError(f"adapt_every must be >= 1, got {self.adapt_every}")
        self._hist: deque[tuple[Tensor, Tensor, Tensor | None, Tensor | None]] = deque(
            maxlen=window
        )
        self.hidden: Tensor | None = None
        self.t = 0
        self.losses: list[tuple[int, float, int]] = []  # (t, loss before update, steps)
        # an eaml_ssm.feed.LiveWriter: each observed transition goes into the store at once
        self.live = live

    def start(self, batch_size: int = 1) -> None:
        """Forget the history and zero the carried state (weights are kept)."""
        self._hist.clear()
        self.hidden = self.adapter.init_hidden(batch_size)
        self.t = 0

    def step(self, x_t: Tensor, y_t: Tensor, reset: Tensor | None = None) -> Tensor:
        """Predict for ``x_t`` ``(b, d)``, then learn from ``y_t`` ``(b, o)`` -> ``(b, o)``."""
        ad = self.adapter
        if x_t.dim() != 2 or y_t.dim() != 2:
            raise ValueError(f"step expects x_t (b, d) and y_t (b, o), got {tuple(x_t.shape)}")
        if ad.stateful and self.hidden is None:
            self.hidden = ad.init_hidden(x_t.shape[0])
        h_before = self.hidden
        if ad.stateful:
            y_hat, self.hidden = ad.predict(x_t, h_before, reset)
        else:
            y_hat = ad.predict(x_t)
        self._hist.append((x_t.detach(), y_t.detach(), h_before, reset))
        if self.live is not None:
            if x_t.shape[0] != 1:
                raise ValueError(f"live writing needs one stream (b = 1), got b = {x_t.shape[0]}")
            start = reset is not None and bool(reset.reshape(-1)[0])
            self.live.add(x_t[0], y_t[0], episode_start=start)
        self.t += 1
        if self.t % self.adapt_every == 0:
            self.adapt_now()
        return y_hat

    def adapt_now(self) -> tuple[float, int]:
        """Adapt on the recorded window now -> (loss, steps)."""
        if not self._hist:
            raise ValueError("no observed steps to adapt on")
        ad = self.adapter
        xs = torch.stack([h[0] for h in self._hist], dim=1)  # (b, l, d)
        ys = torch.stack([h[1] for h in self._hist], dim=1)  # (b, l, o)
        h0 = self._hist[0][2]
        resets = [h[3] for h in self._hist]
        mask = None
        if ad.stateful and any(r is not None for r in resets):
            mask = torch.stack(
                [torch.zeros(xs.shape[0]) if r is None else r.float().cpu() for r in resets], 1
            ).to(ad.device)  # (b, l)
        loss, steps = ad.update_step(xs, ys, h0, reset=mask)
        if ad.stateful:  # carry the state through the window with the new weights
            _, self.hidden = ad.predict(xs, h0, mask)
        self.losses.append((self.t, loss, steps))
        return loss, steps


def iter_windows(x: Tensor, y: Tensor, size: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive, non-overlapping windows ``(b, size, .)`` of a stream ``(b, l, .)``."""
    for start in range(0, x.shape[1] - size + 1, size):
        yield x[:, start : start + size], y[:, start : start + size]
