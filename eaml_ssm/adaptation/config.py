"""`AdaptationConfig`: every setting of one test-time adaptation, validated where it enters.

The single source of truth of the adapter's defaults; `AdaptationConfig.from_maml` reads the
meta-trained step size(s) and step count, `to_dict` / `from_dict` round-trip it through
``config.json`` and checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

from eaml_ssm.adaptation.step_sizes import as_float, learned_inner_lrs

OptimizerName = Literal["sgd", "adam"]
SamplingName = Literal["uniform", "task_balanced", "recent", "nearest"]
ReplayName = Literal["auto", "rows", "sequences"]
ModeName = Literal["continual", "reset"]

_OPTIMIZERS = ("sgd", "adam")
_SAMPLINGS = ("uniform", "task_balanced", "recent", "nearest")
_REPLAYS = ("auto", "rows", "sequences")
_MODES = ("continual", "reset")


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
        base_lr = as_float(getattr(maml, "inner_lr", cls.learning_rate), "maml.inner_lr")
        values: dict[str, Any] = {
            "learning_rate": base_lr,
            "num_steps": int(getattr(maml, "num_inner_steps", cls.num_steps)),
            "grad_clip_norm": None,
        }
        lrs = learned_inner_lrs(maml)
        if lrs:
            scalars = {k: v for k, v in lrs.items() if not isinstance(v, Tensor) or v.numel() == 1}
            values["param_lrs"] = {k: as_float(v, k) for k, v in scalars.items()}
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
