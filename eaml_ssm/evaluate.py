"""Evaluate, honestly, what hybrid test-time adaptation buys (`python -m eaml_ssm evaluate`).

Every (family, seed) is an independent unit: its own training tasks and its own test tasks
(disjoint task-seed ranges, `protocol.unit_seeds`). Per unit: collect training-range tasks
into the store, meta-train the SSM (second-order MAML with learned step sizes; first-order,
softplus-step and jointly trained models for the ablations), then run one whole stream per
split of 5 test tasks A -> B -> ... (`heldout`: parameter bands inside the training range;
`ood`: every dynamics-setting quantity outside its training range, `tasks.sample_dynamics_ood`),
adapting every M = 16 steps on the latest window and scoring the next one, switch windows
included (`stream_scoring`). Every method starts from the same weights, step sizes and step
count.

Metrics (nMSE = MSE / store variance of the target, per dimension, averaged):
  new          mean nMSE over every scored window of the whole stream
  switch       mean nMSE over the first windows after each task switch
  recovery     windows after a switch until the error is within 10 % of its settled value
  F train      forgetting on meta-training tasks: retention after the stream minus at theta*,
               0-shot and few-shot (adapt a fork on a held-out window, score the next)
  F A          the same for task A, against the weights right after task A
  diverged     runs with a window error or final 0-shot retention above 10 or non-finite
References (`references.py`): identity, least squares on the task's whole past, ridge toward a
global fit, and the jointly trained model without adaptation (`J_none`). Claims are paired per
seed (`stats.paired`, `stats.ratio`) against the best reference, and each normalized hybrid
against continual w = 0 at its effective step (`cont_w0_m<w>`).

Profiles: `quick` (3 seeds; Pendulum core methods, CartPole sanity set) and `full` (5 seeds,
every method). `--rerender RUN_DIR` rebuilds tables and plots from saved results;
`--publish DIR` commits a compact results.json under docs/results and renders the marked
blocks of README.md and docs/evaluation.md from it.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eaml_ssm import pipeline, protocol, references, stream_scoring
from eaml_ssm.adaptation import Adapter, ExperienceSource, learned_inner_lrs
from eaml_ssm.artifacts import RunDir, finite, fresh_run_dir, seed_everything
from eaml_ssm.collect import build_store
from eaml_ssm.config import RunConfig
from eaml_ssm.doc_blocks import update_doc
from eaml_ssm.feed import StoreLoader, draw_seed
from eaml_ssm.plots import plot_curves
from eaml_ssm.positive_steps import train_softplus
from eaml_ssm.progress import progress
from eaml_ssm.ssm import SSM
from eaml_ssm.stats import (
    paired,
    pass_count,
    percent,
    ratio,
    reduction,
    relative_change,
    summarize,
)
from eaml_ssm.tasks import (
    DYNAMICS_QUANTITIES,
    Task,
    dynamics_quantities,
    outside_factor,
    quantity_ranges,
    sample_dynamics_ood,
    sample_tasks,
)

log = logging.getLogger(__name__)

SPLITS = ("heldout", "ood")
DIVERGED = 10.0  # nMSE above this (10x identity on training data) or non-finite: diverged
METRICS = ("new", "F_train_0", "F_train_fs", "F_A_0", "F_A_fs")
REFERENCE = "cont_w0"  # effect sizes are measured against continual w = 0
PREREGISTERED = "hybn_0.3"  # the hybrid setting fixed before the run (calibration study)


# --- methods --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Method:
    """One row of the table: which weights, whether and how they adapt."""

    name: str
    # "maml" (second order), "maml_pos" (the same with learned step sizes clamped at >= 0),
    # "fo" (first order) or "joint" (non-meta)
    model: str = "maml"
    adapt: bool = True
    overrides: tuple[tuple[str, Any], ...] = ()  # AdaptationConfig fields
    store: str = ""  # "": meta-training store; "fifo"/"reservoir"/"live": own store + stream
    group: str = ""  # Pareto series ("hybn uniform", ...)
    weight: float = math.nan  # experience_weight, for the Pareto plot

    def config(self) -> dict[str, Any]:
        return dict(self.overrides)


def _m(name: str, group: str = "", weight: float = math.nan, **kw: Any) -> Method:
    fields = {k: kw.pop(k) for k in ("model", "adapt", "store") if k in kw}
    return Method(name, overrides=tuple(sorted(kw.items())), group=group, weight=weight, **fields)


def _hybrid(w: float, normalize: bool, sampling: str, **kw: Any) -> Method:
    tag = {"uniform": "", "task_balanced": "_tb", "nearest": "_nn"}[sampling]
    prefix = "hybn" if normalize else "hyb"
    if "lr_scale" in kw:
        tag += f"_lrx{kw['lr_scale']:g}"
    return _m(
        f"{prefix}_{w:g}{tag}",
        group=f"{prefix} {sampling}",
        weight=w,
        mode="continual",
        experience_weight=w,
        normalize=normalize,
        sampling=sampling,
        **kw,
    )


LEVELS = ("sanity", "core", "cartpole", "all", "stability", "steps")
HYBRID_WEIGHTS = (0.1, 0.3, 1.0, 3.0)
ZERO_SHOT = "J_none"  # the jointly trained model without adaptation: the zero-shot reference
# Step-size variants of the second-order weights (model names; see Models._step_variant):
# clamped at >= 0, absolute value, and each rescaled so its mean equals the signed mean
# (separates the sign of the learned step sizes from their magnitude).
STEP_VARIANTS = ("maml_pos", "maml_abs", "maml_posm", "maml_absm")
# every row adapts with the step sizes as its model learned them (the library's default clamps
# them in continual mode since the step-size study: that default is the `_pos` rows)
SIGNED: dict[str, Any] = {"nonnegative_lrs": False}


def matched_control_name(w: float) -> str:
    """The continual w = 0 row at the effective step of a normalized hybrid of weight w."""
    return f"{REFERENCE}_m{w:g}"


def matched_control(w: float) -> Method:
    """w = 0 at lr_scale = 1/(1+w): the normalized hybrid (L_cur + w L_exp)/(1+w) scales the
    new-task gradient by 1/(1+w), so this is the hybrid without its replay."""
    return _m(
        matched_control_name(w),
        group="matched",
        weight=w,
        mode="continual",
        experience_weight=0.0,
        lr_scale=1.0 / (1.0 + w),
    )


def has_replay_live() -> bool:
    """Whether AdaptationConfig has `replay_live` (replay from the live stream too)."""
    from eaml_ssm.adaptation import AdaptationConfig

    return "replay_live" in {f.name for f in dataclasses.fields(AdaptationConfig)}


def live_replay_rows() -> list[Method]:
    """The replay-source comparison (item 7 of the evaluation issue): `hybn_0.3` on a store
    that also receives every used stream window ("live" store), replaying old tasks only
    (`replay_live=False`) or old tasks and the live stream (`replay_live=True`). Present when
    the adapter has `AdaptationConfig.replay_live`."""
    if not has_replay_live():
        return []
    out = []
    for live in (False, True):
        out.append(
            _m(
                f"{PREREGISTERED}_{'live' if live else 'oldonly'}",
                group="replay source",
                weight=0.3,
                store="live",
                mode="continual",
                experience_weight=0.3,
                normalize=True,
                replay_live=live,
            )
        )
    return out


def step_size_rows() -> list[Method]:
    """cont_w0 and hybn_0.3 on every step-size variant and on weights meta-trained with
    positive (softplus) step sizes (`_softplus`, see eaml_ssm.positive_steps)."""
    out = []
    for model in (*STEP_VARIANTS, "maml_softplus"):
        tag = model.removeprefix("maml")
        out += [
            _m(f"{REFERENCE}{tag}", model=model, mode="continual", experience_weight=0.0),
            _m(f"{PREREGISTERED}{tag}", model=model, mode="continual", experience_weight=0.3),
        ]
    return out


GUARD = 1.5  # max_loss_ratio of the tighter rollback guard in the "stability" level


def _stability_grid() -> list[Method]:
    """Step sizes 2x and raw w = 3, each with the default guard and with a tighter one."""
    w0: dict[str, Any] = {"mode": "continual", "experience_weight": 0.0}
    out = []
    guards: list[dict[str, Any]] = [{}, {"max_loss_ratio": GUARD}]
    for guard in guards:
        tag = f"_g{GUARD:g}" if guard else ""
        out += [
            _m(f"cont_w0_lrx2{tag}", lr_scale=2.0, **w0, **guard),
            _m(f"grbal_lrx2{tag}", mode="reset", experience_weight=0.0, lr_scale=2.0, **guard),
            _m(
                f"hyb_3{tag}",
                group="hyb uniform",
                weight=3.0,
                mode="continual",
                experience_weight=3.0,
                normalize=False,
                **guard,
            ),
            _m(
                f"hybn_0.3_lrx2{tag}",
                mode="continual",
                experience_weight=0.3,
                lr_scale=2.0,
                **guard,
            ),
            _m(f"l2_1{tag}", mode="continual", experience_weight=0.0, anchor_weight=1.0, **guard),
        ]
        if guard:
            out.append(_m(f"cont_w0{tag}", **w0, **guard))
    return out


def method_grid(level: str) -> list[Method]:
    """The methods of a level: "sanity" (none, GrBAL, w=0, hybrid 0.3), "core" (+ hybrid 1
    normalized and raw, L2 anchor), "cartpole" (+ weights, step sizes, first order, joint),
    "all" (+ sampling strategies, more anchors, FIFO/reservoir stores), "stability"
    (none, GrBAL, w=0 and the unstable settings with the default and a tighter guard), or
    "steps" (none, GrBAL, w=0, hybn_0.3, l2_1, each also with the learned step sizes
    clamped at >= 0: the `_pos` rows)."""
    if level not in LEVELS:
        raise ValueError(f"method level must be one of {', '.join(LEVELS)}, got {level!r}")
    w0: dict[str, Any] = {"mode": "continual", "experience_weight": 0.0}
    grid = [
        _m("none", adapt=False, group="baseline"),
        _m("grbal", group="baseline", weight=0.0, mode="reset", experience_weight=0.0),
        _m(REFERENCE, group="baseline", weight=0.0, **w0),
        _hybrid(0.3, True, "uniform"),
        _hybrid(1.0, True, "uniform"),
        _hybrid(1.0, False, "uniform"),
        _m("l2_1", group="l2", mode="continual", experience_weight=0.0, anchor_weight=1.0),
    ]
    zero_shot = _m(ZERO_SHOT, model="joint", adapt=False, group="baseline")
    if level == "sanity":
        return [*grid[:4], zero_shot, matched_control(0.3)]
    if level == "stability":
        return [*grid[:3], zero_shot, *_stability_grid()]
    if level == "steps":
        return [*grid[:4], zero_shot, *step_size_rows()]
    grid += [zero_shot, matched_control(0.3), matched_control(1.0), *live_replay_rows()]
    if level == "core":
        return grid
    grid += [
        matched_control(0.1),
        matched_control(3.0),
        _hybrid(0.1, True, "uniform"),
        _hybrid(3.0, True, "uniform"),
        _hybrid(0.1, False, "uniform"),
        _hybrid(0.3, False, "uniform"),
        _hybrid(3.0, False, "uniform"),
        _m("cont_w0_lrx0.3", lr_scale=0.3, **w0),
        _m("cont_w0_lrx0.5", lr_scale=0.5, **w0),
        _m("cont_w0_lrx2", lr_scale=2.0, **w0),
        _m("grbal_lrx2", mode="reset", experience_weight=0.0, lr_scale=2.0),
        _hybrid(0.3, True, "uniform", lr_scale=2.0),
        _hybrid(3.0, True, "uniform", lr_scale=2.0),
        _hybrid(3.0, False, "uniform", lr_scale=2.0),
    ]
    grid += step_size_rows()
    for prefix, model in (("FO", "fo"), ("J", "joint")):
        grid += [
            *([_m(f"{prefix}_none", model=model, adapt=False)] if prefix == "FO" else []),
            _m(f"{prefix}_grbal", model=model, mode="reset", experience_weight=0.0),
            _m(f"{prefix}_{REFERENCE}", model=model, **w0),
            _m(
                f"{prefix}_hybn_0.3",
                model=model,
                mode="continual",
                experience_weight=0.3,
                normalize=True,
            ),
        ]
    if level == "cartpole":
        return grid
    # task-balanced replay is left out: the store holds the same rows per task, so it equals
    # uniform replay (measured in v1 of this evaluation); nearest-neighbour replay stays
    for sampling in ("nearest",):
        for w in HYBRID_WEIGHTS:
            grid += [_hybrid(w, True, sampling), _hybrid(w, False, sampling)]
    grid += [
        _m("l2_0.1", group="l2", mode="continual", experience_weight=0.0, anchor_weight=0.1),
        _m("l2_3", group="l2", mode="continual", experience_weight=0.0, anchor_weight=3.0),
    ]
    for retention in ("fifo", "reservoir"):
        grid.append(
            _m(
                f"hybn_0.3_{retention}",
                store=retention,
                mode="continual",
                experience_weight=0.3,
                replay="rows",  # a reservoir store keeps few intact windows: rows for both
            )
        )
    return grid


# --- profiles -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """Sizes of one evaluation run (per family and seed)."""

    seeds: int
    families: tuple[str, ...]
    levels: tuple[tuple[str, str], ...]  # family -> method level
    num_tasks: int = 40  # meta-training tasks
    steps_per_task: int = 400
    meta_steps: int = 300
    joint_steps: int = 300  # Adam steps of the jointly trained (non-meta) model
    stream_steps: int = 160  # per test task: 10 windows of M = 16 (switches on window edges)
    test_tasks: int = 5  # per split, one whole stream A -> B -> C -> D -> E
    window: int = 16  # M
    old_tasks: int = 8  # meta-training tasks whose retention is measured
    pairs_per_task: int = 3  # held-out (a, b) window pairs per old task
    pairs_task_a: int = 6
    jobs: int = 1  # (family, seed) units run in parallel processes
    device: str = "cpu"  # torch device of training and adaptation ("cpu", "cuda", "auto")

    def level(self, family: str) -> str:
        return dict(self.levels).get(family, "core")


PROFILES: dict[str, Profile] = {
    "quick": Profile(
        seeds=3,
        families=("Pendulum-v1", "CartPole-v1"),
        levels=(("Pendulum-v1", "core"), ("CartPole-v1", "sanity")),
        num_tasks=40,
        meta_steps=200,
        old_tasks=6,
        pairs_per_task=2,
        pairs_task_a=4,
        jobs=2,
    ),
    "full": Profile(
        seeds=5,
        families=("Pendulum-v1", "CartPole-v1"),
        levels=(("Pendulum-v1", "all"), ("CartPole-v1", "cartpole")),
        num_tasks=80,  # traded (v1: 100 tasks, 600 steps) for 5 test tasks per split and the
        meta_steps=400,  # matched-control and step-size rows within 60 min on 2 cores
        joint_steps=400,
        jobs=2,
    ),
}


# --- one (family, seed) unit ----------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    family: str
    seed: int
    profile: Profile
    methods: tuple[Method, ...]
    work: str  # folder for this unit's stage outputs (store, checkpoints)


@dataclass
class Models:
    """Trained weights of one unit, cached per variant ("maml", "fo", "joint")."""

    cfg: RunConfig
    data: pipeline.Data
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
            return pipeline.base_adapter(self.cfg, trained, self.data, **SIGNED)
        cfg = dataclasses.replace(self.cfg, first_order=(kind == "fo"))
        run = RunDir(self.work / kind)
        trained = pipeline.train_stage(cfg, run, self.data, resume=False)
        self.seconds[kind] = round(trained.seconds, 2)
        base = pipeline.base_adapter(cfg, trained, self.data, **SIGNED)
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


_JOINT_TAG = 0x10E7  # seed-sequence tag of the joint baseline's batches


def train_joint(cfg: RunConfig, data: pipeline.Data, steps: int, seq_len: int) -> SSM:
    """A non-meta SSM: Adam on store sequence windows, MSE from a zero state."""
    device = pipeline.resolve_device(cfg.device)
    model = pipeline.build_model(cfg, data.family, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.outer_lr)
    batch = 4 * cfg.meta_batch_size
    # the one feed; draw k seeded by (seed, k, tag) so the batches do not depend on what
    # else used the store's generator before
    seed = draw_seed(cfg.seed, 0, _JOINT_TAG)
    with StoreLoader(data.store, device, data.normalizer, seed=seed) as loader:
        for _ in range(steps):
            x, y, _ = loader.sequences(batch, seq_len)  # (b, l, d), (b, l, o)
            pred, _ = model(x, model.init_hidden(batch))
            loss = torch.nn.functional.mse_loss(pred, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def joint_adapter(models: Models, maml_base: Adapter) -> Adapter:
    """The joint model adapted the same way: same config, the meta-learned mean step size."""
    t0 = time.perf_counter()
    cfg = models.cfg
    model = train_joint(cfg, models.data, models.joint_steps, cfg.support_len + cfg.query_len)
    models.seconds["joint"] = round(time.perf_counter() - t0, 2)
    config = dataclasses.replace(maml_base.config, param_lrs=None, learning_rate=models.alpha)
    return Adapter(
        model,
        config,
        models.data.store,
        maml_base.device,
        transform=models.data.normalizer,
    )


def _unit_config(unit: Unit) -> RunConfig:
    p = unit.profile
    seeds = protocol.unit_seeds(unit.seed, p.num_tasks, p.test_tasks)
    return RunConfig(
        env_name=unit.family,
        seed=seeds.train,  # training tasks seeds.train ... + num_tasks (see unit_seeds)
        device=p.device,
        quiet=True,
        num_tasks=p.num_tasks,
        steps_per_task=p.steps_per_task,
        buffer_size=p.num_tasks * p.steps_per_task,
        num_epochs=p.meta_steps,
        adapt_every=p.window,
        support_len=p.window,
        query_len=p.window,
        stream_steps=p.stream_steps,
        num_test_tasks=p.test_tasks,
        experience_weight=0.3,
    )


@dataclass
class Probes:
    """The held-out data of one unit: test streams and old-task window pairs."""

    streams: dict[str, list[protocol.StreamData]]
    train_pairs: list[protocol.WindowPair]
    a_pairs: dict[str, list[protocol.WindowPair]]
    tasks: dict[str, list[Task]] = field(default_factory=dict)


def test_tasks(unit: Unit, split: str) -> list[Task]:
    """The unit's own test tasks of `split` (seeds from its test range, see unit_seeds):
    "heldout" = parameter bands inside the training range; "ood" = every dynamics-setting
    quantity outside its training range (tasks.sample_dynamics_ood) where the family has a
    table of them, else parameters outside their ranges."""
    p = unit.profile
    first = protocol.unit_seeds(unit.seed, p.num_tasks, p.test_tasks).test
    if split == "ood" and unit.family in DYNAMICS_QUANTITIES:
        return [sample_dynamics_ood(unit.family, first + i) for i in range(p.test_tasks)]
    return sample_tasks(unit.family, p.test_tasks, seed=first, split=split)


def make_probes(unit: Unit, data: pipeline.Data) -> Probes:
    p, norm, m = unit.profile, data.normalizer, unit.profile.window
    rollout = protocol.unit_seeds(unit.seed, p.num_tasks, p.test_tasks).rollout
    old = data.train_tasks[: p.old_tasks]
    old_streams = protocol.task_streams(old, 2 * m * p.pairs_per_task, norm, rollout)
    train_pairs = [q for s in old_streams for q in protocol.window_pairs(s, m, p.pairs_per_task)]
    streams, a_pairs, tasks = {}, {}, {}
    for i, split in enumerate(SPLITS):
        tasks[split] = test_tasks(unit, split)
        streams[split] = protocol.task_streams(
            tasks[split], p.stream_steps, norm, rollout + 1000 * (i + 1)
        )
        a_stream = protocol.task_streams(
            tasks[split][:1], 2 * m * p.pairs_task_a, norm, rollout + 1000 * (i + 3)
        )
        a_pairs[split] = protocol.window_pairs(a_stream[0], m, p.pairs_task_a)
    return Probes(streams, train_pairs, a_pairs, tasks)


def run_method(
    base: Adapter,
    method: Method,
    streams: Sequence[protocol.StreamData],
    probes: Probes,
    split: str,
    before: dict[str, float],
    m: int,
    store: Any = None,
) -> dict[str, Any]:
    """One method on the whole stream A -> B -> C ...: every window after the first scored
    (switch windows included), recovery per switch, forgetting, divergence, timing.

    The method runs on a fork of `base` (which is left as it is). Forgetting of task A is
    measured against the weights right after the adapter used task A's last window.
    """
    adapter = protocol.variant(base, **method.config())
    shots = base.config.num_steps
    a_pairs = probes.a_pairs[split]
    after_a: dict[str, float] = {}

    def task_done(task: int) -> None:
        if task == 0:
            after_a.update(_retention(adapter, a_pairs, m, shots))

    whole = stream_scoring.concat_streams(streams, m)
    res = stream_scoring.whole_stream_run(
        adapter, whole, adapt=method.adapt, store=store, on_task_done=task_done
    )
    final_a = _retention(adapter, a_pairs, m, shots)
    if not after_a:  # a single task: "after A" is the end of the stream
        after_a = final_a
    final_train = _retention(adapter, probes.train_pairs, m, shots)
    row = {
        **stream_scoring.stream_summary(res),
        "curve": res.errors,
        "F_train_0": final_train["0"] - before["0"],
        "F_train_fs": final_train["fs"] - before["fs"],
        "F_A_0": final_a["0"] - after_a["0"],
        "F_A_fs": final_a["fs"] - after_a["fs"],
        "rollbacks": int(adapter.stats.get("rollbacks", 0)),
        "ms_per_step": 1000 * res.adapt_seconds / res.steps if res.steps else math.nan,
    }
    row["diverged"] = is_diverged(row)
    return row


def is_diverged(row: dict[str, Any], identity: Sequence[float] | None = None) -> bool:
    """A window error, or the change of 0-shot train retention, non-finite or > DIVERGED.

    With `identity` (the identity reference's error per window of the same stream), a
    window's bound is DIVERGED x max(1, identity error): on out-of-range tasks whose state
    changes are many training standard deviations large, identity itself scores far above
    1, and "diverged" means much worse than predicting no change, not large targets.
    """
    curve = list(row["curve"])
    bounds = [DIVERGED * max(1.0, float(i)) for i in identity] if identity else None
    if bounds is not None and len(bounds) != len(curve):
        raise ValueError(f"identity has {len(bounds)} windows, the row {len(curve)}")
    ok = all(
        v is not None and math.isfinite(v) and abs(v) <= (bounds[k] if bounds else DIVERGED)
        for k, v in enumerate(curve)
    )
    f = row["F_train_0"]
    return not (ok and f is not None and math.isfinite(f) and abs(f) <= DIVERGED)


def _retention(
    adapter: Adapter, pairs: Sequence[protocol.WindowPair], m: int, shots: int
) -> dict[str, float]:
    return {
        "0": protocol.retention(adapter, pairs, m, shots=0),
        "fs": protocol.retention(adapter, pairs, m, shots=shots),
    }


def _small_store(models: Models, retention: str, stream_rows: int = 0) -> Any:
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


def _store_adapter(models: Models, store: Any) -> Adapter:
    base = models.adapter("maml")
    other = base.fork()
    other.experience = ExperienceSource(
        store, base.device, base.dtype, base.config.seed, models.data.normalizer
    )
    other.reset()
    return other


def evaluate_unit(unit: Unit) -> dict[str, Any]:
    """Train (cached per variant) and run every method of `unit` on both streams."""
    torch.set_num_threads(1)
    seed_everything(unit.seed)
    t0 = time.perf_counter()
    cfg = _unit_config(unit)
    work = Path(unit.work)
    data = pipeline.collect_stage(cfg, RunDir(work / "data"))
    models = Models(cfg, data, work, unit.profile.joint_steps)
    probes = make_probes(unit, data)
    m = unit.profile.window
    out: dict[str, Any] = {"family": unit.family, "seed": unit.seed, "splits": {}, "before": {}}
    befores: dict[str, dict[str, float]] = {}
    prior = references.global_fit(data.store, data.normalizer)
    for split in SPLITS:
        streams = probes.streams[split]
        whole = stream_scoring.concat_streams(streams, m)
        res: dict[str, Any] = {
            "tasks": [s.name for s in streams],
            "task_quantities": [dynamics_quantities(t) for t in probes.tasks.get(split, [])],
            "methods": {},
        }
        refs = references.reference_rows(whole, data.normalizer, prior)
        for name, ref in refs.items():
            res[name] = {**ref, **_switch_split(ref["curve"], whole)}
        for method in unit.methods:
            base = models.adapter(method.model)
            if method.model not in befores:
                befores[method.model] = _retention(
                    base, probes.train_pairs, m, base.config.num_steps
                )
            store = None
            if method.store:
                store = _small_store(models, method.store, sum(len(x) for x in streams))
                base = _store_adapter(models, store)
            row = run_method(base, method, streams, probes, split, befores[method.model], m, store)
            row["diverged"] = is_diverged(row, res["identity"]["curve"])
            row["ratio_identity"] = row["new"] / res["identity"]["new"]
            row["ratio_linear"] = row["new"] / res["linear"]["new"]
            res["methods"][method.name] = row
        out["splits"][split] = res
    out["before"] = befores
    out["alpha"] = models.alpha
    out["negative_step_share"] = negative_share(models.mamls.get("maml"))
    out["train_seconds"] = models.seconds
    out["seconds"] = round(time.perf_counter() - t0, 1)
    RunDir(work).write_json("unit.json", finite(out))  # kept if a later unit fails
    log.info("%s seed %d done in %.0f s", unit.family, unit.seed, out["seconds"])
    return out


def _switch_split(curve: list[float], whole: stream_scoring.WholeStream) -> dict[str, Any]:
    """A reference's whole-stream summary (the same fields as a method row's)."""
    scored = whole.scored()
    run = stream_scoring.WholeRun(
        errors=curve, tasks=[t for _, t, _ in scored], switch=[f for _, _, f in scored]
    )
    return stream_scoring.stream_summary(run)


# --- aggregation ----------------------------------------------------------------------------


def aggregate(units: Sequence[dict[str, Any]], methods: dict[str, list[Method]]) -> dict[str, Any]:
    """Seed means, CIs, effect sizes and targets per family and split."""
    out: dict[str, Any] = {}
    for family in dict.fromkeys(u["family"] for u in units):
        runs = sorted((u for u in units if u["family"] == family), key=lambda u: u["seed"])
        fam: dict[str, Any] = {"seeds": [u["seed"] for u in runs], "splits": {}}
        fam["alpha"] = summarize([u["alpha"] for u in runs]).to_dict()
        fam["negative_step_share"] = summarize(
            [u.get("negative_step_share", math.nan) for u in runs]
        ).to_dict()
        for split in SPLITS:
            fam["splits"][split] = _aggregate_split(
                [u["splits"][split] for u in runs], methods[family]
            )
        fam["quantities"] = task_quantities(
            family,
            {
                sp: [q for r in runs for q in [r["splits"][sp].get("task_quantities", [])]]
                for sp in SPLITS
            },
        )
        fam["targets"] = targets(fam, family)
        out[family] = fam
    return out


def _identity_curve(split_run: dict[str, Any]) -> list[float] | None:
    """The identity reference's per-window errors of a saved split (None if absent)."""
    ident = split_run.get("identity")
    return list(ident["curve"]) if ident and "curve" in ident else None


