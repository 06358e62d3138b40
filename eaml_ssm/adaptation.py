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

import numpy as np
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
    # was trained for but gradient *ascent* over a long continual stream (docs/evaluation.md)
    nonnegative_lrs: bool = False
    seed: int | None = None  # seed of the adapter's own RNG (task choice, nearest candidates)

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
# Experience sources (duck-typed over rust_buffer.RingBuffer and eaml_ssm.buffer.ExperienceBuffer)
# --------------------------------------------------------------------------------------------


Transform = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
_VIEW_METHODS = ("obs_view", "target_view", "episode_id_view", "step_view")


class ExperienceSource:
    """Uniform sampling interface over whatever experience store the caller has.

    Accepts a ``rust_buffer.RingBuffer`` (``sample``, ``sample_task_rows``, ``sample_recent``,
    ``sample_sequences``, ``task_counts``, ``obs_view``/``target_view``/``task_id_view``/
    ``episode_id_view``/``step_view``), an ``eaml_ssm.buffer.ExperienceBuffer`` (``get_batch(k)``;
    its ring store is used for the other strategies when it exposes one as ``store``/``ring``/
    ``buffer``), ``None``, or any object with the same methods. Every sampler returns float
    tensors on ``device``, passed through ``transform(obs, target)`` (e.g. the pipeline's
    ``Normalizer``: the store holds raw rows, the model sees normalized ones):
    rows ``(n, d)``, ``(n, o)``; windows ``(b, l, d)``, ``(b, l, o)``.
    """

    def __init__(
        self,
        buffer: Any,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int | None = None,
        transform: Transform | None = None,
    ) -> None:
        self.buffer = buffer
        self.device = torch.device(device)
        self.dtype = dtype
        self.rng = np.random.default_rng(seed)
        # A facade (ExperienceBuffer) samples uniformly through get_batch, which applies its
        # own normalizer; rows read from its inner store get that normalizer as transform.
        self._facade = buffer is not None and not hasattr(buffer, "sample")
        facade_norm = getattr(buffer, "normalizer", None) if self._facade else None
        if facade_norm is not None and transform is not None:
            raise ValueError(
                "the experience buffer already normalizes its rows (buffer.normalizer); "
                "pass transform=None, or pass the raw rust_buffer.RingBuffer with transform"
            )
        self._batch_normalized = facade_norm is not None
        transform = facade_norm if facade_norm is not None else transform
        if isinstance(transform, nn.Module):  # a private copy on our device
            transform = copy.deepcopy(transform).to(self.device)
        self.transform = transform
        self._task_index: tuple[tuple[int, int], dict[int, np.ndarray]] | None = None

    def __len__(self) -> int:
        return 0 if self.buffer is None else len(self.buffer)

    @property
    def ring(self) -> Any:
        """The store with the RingBuffer API (looked up each time: a facade makes it lazily)."""
        return _find_ring(self.buffer)

    # ---- rows -------------------------------------------------------------------------------
    def rows(
        self,
        strategy: SamplingName,
        k: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor]:
        """``k`` rows by ``strategy`` -> obs ``(k, d)``, target ``(k, o)``."""
        if strategy == "uniform":
            return self.uniform(k)
        if strategy == "task_balanced":
            return self.task_balanced(k)
        if strategy == "recent":
            return self.recent(k, recent)
        if strategy == "nearest":
            if query is None:
                raise ValueError("sampling='nearest' needs the current inputs as query")
            return self.nearest(k, query, candidates)
        raise ValueError(f"unknown sampling strategy {strategy!r}; expected one of {_SAMPLINGS}")

    def uniform(self, k: int) -> tuple[Tensor, Tensor]:
        """``k`` rows uniformly at random, with replacement.

        With views, the rows are drawn with the source's own RNG (reproducible per adapter and
        independent of other users of the store), else by the store's ``sample`` (or a
        facade's ``get_batch``); ``k`` is capped at the rows held (the store refuses more).
        """
        k = max(1, min(k, len(self)))
        ring = self.ring
        if _has(ring, "obs_view", "target_view"):  # our own RNG: reproducible per adapter
            idx = self.rng.integers(0, len(ring.obs_view()), size=k)  # (k,)
            return self._pair(ring.obs_view()[idx], ring.target_view()[idx])
        if self._facade and hasattr(self.buffer, "get_batch"):
            batch = self.buffer.get_batch(k)
            if batch is None:
                raise ValueError("the experience buffer holds no rows")
            obs, tgt = batch[:2]
            if self._batch_normalized:  # get_batch normalized them already
                return self._tensor(obs), self._tensor(tgt)
            return self._pair(obs, tgt)
        if ring is None:
            raise TypeError(
                f"{type(self.buffer).__name__} has neither sample(k) nor get_batch(k); expected "
                "a rust_buffer.RingBuffer or an eaml_ssm.buffer.ExperienceBuffer"
            )
        obs, tgt = ring.sample(k)[:2]
        return self._pair(obs, tgt)

    def task_balanced(self, k: int) -> tuple[Tensor, Tensor]:
        """``k`` rows spread evenly over up to ``k`` randomly chosen stored tasks.

        With views, rows are gathered from them through a cached task -> rows index (one
        ``sample_task_rows`` call per task costs a scan of the store); else through the store.
        """
        ring = self._need("task_balanced", "task_counts", "sample_task_rows")
        if all(hasattr(ring, m) for m in ("obs_view", "target_view", "task_id_view")):
            idx = self._balanced_anchors(ring, k)  # (k,) physical rows
            return self._pair(ring.obs_view()[idx], ring.target_view()[idx])
        counts = _task_counts(ring)
        obs_parts, tgt_parts = [], []
        for task_id, n in self._balanced_plan(ring, k):
            while n > 0:  # the store refuses more rows per call than the task holds
                take = min(n, counts[task_id])
                obs, tgt = ring.sample_task_rows(task_id, take)[:2]
                obs_parts.append(np.asarray(obs))
                tgt_parts.append(np.asarray(tgt))
                n -= take
        return self._pair(np.concatenate(obs_parts), np.concatenate(tgt_parts))

    def recent(self, k: int, window: int) -> tuple[Tensor, Tensor]:
        """``k`` rows uniformly among the newest ``window`` rows."""
        ring = self._need("recent", "sample_recent")
        window = max(1, min(window, len(ring)))
        obs, tgt = ring.sample_recent(min(k, window), window)[:2]
        return self._pair(obs, tgt)

    def nearest(self, k: int, query: Tensor, candidates: int) -> tuple[Tensor, Tensor]:
        """The ``k`` stored rows closest to the current inputs ``query`` ``(n, d)``.

        Distance: Euclidean, after ``transform``, in input space z-normalised with the
        candidates' mean and std, to the nearest query row. Candidates: a random subset of
        ``candidates`` rows of the zero-copy ``obs_view()`` (all rows if fewer), or
        ``candidates`` uniform samples when the store has no views. A concurrent writer may
        replace candidate rows while they are gathered; the gather copies each row once.
        """
        cand_obs, cand_tgt, _ = self._candidates(candidates)  # (c, d), (c, o)
        idx = self._nearest_index(cand_obs, query, k)  # (k,)
        return cand_obs[idx], cand_tgt[idx]

    # ---- sequence windows -------------------------------------------------------------------
    def windows(
        self,
        strategy: SamplingName,
        b: int,
        seq_len: int,
        query: Tensor | None = None,
        *,
        recent: int = 4096,
        candidates: int = 4096,
    ) -> tuple[Tensor, Tensor]:
        """``b`` windows of ``seq_len`` consecutive steps of one episode, chosen by ``strategy``.

        Each strategy picks anchor rows (uniform, per task, newest, or nearest to ``query``)
        with the source's own RNG and reads the window that ends at each anchor from the
        zero-copy views, keeping only windows whose rows share one task and episode id with
        consecutive steps (else the window that starts at the anchor). Stores without views
        support ``uniform`` only, through ``sample_sequences``.
        Returns ``(b, l, d)``, ``(b, l, o)``.
        """
        if strategy == "uniform" and not _has(self.ring, *_VIEW_METHODS):
            return self.sequences(b, seq_len)
        ring = self._need(f"sequence replay with sampling={strategy!r}", *_VIEW_METHODS)
        if strategy == "uniform":
            anchors = self.rng.integers(0, len(ring.obs_view()), size=b)
        elif strategy == "nearest":
            if query is None:
                raise ValueError("sampling='nearest' needs the current inputs as query")
            cand_obs, _, cand_idx = self._candidates(candidates)
            anchors = cand_idx[self._nearest_index(cand_obs, query, b).cpu().numpy()]
        elif strategy == "task_balanced":
            anchors = self._balanced_anchors(ring, b)
        elif strategy == "recent":
            anchors = self._recent_anchors(ring, b, recent)
        else:
            raise ValueError(f"unknown sampling strategy {strategy!r}; expected {_SAMPLINGS}")
        return self._windows_at(ring, anchors, seq_len)

    def sequences(self, b: int, seq_len: int) -> tuple[Tensor, Tensor]:
        """``b`` uniform windows of ``seq_len`` steps -> ``(b, l, d)``, ``(b, l, o)``."""
        ring = self._need("sequence replay", "sample_sequences")
        try:
            obs, tgt = ring.sample_sequences(b, seq_len)[:2]
        except (ValueError, RuntimeError) as err:
            raise ValueError(
                f"sequence replay of {seq_len}-step windows failed ({err}); lower "
                "sequence_length or use replay='rows'"
            ) from err
        return self._pair(obs, tgt)

    def _windows_at(self, ring: Any, anchors: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
        n = len(ring.obs_view())
        episode, step = ring.episode_id_view(), ring.step_view()  # (len,), (len,)
        task = ring.task_id_view() if hasattr(ring, "task_id_view") else None  # (len,)
        wrap = n == getattr(ring, "capacity", -1)  # a full ring: windows may wrap around
        offsets = np.arange(seq_len)
        chosen = np.full(len(anchors), -1, dtype=np.int64)
        for start in (anchors - seq_len + 1, anchors):  # window ending / starting at the anchor
            idx = start[:, None] + offsets[None, :]  # (m, l)
            inside = np.ones(len(anchors), bool) if wrap else (idx[:, 0] >= 0) & (idx[:, -1] < n)
            idx = idx % n
            same_ep = (episode[idx] == episode[idx[:, :1]]).all(axis=1)
            if task is not None:
                same_ep &= (task[idx] == task[idx[:, :1]]).all(axis=1)
            steps_ok = (np.diff(step[idx], axis=1) == 1).all(axis=1) & (step[idx[:, 0]] >= 0)
            ok = inside & same_ep & steps_ok & (chosen < 0)
            chosen[ok] = start[ok] % n
        valid = chosen[chosen >= 0]
        if len(valid) == 0:
            logger.warning(
                "no %d-step windows around the chosen rows; falling back to uniform windows",
                seq_len,
            )
            return self.sequences(len(anchors), seq_len)
        if len(valid) < len(anchors):  # fill with repeats of valid windows (keeps the mix)
            valid = np.concatenate([valid, self.rng.choice(valid, len(anchors) - len(valid))])
        idx = (valid[:, None] + offsets[None, :]) % n  # (b, l)
        return self._pair(ring.obs_view()[idx], ring.target_view()[idx])

    def _balanced_anchors(self, ring: Any, b: int) -> np.ndarray:
        index = self._tasks_to_rows(ring)
        parts = [self.rng.choice(index[t], size=n) for t, n in self._balanced_plan(ring, b)]
        return np.concatenate(parts)

    def _recent_anchors(self, ring: Any, b: int, window: int) -> np.ndarray:
        n = len(ring.obs_view())
        window = max(1, min(window, n))
        newest = (int(getattr(ring, "total_added", n)) - 1) % n  # FIFO slot of the newest row
        return (newest - self.rng.integers(0, window, size=b)) % n

    def _tasks_to_rows(self, ring: Any) -> dict[int, np.ndarray]:
        """task id -> physical rows, cached until the store changes."""
        key = (int(getattr(ring, "total_added", -1)), len(ring))
        if self._task_index is None or self._task_index[0] != key:
            tasks = np.asarray(ring.task_id_view())  # (len,)
            order = np.argsort(tasks, kind="stable")
            ids, starts = np.unique(tasks[order], return_index=True)
            groups = np.split(order, starts[1:])
            self._task_index = (key, {int(t): g for t, g in zip(ids, groups, strict=True)})
        return self._task_index[1]

    def _balanced_plan(self, ring: Any, k: int) -> list[tuple[int, int]]:
        """(task id, rows) pairs: ``k`` rows over up to ``k`` random tasks, as even as possible."""
        counts = {int(t): int(c) for t, c in _task_counts(ring).items() if int(c) > 0}
        if not counts:
            raise ValueError("the experience store holds no rows")
        tasks = np.array(sorted(counts))
        chosen = self.rng.choice(tasks, size=min(k, len(tasks)), replace=False)
        per_task = np.full(len(chosen), k // len(chosen))
        per_task[: k % len(chosen)] += 1
        return [(int(t), int(n)) for t, n in zip(chosen, per_task, strict=True)]

    # ---- nearest helpers --------------------------------------------------------------------
    def _candidates(self, candidates: int) -> tuple[Tensor, Tensor, np.ndarray]:
        """Candidate rows (transformed) and their physical indices (-1 when sampled)."""
        ring = self.ring
        if ring is not None and hasattr(ring, "obs_view") and hasattr(ring, "target_view"):
            obs_view, tgt_view = ring.obs_view(), ring.target_view()  # (len, d), (len, o)
            n = min(len(obs_view), len(tgt_view))
            if n == 0:
                raise ValueError("the experience store holds no rows")
            if n <= candidates:
                idx = np.arange(n)
            else:
                idx = np.sort(self.rng.choice(n, size=candidates, replace=False))
            obs, tgt = self._pair(obs_view[idx], tgt_view[idx])
            return obs, tgt, idx
        obs, tgt = self.uniform(candidates)
        return obs, tgt, np.full(len(obs), -1, dtype=np.int64)

    def _nearest_index(self, cand_obs: Tensor, query: Tensor, k: int) -> Tensor:
        query = query.reshape(-1, query.shape[-1]).to(self.device, self.dtype)  # (n, d)
        if query.shape[-1] != cand_obs.shape[-1]:
            raise ValueError(
                f"nearest: query has {query.shape[-1]} features, the store's obs has "
                f"{cand_obs.shape[-1]}"
            )
        mean = cand_obs.mean(dim=0)
        std = cand_obs.std(dim=0, correction=0).clamp_min(1e-6)
        dist = torch.cdist((cand_obs - mean) / std, (query - mean) / std)  # (c, n)
        score = dist.min(dim=1).values  # (c,)
        k_eff = min(k, score.shape[0])
        idx = torch.topk(score, k_eff, largest=False).indices  # (k_eff,)
        if k_eff < k:  # fewer stored rows than asked for: repeat the nearest ones
            idx = idx[torch.arange(k, device=idx.device) % k_eff]
        return idx

    # ---- helpers ----------------------------------------------------------------------------
    def _need(self, what: str, *methods: str) -> Any:
        ring = self.ring
        if ring is None or not all(hasattr(ring, m) for m in methods):
            raise ValueError(
                f"{what} needs a store with {', '.join(methods)} (a rust_buffer.RingBuffer); "
                f"got {type(self.buffer).__name__}"
            )
        return ring

    def _pair(self, obs: Any, tgt: Any) -> tuple[Tensor, Tensor]:
        obs_t, tgt_t = self._tensor(obs), self._tensor(tgt)
        if self.transform is not None:
            obs_t, tgt_t = self.transform(obs_t, tgt_t)
        return obs_t, tgt_t

    def _tensor(self, array: Any) -> Tensor:
        if isinstance(array, Tensor):
            return array.to(self.device, self.dtype)
        return torch.as_tensor(np.asarray(array), dtype=self.dtype, device=self.device)


def _has(obj: Any, *methods: str) -> bool:
    return obj is not None and all(hasattr(obj, m) for m in methods)


def _task_counts(ring: Any) -> dict[int, int]:
    """``task_counts()`` as a dict (the store may return a dict or (task, count) pairs)."""
    counts = ring.task_counts()
    items = counts.items() if isinstance(counts, Mapping) else counts
    return {int(t): int(c) for t, c in items}


def _find_ring(buffer: Any) -> Any:
    """The object that implements the RingBuffer sampling API, if any."""
    if buffer is None:
        return None
    if hasattr(buffer, "sample"):
        return buffer
    for attr in ("store", "ring", "buffer", "_store", "_ring", "_buffer"):
        inner = getattr(buffer, attr, None)
        if inner is not None and hasattr(inner, "sample"):
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
            experience_buffer, self.device, self.dtype, self.config.seed, transform
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
        other.model = copy.deepcopy(self.model)
        other.experience = copy.copy(self.experience)  # same store, its own random stream
        other.stats = _zero_stats()
        other.last_update = None
        if overrides:
            other.config = dataclasses.replace(self.config, **overrides)
            if "param_lrs" in overrides:  # replaces the learned per-parameter rates as well
                other._given_lrs = {}
            other._lrs = other._resolve_lrs(other._given_lrs)
        other.experience.rng = np.random.default_rng(other.config.seed)
        return other

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
            value = float(total.detach())
            result.losses.append(value)
            result.current_losses.append(float(current.detach()))
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
            if not all(bool(torch.isfinite(g).all()) for g in grads_t):
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
                if self.config.nonnegative_lrs:
                    lr = lr.clamp(min=0.0)
            elif self.config.nonnegative_lrs:
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
    GrBAL-style reset follows ``adapter.config.mode``.
    """

    def __init__(self, adapter: Adapter, window: int = 16, adapt_every: int | None = None) -> None:
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
