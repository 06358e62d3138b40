"""The trained weights of one evaluation unit, built on first use and cached per model
variant: second-order MAML ("maml"), first order ("fo"), the jointly trained baseline
("joint"), the step-size variants of the second-order weights (STEP_VARIANTS) and weights
meta-trained with softplus step sizes ("maml_softplus"); and the stores of their own that
some methods adapt with (`small_store`, `store_adapter`)."""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from eaml_ssm.adaptation import Adapter, ExperienceSource, learned_inner_lrs
from eaml_ssm.artifacts import RunDir
from eaml_ssm.collect import build_store
from eaml_ssm.config import RunConfig
from eaml_ssm.evaluate.joint import joint_adapter
from eaml_ssm.evaluate.methods import SIGNED, STEP_VARIANTS
from eaml_ssm.positive_steps import train_softplus
from eaml_ssm.run_adapter import base_adapter
from eaml_ssm.run_data import Data
from eaml_ssm.runtime import resolve_device
from eaml_ssm.train import meta_train


@dataclass
class Models:
    """Trained weights of one unit, cached per variant ("maml", "fo", "joint")."""

    cfg: RunConfig
    data: Data
    work: Path
    joint_steps: int
    cache: dict[str, Adapter] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    alpha: float = math.nan  # mean learned inner step size of the second-order model
    mamls: dict[str, Any] = field(default_factory=dict)  # the trained MetaMAML per variant

    def adapter(self, kind: str) -> Adapter:
        if kind not in self.cache:
            self.cache[kind] = self._build(kind)
        return self.cache[kind]

    def _build(self, kind: str) -> Adapter:
        if kind == "joint":
            maml_base = self.adapter("maml")
            return joint_adapter(self, maml_base)
        if kind in STEP_VARIANTS:
            return self._step_variant(kind)
        if kind == "maml_softplus":
            trained = train_softplus(self.cfg, RunDir(self.work / kind), self.data)
            self.seconds[kind] = round(trained.seconds, 2)
            self.mamls[kind] = trained.maml
            return base_adapter(self.cfg, trained, self.data, **SIGNED)
        cfg = dataclasses.replace(self.cfg, first_order=(kind == "fo"))
        run = RunDir(self.work / kind)
        trained = meta_train(cfg, self.data, run, resolve_device(cfg.device))
        self.seconds[kind] = round(trained.seconds, 2)
        base = base_adapter(cfg, trained, self.data, **SIGNED)
        self.mamls[kind] = trained.maml
        if kind == "maml":
            self.alpha = mean_inner_lr(trained.maml)
        return base

    def _step_variant(self, kind: str) -> Adapter:
        """The second-order weights with transformed learned step sizes (STEP_VARIANTS)."""
        base = self.adapter("maml")
        maml = self.mamls["maml"]
        lrs = step_size_variant(learned_inner_lrs(maml), kind)
        # a copy of the model: an adapter may update the model it is given in place
        return Adapter(
            copy.deepcopy(maml.model),
            base.config,
            self.data.store,
            base.device,
            param_lrs=lrs,
            transform=self.data.normalizer,
        )


def step_size_variant(lrs: dict[str, Any], kind: str) -> dict[str, Any]:
    """Learned step sizes clamped at >= 0 ("maml_pos"), made absolute ("maml_abs"), or either
    rescaled so the mean over every entry equals the signed mean ("maml_posm", "maml_absm")."""
    if kind not in STEP_VARIANTS:
        raise ValueError(f"step-size variant must be one of {STEP_VARIANTS}, got {kind!r}")
    if not lrs:
        raise ValueError("the model has no learned step sizes to transform")
    tensors = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in lrs.items()}
    op = (lambda t: t.clamp(min=0.0)) if kind.startswith("maml_pos") else torch.abs
    out = {k: op(t) for k, t in tensors.items()}
    if kind.endswith("m"):
        signed = sum(float(t.sum()) for t in tensors.values())
        total = sum(float(t.sum()) for t in out.values())
        if not signed > 0 or not total > 0:
            raise ValueError(f"cannot mean-match step sizes: signed sum {signed}, {kind} {total}")
        out = {k: t * (signed / total) for k, t in out.items()}
    return out


def negative_share(maml: Any) -> float:
    """The fraction of learned step-size entries below 0 (NaN without learned ones)."""
    lrs = learned_inner_lrs(maml) if maml is not None else {}
    tensors = [torch.as_tensor(v) for v in lrs.values()]
    total = sum(t.numel() for t in tensors)
    return sum(int((t < 0).sum()) for t in tensors) / total if total else math.nan


def mean_inner_lr(maml: Any) -> float:
    """The mean step size over every adapted parameter entry (learned or fixed)."""
    lrs = getattr(maml, "inner_lrs", None)
    if getattr(maml, "learn_inner_lr", False) and lrs:
        total = sum(float(t.detach().sum()) for t in lrs.values())
        count = sum(t.numel() for t in lrs.values())
        return total / count
    return float(maml.inner_lr)


def small_store(models: Models, retention: str, stream_rows: int = 0) -> Any:
    """The meta-training data in a store of its own: half the rows kept by `retention`
    ("fifo"/"reservoir"), or ("live") every training row plus room for the stream's rows."""
    cfg = models.cfg
    rows = cfg.num_tasks * cfg.steps_per_task
    live = retention == "live"
    store, _ = build_store(
        models.data.train_tasks,
        cfg.steps_per_task,
        capacity=rows + stream_rows if live else rows // 2,
        store_seed=cfg.seed,
        retention="fifo" if live else retention,
        seed=cfg.seed,
        progress=False,
    )
    return store


def store_adapter(models: Models, store: Any) -> Adapter:
    """The second-order base adapter with its replay drawn from `store` instead."""
    base = models.adapter("maml")
    other = base.fork()
    other.experience = ExperienceSource(
        store, base.device, base.dtype, base.config.seed, models.data.normalizer
    )
    other.reset()
    return other