def _per_seed(split_runs: Sequence[dict[str, Any]], name: str, metric: str) -> list[float]:
    vals = []
    for r in split_runs:
        row = r["methods"][name]
        value = row.get(metric)
        bad = value is None or is_diverged(row, _identity_curve(r))
        vals.append(math.nan if bad else float(value))
    return vals


REFERENCES = ("identity", "linear", "ridge_prior")  # linear/identity references (references.py)
STREAM_METRICS = ("new", "new_settled", "switch", "recovery")


def _aggregate_split(split_runs: Sequence[dict[str, Any]], methods: list[Method]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for base in REFERENCES:
        if not all(base in r for r in split_runs):
            continue
        per = {k: [float(r[base].get(k, math.nan)) for r in split_runs] for k in STREAM_METRICS}
        rows[base] = {
            **{k: summarize(v).to_dict() for k, v in per.items()},
            "curve": np.mean([r[base]["curve"] for r in split_runs], axis=0).tolist(),
            "per_seed": per,
            "group": "reference",
        }
    methods = [m for m in methods if all(m.name in r["methods"] for r in split_runs)]
    for method in methods:  # (a row missing from a saved unit is left out, not invented)
        name = method.name
        keys = (*METRICS, *STREAM_METRICS[1:], "ratio_identity", "ratio_linear")
        per = {k: _per_seed(split_runs, name, k) for k in keys}
        curves = np.array([r["methods"][name]["curve"] for r in split_runs], dtype=np.float64)
        rows[name] = {
            **{k: summarize(v).to_dict() for k, v in per.items()},
            "diverged": sum(
                is_diverged(r["methods"][name], _identity_curve(r)) for r in split_runs
            ),
            "runs": len(split_runs),
            "rollbacks": int(sum(r["methods"][name]["rollbacks"] for r in split_runs)),
            "ms_per_step": summarize(
                [r["methods"][name]["ms_per_step"] for r in split_runs]
            ).to_dict(),
            "curve": np.nanmean(np.where(np.isfinite(curves), curves, np.nan), axis=0).tolist(),
            "per_seed": per,
            "group": method.group,
            "weight": method.weight,
            "adapt": method.adapt,
        }
    if REFERENCE in rows:
        rows_effects = {
            m.name: effects(rows[m.name]["per_seed"], rows[REFERENCE]["per_seed"], rows.get("none"))
            for m in methods
            if m.name != REFERENCE and m.adapt
        }
    else:
        rows_effects = {}
    return {
        "rows": rows,
        "effects": rows_effects,
        "claims": claims(rows),
        "controls": hybrid_controls(rows),
        "tasks": [r.get("tasks", []) for r in split_runs],
        "task_quantities": [r.get("task_quantities", []) for r in split_runs],
    }


def task_quantities(family: str, split_runs: dict[str, list[Any]]) -> dict[str, Any]:
    """Per split and dynamics quantity: the training range, the test tasks' values and how
    far outside the range they lie (outside_factor: 1 = inside)."""
    if family not in DYNAMICS_QUANTITIES:
        return {}
    ranges = quantity_ranges(family)
    out: dict[str, Any] = {}
    for split, per_unit in split_runs.items():
        values = [t for unit in per_unit for t in unit]
        out[split] = {
            q: {
                "train": ranges[q],
                "min": min(v[q] for v in values),
                "max": max(v[q] for v in values),
                "factor_min": min(outside_factor(v[q], ranges[q]) for v in values),
                "factor_max": max(outside_factor(v[q], ranges[q]) for v in values),
                "tasks": len(values),
            }
            for q in ranges
            if values and all(q in v for v in values)
        }
    return out


def quantities_table(quantities: dict[str, Any]) -> str:
    head = ["split", "quantity", "training range", "test tasks", "outside by (x)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for split, table in quantities.items():
        for q, e in table.items():
            lo, hi = e["train"]
            fmin, fmax = e["factor_min"], e["factor_max"]
            outside = "inside" if fmax <= 1.0 else f"{fmin:.2f}-{fmax:.2f}"
            lines.append(
                f"| {split} | {q} | {lo:.3g}-{hi:.3g} | {e['min']:.3g}-{e['max']:.3g} "
                f"({e['tasks']} tasks) | {outside} |"
            )
    return "\n".join(lines)


def best_of(rows: dict[str, Any], names: Sequence[str]) -> str | None:
    """The row among `names` with the lowest seed-mean new-task error (None if none ran)."""
    ok = [n for n in names if n in rows and rows[n]["new"]["n"]]
    return min(ok, key=lambda n: rows[n]["new"]["mean"]) if ok else None


def claims(rows: dict[str, Any]) -> dict[str, Any]:
    """Every adapted method against the best reference (linear, ridge toward the global fit,
    identity, the jointly trained model without adaptation), the growing-window linear fit
    and the best zero-shot model: per-seed paired differences of the whole-stream error and
    geometric means of the per-seed ratios."""
    best_ref = best_of(rows, (*REFERENCES, ZERO_SHOT))
    best_zs = best_of(rows, ("identity", "none", ZERO_SHOT))
    out: dict[str, Any] = {"best_reference": best_ref, "best_zero_shot": best_zs, "methods": {}}
    for name, row in rows.items():
        if not row.get("adapt"):
            continue
        new = row["per_seed"]["new"]
        entry: dict[str, Any] = {}
        against = (("best_reference", best_ref), ("linear", "linear"), ("zero_shot", best_zs))
        for key, ref in against:
            if ref is None or ref not in rows:
                continue
            other = rows[ref]["per_seed"]["new"]
            entry[key] = {
                "reference": ref,
                "diff": paired(new, other).to_dict(),
                "ratio": ratio(new, other).to_dict(),
            }
        out["methods"][name] = entry
    return out


def hybrid_controls(rows: dict[str, Any]) -> dict[str, Any]:
    """Each normalized hybrid against continual w = 0 at its effective step (lr_scale 1/(1+w)):
    few-shot train forgetting cut (seed means), its paired difference, and the new-task error
    ratio (geometric mean of per-seed ratios). Pass: cut >= 50 % at a ratio <= 1.1."""
    out: dict[str, Any] = {}
    for name, row in rows.items():
        if row.get("group") != "hybn uniform" or "lrx" in name or not row["new"]["n"]:
            continue
        control = matched_control_name(row["weight"])
        if control not in rows:
            continue
        ref = rows[control]["per_seed"]
        per = row["per_seed"]
        cut = reduction(per["F_train_fs"], ref["F_train_fs"])
        r = ratio(per["new"], ref["new"])
        out[name] = {
            "control": control,
            "control_F_train_fs": rows[control]["F_train_fs"]["mean"],
            "cut_F_train_fs": cut,
            "diff_F_train_fs": paired(per["F_train_fs"], ref["F_train_fs"]).to_dict(),
            "new_ratio": r.to_dict(),
            "pass": bool(math.isfinite(cut) and cut >= 0.5 and r.gmean <= 1.1),
        }
    return out


def effects(per: dict[str, list[float]], ref: dict[str, list[float]], none: Any) -> dict[str, Any]:
    """Effect sizes of one method against the reference (continual w = 0), on seed means."""
    out: dict[str, Any] = {
        "delta_new": relative_change(per["new"], ref["new"]),
        "red_train_0": reduction(per["F_train_0"], ref["F_train_0"]),
        "red_train_fs": reduction(per["F_train_fs"], ref["F_train_fs"]),
        "red_A_0": reduction(per["F_A_0"], ref["F_A_0"]),
        "red_A_fs": reduction(per["F_A_fs"], ref["F_A_fs"]),
        "pass_0": pass_count(per["new"], per["F_train_0"], ref["new"], ref["F_train_0"]),
        "pass_fs": pass_count(per["new"], per["F_train_fs"], ref["new"], ref["F_train_fs"]),
    }
    if none is not None:
        out["gain_vs_none"] = -relative_change(per["new"], none["per_seed"]["new"])
    return out


ADAPTED = ("grbal", REFERENCE, PREREGISTERED)  # the adapted SSMs the targets are checked on


def _beats(entry: dict[str, Any] | None) -> bool:
    """Lower error than the reference with the paired 95 % interval excluding zero."""
    if not entry:
        return False
    d = entry["diff"]
    return bool(d["n"] >= 2 and d["mean"] < 0 and d["excludes_zero"])


def targets(fam: dict[str, Any], family: str) -> dict[str, Any]:
    """The preregistered targets, per split (reported, never tuned to). Pendulum is the
    family they are set for; CartPole is the sanity family (`required` False)."""
    out: dict[str, Any] = {}
    required = family != "CartPole-v1"
    for split, agg in fam["splits"].items():
        rows, cl = agg["rows"], agg["claims"]
        adapted = [n for n in ADAPTED if n in cl["methods"]]
        t: dict[str, Any] = {}
        zs = {n: cl["methods"][n].get("zero_shot") for n in adapted}
        t["beats_zero_shot"] = {
            "zero_shot": cl["best_zero_shot"],
            "methods": {n: e["diff"] if e else None for n, e in zs.items()},
            "pass": bool(adapted) and all(_beats(e) for e in zs.values()),
            "required": required,
        }
        ctrl = agg["controls"]
        passing = [c for c in ctrl if ctrl[c]["pass"]]
        if passing:
            best = max(passing, key=lambda c: ctrl[c]["cut_F_train_fs"])
        elif ctrl:  # closest miss: the smallest new-task ratio among those with a finite cut
            finite_cut = [c for c in ctrl if math.isfinite(ctrl[c]["cut_F_train_fs"])]
            best = min(finite_cut or list(ctrl), key=lambda c: ctrl[c]["new_ratio"]["gmean"])
        else:
            best = None
        t["hybrid"] = {
            "best": best,
            "entry": ctrl.get(best) if best else None,
            "preregistered": ctrl.get(PREREGISTERED),
            "pass": bool(passing),
            "required": required,
            "note": "best is chosen on the test streams (optimistic)",
        }
        stab = [
            n for n, r in rows.items() if "diverged" in r and (n.startswith("hyb") or "lrx2" in n)
        ]
        t["stability"] = {
            "rows": stab,
            "diverged_runs": {n: rows[n]["diverged"] for n in stab if rows[n]["diverged"]},
            "rollbacks": {n: rows[n]["rollbacks"] for n in stab if rows[n]["rollbacks"]},
            "pass": all(rows[n]["diverged"] == 0 for n in stab),
            "tested": any("lrx2" in n for n in stab) and any(n.startswith("hyb_3") for n in stab),
            "required": required,
        }
        lin = {n: cl["methods"][n].get("linear") for n in adapted}
        t["beats_linear"] = {
            "methods": {n: e["diff"] if e else None for n, e in lin.items()},
            "pass": bool(adapted) and all(_beats(e) for e in lin.values()),
            "required": required,
        }
        best_ref = {n: cl["methods"][n].get("best_reference") for n in adapted}
        t["beats_best_reference"] = {
            "reference": cl["best_reference"],
            "methods": {n: e["diff"] if e else None for n, e in best_ref.items()},
            "pass": bool(adapted) and all(_beats(e) for e in best_ref.values()),
            "required": required,
        }
        out[split] = t
    return out


# --- tables ---------------------------------------------------------------------------------

COLUMNS = (
    ("new", "new (whole stream)"),
    ("switch", "switch windows"),
    ("recovery", "recovery (windows)"),
    ("F_train_0", "F train 0-shot"),
    ("F_train_fs", "F train few-shot"),
    ("F_A_0", "F task A 0-shot"),
    ("F_A_fs", "F task A few-shot"),
)
LABELS = {
    "linear": "linear LS, growing window",
    "ridge_prior": "ridge toward global fit",
    ZERO_SHOT: "J_none (joint, zero-shot)",
}


def _cell(summary: dict[str, Any], digits: int = 4) -> str:
    mean, ci, n, bad = summary["mean"], summary["ci95"], summary["n"], summary["n_bad"]
    if n == 0:
        return "diverged" if bad else "-"
    text = f"{mean:.{digits}f}"
    if ci is not None and math.isfinite(ci):
        text += f" ± {ci:.{digits}f}"
    return text


def method_table(agg: dict[str, Any]) -> str:
    """Markdown table of one family and split: seed means ± 95% CI (whole-stream scoring)."""
    rows = agg["rows"]
    head = [label for _, label in COLUMNS] + ["diverged", "rollbacks", "ms/step"]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, row in rows.items():
        label = LABELS.get(name, name)
        cells = [
            _cell(row[k], 2 if k == "recovery" else 4) if k in row else "—" for k, _ in COLUMNS
        ]
        if "runs" in row:
            cells += [
                f"{row['diverged']}/{row['runs']}",
                str(row["rollbacks"]),
                _cell(row["ms_per_step"], 1) if row["ms_per_step"]["n"] else "-",
            ]
        else:
            cells += ["—"] * 3
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _share(summary: dict[str, Any] | None) -> str:
    """The negative-step-size share, or "not recorded" for runs made before it was."""
    return _cell(summary) if summary and summary["n"] else "not recorded"


def _diff(d: dict[str, Any] | None) -> str:
    if not d or not d["n"]:
        return "-"
    ci = f" ± {d['ci95']:.4f}" if d["ci95"] is not None and math.isfinite(d["ci95"]) else ""
    star = " *" if d.get("excludes_zero") else ""
    return f"{d['mean']:+.4f}{ci} (median {d['median']:+.4f}){star}"


def _ratio(r: dict[str, Any] | None) -> str:
    if not r or not r["n"]:
        return "-"
    low, high = r["low"], r["high"]
    span = f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) and math.isfinite(high) else ""
    return f"{r['gmean']:.3f}{span}"


def claims_table(agg: dict[str, Any]) -> str:
    """Each adapted method against the best reference, the growing-window linear fit and
    the best zero-shot model: paired per-seed differences and geometric-mean ratios."""
    cl = agg["claims"]
    head = [
        f"Δ vs best reference ({LABELS.get(cl['best_reference'], cl['best_reference'])})",
        "ratio vs best reference",
        "Δ vs linear (growing)",
        "ratio vs linear",
        f"Δ vs best zero-shot ({cl['best_zero_shot']})",
    ]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, e in cl["methods"].items():
        cells = [
            _diff(e.get("best_reference", {}).get("diff")),
            _ratio(e.get("best_reference", {}).get("ratio")),
            _diff(e.get("linear", {}).get("diff")),
            _ratio(e.get("linear", {}).get("ratio")),
            _diff(e.get("zero_shot", {}).get("diff")),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def controls_table(agg: dict[str, Any]) -> str:
    """Each normalized hybrid against its matched-step w = 0 control."""
    head = ["control", "F train few-shot (control)", "cut", "Δ F (paired)", "new ratio", "pass"]
    lines = ["| hybrid | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name, c in agg["controls"].items():
        cells = [
            f"`{c['control']}`",
            f"{c['control_F_train_fs']:.4f}",
            percent(c["cut_F_train_fs"]).lstrip("+"),
            _diff(c["diff_F_train_fs"]),
            _ratio(c["new_ratio"]),
            "yes" if c["pass"] else "no",
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def effects_table(agg: dict[str, Any]) -> str:
    head = [
        "Δ new",
        "↓F train 0-shot",
        "↓F train few-shot",
        "↓F A 0-shot",
        "↓F A few-shot",
        "pass 0-shot",
        "pass few-shot",
        "gain vs none",
    ]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    n = next(iter(v["runs"] for k, v in agg["rows"].items() if "runs" in v))
    for name, e in agg["effects"].items():
        cells = [percent(e["delta_new"])] + [
            percent(e[k]).lstrip("+")
            for k in ("red_train_0", "red_train_fs", "red_A_0", "red_A_fs")
        ]
        cells += [
            f"{e['pass_0']}/{n}",
            f"{e['pass_fs']}/{n}",
            percent(e.get("gain_vs_none", math.nan)).lstrip("+"),
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets_text(t: dict[str, Any]) -> str:
    def yes(ok: bool, required: bool = True) -> str:
        return ("met" if ok else "MISSED") + ("" if required else " (sanity family)")

    def diffs(methods: dict[str, Any]) -> str:
        return ", ".join(f"{k} {_diff(v)}" for k, v in methods.items())

    lines = []
    for split, s in t.items():
        z = s["beats_zero_shot"]
        lines.append(
            f"- {split}: adaptation beats the best zero-shot model (`{z['zero_shot']}`), paired "
            f"interval excluding 0: {diffs(z['methods'])}: {yes(z['pass'], z['required'])}"
        )
        h = s["hybrid"]
        e = h["entry"]
        if e is None:
            lines.append(f"- {split}: hybrid vs matched control: not tested at this level")
        else:
            lines.append(
                f"- {split}: best hybrid `{h['best']}` vs matched control `{e['control']}`: "
                f"few-shot train forgetting cut {percent(e['cut_F_train_fs']).lstrip('+')} "
                f"(control {e['control_F_train_fs']:.4f}), new-task ratio "
                f"{_ratio(e['new_ratio'])} (>= 50 % at <= 1.1x): {yes(h['pass'], h['required'])}"
            )
        st = s["stability"]
        if not st.get("tested", True):
            lines.append(f"- {split}: stability (w <= 3, 2x step): not tested at this level")
        else:
            lines.append(
                f"- {split}: stability (w <= 3, 2x step): diverged runs "
                f"{st['diverged_runs'] or 'none'}; rollbacks {st['rollbacks'] or 'none'}: "
                f"{yes(st['pass'], st['required'])}"
            )
        bl = s["beats_linear"]
        lines.append(
            f"- {split}: adapted SSM beats the growing-window linear fit: "
            f"{diffs(bl['methods'])}: {yes(bl['pass'], bl['required'])}"
        )
        br = s["beats_best_reference"]
        lines.append(
            f"- {split}: adapted SSM beats the best reference "
            f"(`{br['reference']}`): {diffs(br['methods'])}: {yes(br['pass'], br['required'])}"
        )
    return "\n".join(lines)


HEADLINE = ("none", "grbal", REFERENCE, matched_control_name(0.3), PREREGISTERED, "hybn_1",
            "hyb_1", "hyb_3", "l2_1", "FO_cont_w0", "J_cont_w0", "cont_w0_pos",
            "cont_w0_posm")  # fmt: skip


def headline_table(agg: dict[str, Any]) -> str:
    """One compact table: the key rows of every family, both streams side by side."""
    cols = [(split, k) for k in ("new", "F_train_fs") for split in SPLITS]
    head = [f"{'new' if k == 'new' else 'F train few-shot'} ({split})" for split, k in cols]
    lines = ["| family | method | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for family, fam in agg.items():
        splits = fam["splits"]
        for name in (*REFERENCES, ZERO_SHOT, *HEADLINE):
            if name not in splits[SPLITS[0]]["rows"]:
                continue
            cells = []
            for split, k in cols:
                row = splits[split]["rows"][name]
                cells.append(_cell(row[k]) if k in row else "—")
            lines.append(f"| {family} | {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(agg: dict[str, Any], header: str) -> str:
    parts = [header, "\n## Headline (seed means ± 95% CI; nMSE, forgetting: positive = worse)\n"]
    parts.append(headline_table(agg))
    for family, fam in agg.items():
        alpha = fam["alpha"]
        parts.append(
            f"\n## {family} (seeds {fam['seeds']}; mean learned step size {alpha['mean']:.4f}; "
            f"share of negative learned step sizes {_share(fam.get('negative_step_share'))})"
        )
        for split, s in fam["splits"].items():
            parts.append(f"\n### {family}, {split} stream: seed means ± 95% CI\n")
            parts.append(method_table(s))
            parts.append(
                "\nClaims (paired per-seed differences of the whole-stream error, mean ± 95 % CI "
                "over seeds and median, * = interval excludes 0; ratios = geometric mean of "
                "per-seed ratios [95 % CI])\n"
            )
            parts.append(claims_table(s))
            if s["controls"]:
                parts.append("\nHybrids against continual w = 0 at the same effective step\n")
                parts.append(controls_table(s))
            if s["effects"]:
                parts.append(
                    f"\nEffect sizes vs `{REFERENCE}` (seed means; pass = seeds with >= 50 % "
                    "less train forgetting and <= +10 % new-task error)\n"
                )
                parts.append(effects_table(s))
        if fam.get("quantities"):
            parts.append(f"\n### {family}: dynamics-setting quantities of the test tasks\n")
            parts.append(quantities_table(fam["quantities"]))
        parts.append(f"\n### {family}: targets\n")
        parts.append(targets_text(fam["targets"]))
    return "\n".join(parts) + "\n"


# --- plots ----------------------------------------------------------------------------------

CURVE_METHODS = ("none", "grbal", REFERENCE, PREREGISTERED, "hybn_1", "hyb_1")


PARETO_SERIES = ("hybn uniform", "hyb uniform", "hybn task_balanced", "hybn nearest")
PARETO_POINTS = ("none", "grbal", REFERENCE, "cont_w0_lrx0.3", "l2_0.1", "l2_1")
PARETO_SPAN = 5.0  # points with a new-task error above 5x that of w = 0 are left out


def pareto_series(rows: dict[str, Any]) -> dict[str, list[tuple[float, float, float]]]:
    """Experience-weight series (w, new-task nMSE, few-shot train forgetting) of the hybrids,
    starting at continual w = 0; near-divergent points (see PARETO_SPAN) are left out."""
    ref = rows.get(REFERENCE)
    if ref is None or not ref["new"]["n"]:
        return {}
    limit, ylim = _pareto_limits(rows)
    start = (0.0, ref["new"]["mean"], ref["F_train_fs"]["mean"])
    series: dict[str, list[tuple[float, float, float]]] = {}
    for name, row in rows.items():
        if row.get("group") not in PARETO_SERIES or "lrx" in name or "_g" in name:
            continue
        if name.endswith("_pos") or not row["new"]["n"]:
            continue
        x, y = row["new"]["mean"], row["F_train_fs"]["mean"]
        if math.isfinite(x) and math.isfinite(y) and x <= limit and abs(y) <= ylim:
            series.setdefault(row["group"], [start]).append((row["weight"], x, y))
    return {k: sorted(v) for k, v in series.items()}


def _pareto_limits(rows: dict[str, Any]) -> tuple[float, float]:
    """Plot window: new-task error up to PARETO_SPAN x that of w = 0, forgetting up to
    PARETO_SPAN x |forgetting of w = 0| (at least 0.01)."""
    ref = rows[REFERENCE]
    return (
        PARETO_SPAN * ref["new"]["mean"],
        PARETO_SPAN * max(abs(ref["F_train_fs"]["mean"]), 0.01),
    )


def plot_pareto_series(path: Path, rows: dict[str, Any], title: str) -> Path | None:
    """New-task error (x) against few-shot train forgetting (y): one line per hybrid form
    over experience_weight (labelled with w), plus the reference methods as points."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - matplotlib is a dependency
        return None
    series = pareto_series(rows)
    if not series:
        return None
    limit, ylim = _pareto_limits(rows)
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for label, pts in series.items():
        ax.plot([p[1] for p in pts], [p[2] for p in pts], marker="o", ms=4, lw=1.2, label=label)
        for w, x, y in pts[1:]:
            ax.annotate(f"{w:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for name in PARETO_POINTS:
        row = rows.get(name)
        if row is None or not row["new"]["n"]:
            continue
        x, y = row["new"]["mean"], row["F_train_fs"]["mean"]
        if math.isfinite(x) and math.isfinite(y) and x <= limit and abs(y) <= ylim:
            ax.scatter([x], [y], marker="s", s=28, zorder=3)
            ax.annotate(name, (x, y), fontsize=7, xytext=(3, -9), textcoords="offset points")
    ax.set_xscale("log")
    ax.axhline(0.0, color="grey", lw=0.6)
    ax.set(
        title=title,
        xlabel="new-task nMSE (prequential)",
        ylabel="few-shot forgetting, training tasks",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, title="hybrid, labels = w", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_plots(run: RunDir, agg: dict[str, Any]) -> None:
    for family, fam in agg.items():
        short = family.split("-")[0].lower()
        for split, s in fam["splits"].items():
            rows = s["rows"]
            plot_pareto_series(
                run.path / "plots" / f"pareto_{short}_{split}.png",
                rows,
                title=f"{family} {split}: seed means (outliers > {PARETO_SPAN:g}x w=0 omitted)",
            )
            curves = {
                n: rows[n]["curve"] for n in (*CURVE_METHODS, "identity", "linear") if n in rows
            }
            plot_curves(
                run.path / "plots" / f"curves_{short}_{split}.png",
                curves,
                title=f"{family} {split}: prequential nMSE per window (seed means)",
                xlabel="window (tasks A -> B -> C)",
                ylabel="nMSE",
            )


# --- CLI ------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="quick",
        help="quick: 3 seeds, core methods; full: 5 seeds, every method",
    )
    parser.add_argument(
        "--families", default="", help="comma-separated task families (default: the profile's)"
    )
    parser.add_argument("--seeds", type=int, default=0, help="number of seeds (default: profile)")
    parser.add_argument(
        "--meta_steps", type=int, default=0, help="meta-training iterations (default: profile)"
    )
    parser.add_argument(
        "--methods",
        choices=LEVELS,
        default=None,
        help="method level for every family (default: profile)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=0,
        help="(family, seed) units run in parallel processes (default: the profile's, 2)",
    )
    parser.add_argument(
        "--device",
        default="",
        help="torch device for training and adaptation: cpu, cuda, cuda:N or auto "
        "(default: the profile's, cpu)",
    )
    parser.add_argument("--out", default="runs", help="parent folder of the run folder")
    parser.add_argument("--name", default="", help="run folder name (default: evaluate-<profile>)")
    parser.add_argument("--quiet", action="store_true", help="less logging, no progress bars")
    parser.add_argument(
        "--rerender",
        default="",
        metavar="RUN_DIR",
        help="rebuild the tables and plots of a finished run from its results.json",
    )
    parser.add_argument(
        "--publish",
        default="",
        metavar="DIR",
        help="with --rerender: write a compact results.json and results.md into DIR "
        "(e.g. docs/results/full) and rewrite the marked blocks of README.md and "
        "docs/evaluation.md from it",
    )
    parser.add_argument(
        "--docs",
        action="store_true",
        help="with --rerender: rewrite the marked result blocks of README.md and "
        "docs/evaluation.md from RUN_DIR (a docs/results/<name> folder)",
    )


def resolve_profile(args: argparse.Namespace) -> Profile:
    p = PROFILES[args.profile]
    changes: dict[str, Any] = {}
    if args.families:
        changes["families"] = tuple(f.strip() for f in args.families.split(",") if f.strip())
    if args.seeds:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        changes["seeds"] = args.seeds
    if args.meta_steps:
        if args.meta_steps < 1:
            raise ValueError(f"--meta_steps must be >= 1, got {args.meta_steps}")
        changes["meta_steps"] = args.meta_steps
        changes["joint_steps"] = args.meta_steps
    if args.methods:
        fams = changes.get("families", p.families)
        changes["levels"] = tuple((f, args.methods) for f in fams)
    if args.device:
        if not (args.device in ("cpu", "auto") or args.device.startswith("cuda")):
            raise ValueError(f"--device must be cpu, cuda, cuda:N or auto, got {args.device!r}")
        changes["device"] = args.device
    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs:
        changes["jobs"] = args.jobs
    return dataclasses.replace(p, **changes)


def run(args: argparse.Namespace) -> int:
    """Run the profile, write the run folder, print the tables; returns the exit code."""
    torch.set_num_threads(1)
    if args.publish and not args.rerender:
        raise ValueError("--publish needs --rerender RUN_DIR (the run to publish)")
    if args.rerender:
        if args.publish:
            return publish(Path(args.rerender), Path(args.publish))
        docs = DOC_FILES if args.docs else ()
        return rerender(Path(args.rerender), docs=docs, plots=not docs)
    profile = resolve_profile(args)
    run_dir = fresh_run_dir(args.out, args.name or f"evaluate-{args.profile}")
    grids = {f: method_grid(profile.level(f)) for f in profile.families}
    units = [
        Unit(f, seed, profile, tuple(grids[f]), str(run_dir.path / "work" / f"{f}-seed{seed}"))
        for f in profile.families
        for seed in range(profile.seeds)
    ]
    command = "python -m eaml_ssm evaluate " + " ".join(_argv(args))
    commit = git_commit()
    run_dir.write_json(
        "config.json",
        {"command": command, "commit": commit, "profile": dataclasses.asdict(profile)},
    )
    log.info(
        "evaluate: %d units (%s) into %s", len(units), ", ".join(profile.families), run_dir.path
    )
    t0, load0, cpu0 = time.perf_counter(), os.getloadavg()[0], cpu_seconds()
    results = _run_units(units, profile.jobs, args.quiet)
    saved = {
        "command": command,
        "commit": commit,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        # CPU time of this process and its (finished) workers: on a shared machine the wall
        # time measures the other jobs too; CPU-seconds / cores bounds the unloaded wall time
        "cpu_seconds": round(cpu_seconds() - cpu0, 1),
        "load_average": (load0, os.getloadavg()[0]),
        "profile": dataclasses.asdict(profile),
        "units": finite(results),
    }
    return render(run_dir, saved)


def _aggregate_saved(saved: dict[str, Any]) -> dict[str, Any]:
    profile = saved["profile"]
    levels = dict(profile["levels"])
    grids = {f: method_grid(levels.get(f, "core")) for f in profile["families"]}
    return aggregate(saved["units"], grids)


def cpu_seconds() -> float:
    """User + system CPU time of this process and its waited-for children."""
    import resource

    own, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def source_line(saved: dict[str, Any]) -> str:
    """Where a set of numbers comes from: command, commit, wall and CPU time, machine load."""
    profile = saved["profile"]
    cpu = saved.get("cpu_seconds")
    cpu_text = f"; {cpu:.0f} CPU-seconds" if isinstance(cpu, int | float) else ""
    return (
        f"Command: `{saved['command']}` at commit `{saved.get('commit') or 'unknown'}`  \n"
        f"Wall time: {_seconds(saved['wall_seconds'])}{cpu_text} "
        f"({_cpu_note(profile['jobs'], saved['load_average'])})"
    )


def render(
    run_dir: RunDir, saved: dict[str, Any], *, plots: bool = True, docs: Sequence[Path] = ()
) -> int:
    """Aggregate saved per-seed results, write results.json/results.md/plots, print them;
    with `docs` (a published docs/results folder), rewrite the marked result blocks of those
    files instead, leaving the committed results.json as it is."""
    agg = _aggregate_saved(saved)
    text = report(agg, f"# Evaluation\n\n{source_line(saved)}")
    if not docs:
        run_dir.write_json("results.json", finite({**saved, "aggregate": agg}))
    (run_dir.path / "results.md").write_text(text)
    if plots:
        make_plots(run_dir, agg)
    for doc in docs:
        update_doc(doc, run_dir.path.name, doc_blocks(agg, saved, run_dir.path))
    print(text)
    print(f"run folder: {run_dir.path}  ({_seconds(saved['wall_seconds'])})")
    return 0


# --- results in the repository --------------------------------------------------------------

DOC_FILES = (Path("README.md"), Path("docs/evaluation.md"))


def git_commit() -> str:
    """The checkout's commit (with "+dirty" when tracked files differ), or "" outside git."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return head + ("+dirty" if dirty else "")


def _compact(value: Any) -> Any:
    """Floats to 5 significant digits (the JSON stays small enough to commit)."""
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else value
    if isinstance(value, dict):
        return {k: _compact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_compact(v) for v in value]
    return value


def publish(run_path: Path, dest: Path) -> int:
    """Copy a run's per-seed results (compact, without the aggregate: it is recomputed) to
    `dest` (e.g. docs/results/full), render results.md there and the docs' marked blocks."""
    saved = _load_saved(run_path)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps(finite(_compact(saved)), indent=0) + "\n")
    return rerender(dest, docs=DOC_FILES, plots=False)


STEP_TAGS = ("", "_pos", "_abs", "_posm", "_absm", "_softplus")


def steps_table(agg: dict[str, Any]) -> str:
    """The step-size study: signed, clamped, absolute, mean-matched and softplus-trained step
    sizes, for continual w = 0 and hybn_0.3, per family and split (seed means ± 95 % CI), and
    the measured comparison of the two candidate defaults (softplus vs clamp) for w = 0."""
    head = ["family", "split", "method", "new", "F train few-shot", "F task A few-shot"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    verdicts = []
    for family, fam in agg.items():
        for split, sp in fam["splits"].items():
            rows = sp["rows"]
            for base in (REFERENCE, PREREGISTERED):
                for tag in STEP_TAGS:
                    row = rows.get(base + tag)
                    if row is None:
                        continue
                    cells = [_cell(row[k]) for k in ("new", "F_train_fs", "F_A_fs")]
                    lines.append(
                        f"| {family} | {split} | {base + tag} | " + " | ".join(cells) + " |"
                    )
            soft, pos = rows.get(f"{REFERENCE}_softplus"), rows.get(f"{REFERENCE}_pos")
            if soft and pos:
                d_new = paired(soft["per_seed"]["new"], pos["per_seed"]["new"]).to_dict()
                d_f = paired(soft["per_seed"]["F_train_fs"], pos["per_seed"]["F_train_fs"])
                verdicts.append(
                    f"- {family} {split}: softplus-trained minus clamped, continual w = 0: new "
                    f"{_diff(d_new)}; few-shot train forgetting {_diff(d_f.to_dict())}"
                )
    if len(lines) == 2:
        return ""
    return "\n".join([*lines, "", *verdicts])


def doc_blocks(agg: dict[str, Any], saved: dict[str, Any], where: Path) -> dict[str, str]:
    """The marked blocks of the docs, rendered from one result set."""
    targets_md = []
    quantities_md = []
    for family, fam in agg.items():
        targets_md += [f"**{family}**", "", targets_text(fam["targets"]), ""]
        if fam.get("quantities"):
            quantities_md += [f"**{family}**", "", quantities_table(fam["quantities"]), ""]
    return {
        "source": source_line(saved) + f"  \nFull tables: `{where / 'results.md'}`",
        "headline": headline_table(agg),
        "targets": "\n".join(targets_md).strip(),
        "quantities": "\n".join(quantities_md).strip(),
        "steps": steps_table(agg),
    }


def _seconds(wall: float | None) -> str:
    return "unknown" if wall is None or not math.isfinite(wall) else f"{wall:.0f} s"


def _load_saved(path: Path) -> dict[str, Any]:
    """The saved per-seed results of a run folder: results.json, or, for an interrupted run,
    config.json and the per-seed work/*/unit.json files."""
    if (path / "results.json").exists():
        saved = json.loads((path / "results.json").read_text())
        saved.pop("aggregate", None)
        return saved
    units = sorted(path.glob("work/*/unit.json"))
    if not (path / "config.json").exists() or not units:
        raise FileNotFoundError(f"--rerender: no results.json (nor config.json + units) in {path}")
    config = json.loads((path / "config.json").read_text())
    return {
        **config,
        "command": config["command"] + f"  (interrupted: {len(units)} units)",
        "wall_seconds": math.nan,
        "load_average": (math.nan, math.nan),
        "units": [json.loads(u.read_text()) for u in units],
    }


def rerender(path: Path, *, docs: Sequence[Path] = (), plots: bool = True) -> int:
    """Re-aggregate a run folder (no training, no streams) from its saved results; with
    `docs`, rewrite their marked blocks (named after the folder) from it."""
    return render(RunDir(path), _load_saved(path), plots=plots, docs=docs)


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--profile {args.profile}"]
    for key in ("families", "seeds", "meta_steps", "methods", "jobs", "device"):
        value = getattr(args, key)
        if value and not (key == "jobs" and value == 1):
            out.append(f"--{key} {value}")
    return out


def _cpu_note(jobs: int, load: Sequence[float | None]) -> str:
    start, end = ("?" if v is None or not math.isfinite(v) else f"{v:.1f}" for v in load)
    return (
        f"{os.cpu_count()} CPU cores visible, {jobs} worker process(es) with 1 torch thread "
        f"each; 1-min load average {start} at the start, {end} at the end"
    )


def _run_units(units: list[Unit], jobs: int, quiet: bool) -> list[dict[str, Any]]:
    bar = progress(total=len(units), desc="evaluate", unit="unit", quiet=quiet)
    results = []
    if jobs == 1:
        for unit in units:
            results.append(evaluate_unit(unit))
            bar.update()
    else:
        import multiprocessing as mp

        with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            for res in pool.map(evaluate_unit, units):
                results.append(res)
                bar.update()
    bar.close()
    return results


__all__ = [
    "PROFILES",
    "Method",
    "Profile",
    "add_arguments",
    "aggregate",
    "effects",
    "method_grid",
    "method_table",
    "run",
    "targets",
]
