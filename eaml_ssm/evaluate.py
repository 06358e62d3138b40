"""Evaluate, honestly, what hybrid test-time adaptation buys (`python -m eaml_ssm evaluate`).

For every family and seed: collect meta-training tasks into the store, meta-train the SSM
(second-order MAML with learned step sizes; also first-order MAML and a jointly trained
non-meta model for the ablations), then run two streams of test tasks A -> B -> C (held-out
values inside the training range, and out-of-range values), 200 steps per task, adapting
every M=16 steps on the latest window and scoring each adaptation on the next window
(prequential; see eaml_ssm.protocol). Every method starts from the same meta-learned weights
with the same step size and number of steps.

Metrics (nMSE = MSE / store variance of the target, per dimension, averaged):
  new          mean prequential nMSE over the stream
  F train      forgetting on meta-training tasks: retention after the stream minus retention
               at the meta-learned weights, 0-shot (weights as they are) and few-shot (adapt
               N steps on a held-out window of the old task, score the next window)
  F A          the same for the stream's first task, against retention right after task A
  diverged     runs with a window error or final 0-shot retention above 100 or non-finite
  rollbacks    firings of the adapter's guard (a step whose loss explodes is undone)
  ms/step      wall time per accepted adaptation step
Identity and per-window ridge least squares (best ridge, chosen on the stream) are scored on
the same windows and reported beside every row as ratios (new / identity, new / linear).

Profiles: `quick` (3 seeds; Pendulum core methods, CartPole sanity set; 156 s measured on the
2-core CPU) and `full` (5 seeds, every method; 48 min measured). `--rerender RUN_DIR` rebuilds
the tables and plots of a finished (or interrupted) run without recomputing anything.
Output (run folder): results.json (per-seed values, seed means, 95% CIs, targets),
results.md (tables), plots/pareto_*.png and plots/curves_*.png.
"""

from __future__ import annotations

import argparse
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

from eaml_ssm import pipeline, protocol
from eaml_ssm.adaptation import Adapter, ExperienceSource
from eaml_ssm.artifacts import RunDir, finite, fresh_run_dir, seed_everything
from eaml_ssm.collect import build_store
from eaml_ssm.config import RunConfig
from eaml_ssm.feed import StoreLoader, draw_seed
from eaml_ssm.plots import plot_curves
from eaml_ssm.progress import progress
from eaml_ssm.ssm import SSM
from eaml_ssm.stats import pass_count, percent, reduction, relative_change, summarize
from eaml_ssm.tasks import sample_tasks

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
    store: str = ""  # "" = the meta-training store; "fifo"/"reservoir": small store + stream rows
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
    if level == "sanity":
        return grid[:4]
    if level == "stability":
        return grid[:3] + _stability_grid()
    if level == "steps":
        base = [*grid[:4], grid[6]]  # none, grbal, cont_w0, hybn_0.3, l2_1
        return base + [dataclasses.replace(m, name=f"{m.name}_pos", model="maml_pos") for m in base]
    if level == "core":
        return grid
    grid += [
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
    for prefix, model in (("FO", "fo"), ("J", "joint")):
        grid += [
            _m(f"{prefix}_none", model=model, adapt=False),
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
    for sampling in ("task_balanced", "nearest"):
        for w in (0.1, 0.3, 1.0, 3.0):
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
    stream_steps: int = 200
    test_tasks: int = 3  # A, B, C
    window: int = 16  # M
    old_tasks: int = 8  # meta-training tasks whose retention is measured
    pairs_per_task: int = 3  # held-out (a, b) window pairs per old task
    pairs_task_a: int = 6
    jobs: int = 1  # (family, seed) units run in parallel processes
    device: str = "cpu"  # where each unit trains and adapts (auto|cpu|cuda)

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
        num_tasks=100,
        meta_steps=600,
        joint_steps=600,
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
        if kind == "maml_pos":
            return self._nonnegative_steps(self.adapter("maml"))
        cfg = dataclasses.replace(self.cfg, first_order=(kind == "fo"))
        run = RunDir(self.work / kind)
        trained = pipeline.train_stage(cfg, run, self.data, resume=False)
        self.seconds[kind] = round(trained.seconds, 2)
        base = pipeline.base_adapter(cfg, trained, self.data)
        self.mamls[kind] = trained.maml
        if kind == "maml":
            self.alpha = mean_inner_lr(trained.maml)
        return base

    def _nonnegative_steps(self, base: Adapter) -> Adapter:
        """The second-order weights with every learned step size clamped at >= 0."""
        return protocol.variant(base, nonnegative_lrs=True)


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
    return RunConfig(
        env_name=unit.family,
        seed=unit.seed,
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


def make_probes(unit: Unit, data: pipeline.Data) -> Probes:
    p, norm, m = unit.profile, data.normalizer, unit.profile.window
    old = data.train_tasks[: p.old_tasks]
    old_streams = protocol.task_streams(
        old, 2 * m * p.pairs_per_task, norm, 7919 + 1000 * unit.seed
    )
    train_pairs = [q for s in old_streams for q in protocol.window_pairs(s, m, p.pairs_per_task)]
    streams, a_pairs = {}, {}
    for split in SPLITS:
        tasks = sample_tasks(unit.family, p.test_tasks, seed=unit.seed, split=split)
        streams[split] = protocol.task_streams(
            tasks, p.stream_steps, norm, 104729 + 1000 * unit.seed
        )
        a_stream = protocol.task_streams(tasks[:1], 2 * m * p.pairs_task_a, norm, 51 + unit.seed)
        a_pairs[split] = protocol.window_pairs(a_stream[0], m, p.pairs_task_a)
    return Probes(streams, train_pairs, a_pairs)


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
    """One method on one stream A -> B -> C: errors, forgetting, divergence, timing."""
    adapter = protocol.variant(base, **method.config())
    shots = base.config.num_steps
    a_pairs = probes.a_pairs[split]
    errors: list[float] = []
    seconds, steps = 0.0, 0
    after_a: dict[str, float] = {}
    for i, data in enumerate(streams):
        res = protocol.prequential_run(
            adapter, data, m, adapt=method.adapt, store=store, task_id=10_000 + i
        )
        errors += res.errors
        seconds += res.adapt_seconds
        steps += res.steps
        if i == 0:
            after_a = _retention(adapter, a_pairs, m, shots)
    final_a = _retention(adapter, a_pairs, m, shots)
    final_train = _retention(adapter, probes.train_pairs, m, shots)
    new = float(np.mean(errors))
    row = {
        "new": new,
        "curve": errors,
        "F_train_0": final_train["0"] - before["0"],
        "F_train_fs": final_train["fs"] - before["fs"],
        "F_A_0": final_a["0"] - after_a["0"],
        "F_A_fs": final_a["fs"] - after_a["fs"],
        "rollbacks": int(adapter.stats.get("rollbacks", 0)),
        "ms_per_step": 1000 * seconds / steps if steps else math.nan,
    }
    row["diverged"] = is_diverged(row)
    return row


def is_diverged(row: dict[str, Any]) -> bool:
    """A window error, or the change of 0-shot train retention, non-finite or > DIVERGED."""
    checked = [*row["curve"], row["F_train_0"]]
    return not all(v is not None and math.isfinite(v) and abs(v) <= DIVERGED for v in checked)


def _retention(
    adapter: Adapter, pairs: Sequence[protocol.WindowPair], m: int, shots: int
) -> dict[str, float]:
    return {
        "0": protocol.retention(adapter, pairs, m, shots=0),
        "fs": protocol.retention(adapter, pairs, m, shots=shots),
    }


def _small_store(models: Models, retention: str) -> Any:
    """The meta-training data in a store of half the rows, kept by `retention`."""
    cfg = models.cfg
    store, _ = build_store(
        models.data.train_tasks,
        cfg.steps_per_task,
        capacity=cfg.num_tasks * cfg.steps_per_task // 2,
        store_seed=cfg.seed,
        retention=retention,
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
    for split in SPLITS:
        streams = probes.streams[split]
        res: dict[str, Any] = {"tasks": [s.name for s in streams], "methods": {}}
        res["identity"] = _baseline(
            [e for s in streams for e in protocol.identity_windows(s, m, data.normalizer)]
        )
        fits = [protocol.best_linear_windows(s, m) for s in streams]
        res["linear"] = _baseline([e for _, errs in fits for e in errs])
        res["linear"]["ridges"] = [r for r, _ in fits]
        for method in unit.methods:
            base = models.adapter(method.model)
            if method.model not in befores:
                befores[method.model] = _retention(
                    base, probes.train_pairs, m, base.config.num_steps
                )
            store = None
            if method.store:
                store = _small_store(models, method.store)
                base = _store_adapter(models, store)
            row = run_method(base, method, streams, probes, split, befores[method.model], m, store)
            row["ratio_identity"] = row["new"] / res["identity"]["new"]
            row["ratio_linear"] = row["new"] / res["linear"]["new"]
            res["methods"][method.name] = row
        out["splits"][split] = res
    out["before"] = befores
    out["alpha"] = models.alpha
    out["train_seconds"] = models.seconds
    out["seconds"] = round(time.perf_counter() - t0, 1)
    RunDir(work).write_json("unit.json", finite(out))  # kept if a later unit fails
    log.info("%s seed %d done in %.0f s", unit.family, unit.seed, out["seconds"])
    return out


def _baseline(errors: list[float]) -> dict[str, Any]:
    return {"new": float(np.mean(errors)), "curve": errors}


# --- aggregation ----------------------------------------------------------------------------


def aggregate(units: Sequence[dict[str, Any]], methods: dict[str, list[Method]]) -> dict[str, Any]:
    """Seed means, CIs, effect sizes and targets per family and split."""
    out: dict[str, Any] = {}
    for family in dict.fromkeys(u["family"] for u in units):
        runs = sorted((u for u in units if u["family"] == family), key=lambda u: u["seed"])
        fam: dict[str, Any] = {"seeds": [u["seed"] for u in runs], "splits": {}}
        fam["alpha"] = summarize([u["alpha"] for u in runs]).to_dict()
        for split in SPLITS:
            fam["splits"][split] = _aggregate_split(
                [u["splits"][split] for u in runs], methods[family]
            )
        fam["targets"] = targets(fam, family)
        out[family] = fam
    return out


def _per_seed(split_runs: Sequence[dict[str, Any]], name: str, metric: str) -> list[float]:
    vals = []
    for r in split_runs:
        row = r["methods"][name]
        value = row[metric]
        bad = value is None or is_diverged(row)
        vals.append(math.nan if bad else float(value))
    return vals


def _aggregate_split(split_runs: Sequence[dict[str, Any]], methods: list[Method]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for base in ("identity", "linear"):
        rows[base] = {
            "new": summarize([r[base]["new"] for r in split_runs]).to_dict(),
            "curve": np.mean([r[base]["curve"] for r in split_runs], axis=0).tolist(),
            "per_seed": {"new": [r[base]["new"] for r in split_runs]},
        }
    for method in methods:
        name = method.name
        per = {
            k: _per_seed(split_runs, name, k) for k in (*METRICS, "ratio_identity", "ratio_linear")
        }
        curves = np.array([r["methods"][name]["curve"] for r in split_runs], dtype=np.float64)
        rows[name] = {
            **{k: summarize(v).to_dict() for k, v in per.items()},
            "diverged": sum(is_diverged(r["methods"][name]) for r in split_runs),
            "runs": len(split_runs),
            "rollbacks": int(sum(r["methods"][name]["rollbacks"] for r in split_runs)),
            "ms_per_step": summarize(
                [r["methods"][name]["ms_per_step"] for r in split_runs]
            ).to_dict(),
            "curve": np.nanmean(np.where(np.isfinite(curves), curves, np.nan), axis=0).tolist(),
            "per_seed": per,
            "group": method.group,
            "weight": method.weight,
        }
    if REFERENCE in rows:
        rows_effects = {
            m.name: effects(rows[m.name]["per_seed"], rows[REFERENCE]["per_seed"], rows.get("none"))
            for m in methods
            if m.name != REFERENCE and m.adapt
        }
    else:
        rows_effects = {}
    return {"rows": rows, "effects": rows_effects}


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


def _mean(rows: dict[str, Any], name: str, metric: str = "new") -> float:
    row = rows.get(name)
    return math.nan if row is None else float(row[metric]["mean"])


def targets(fam: dict[str, Any], family: str) -> dict[str, Any]:
    """The issue's targets on seed means, per split (reported, never tuned to)."""
    out: dict[str, Any] = {}
    for split, agg in fam["splits"].items():
        rows = agg["rows"]
        t: dict[str, Any] = {}
        none = _mean(rows, "none")
        gains = {
            n: 1 - _mean(rows, n) / none for n in ("grbal", REFERENCE, PREREGISTERED) if n in rows
        }
        t["adaptation_gain"] = {"gains": gains, "pass": all(g >= 0.5 for g in gains.values())}
        t["hybrid"] = _hybrid_target(rows, family)
        stab = [
            n
            for n, r in rows.items()
            if isinstance(r, dict) and "diverged" in r and (n.startswith("hyb") or "lrx2" in n)
        ]
        t["stability"] = {
            "rows": stab,
            "diverged_runs": {n: rows[n]["diverged"] for n in stab if rows[n]["diverged"]},
            "rollbacks": {n: rows[n]["rollbacks"] for n in stab if rows[n]["rollbacks"]},
            "pass": all(rows[n]["diverged"] == 0 for n in stab),
            "tested": any("lrx2" in n for n in stab) and any(n.startswith("hyb_3") for n in stab),
        }
        learned = [n for n, r in rows.items() if n not in ("identity", "linear") and r["new"]["n"]]
        ident, lin = _mean(rows, "identity"), _mean(rows, "linear")
        t["beats_identity"] = {
            "failing": [n for n in learned if not _mean(rows, n) < ident],
            "pass": all(_mean(rows, n) < ident for n in learned),
        }
        adapted = [n for n in ("grbal", REFERENCE, PREREGISTERED) if n in rows]
        t["beats_linear"] = {
            "linear": lin,
            "models": {n: _mean(rows, n) for n in adapted},
            "pass": all(_mean(rows, n) < lin for n in adapted),
            "required": family != "CartPole-v1" or split == "heldout",
        }
        tuned = [n for n in rows if n == REFERENCE or n.startswith(f"{REFERENCE}_lrx")]
        best_w0 = min(tuned, key=lambda n: _mean(rows, n))
        hybrids = [n for n in rows if n.startswith("hyb") and rows[n]["new"]["n"]]
        best_h = min(hybrids, key=lambda n: _mean(rows, n)) if hybrids else None
        t["stretch"] = {
            "tuned_w0": best_w0,
            "tuned_w0_new": _mean(rows, best_w0),
            "best_hybrid": best_h,
            "best_hybrid_new": math.nan if best_h is None else _mean(rows, best_h),
            "pass": best_h is not None and _mean(rows, best_h) < _mean(rows, best_w0),
            "tuned_over": tuned,
        }
        out[split] = t
    return out


def _hybrid_target(rows: dict[str, Any], family: str) -> dict[str, Any]:
    ref_new = min(_mean(rows, REFERENCE), _mean(rows, "grbal"))
    f0 = _mean(rows, REFERENCE, "F_train_fs")

    def check(name: str) -> dict[str, Any]:
        red = 1 - _mean(rows, name, "F_train_fs") / f0 if f0 > 1e-4 else math.nan
        ratio = _mean(rows, name) / ref_new
        return {
            "method": name,
            "reduction_train_fs": red,
            "new_over_best_of_w0_grbal": ratio,
            "pass": bool(math.isfinite(red) and red >= 0.5 and ratio <= 1.1),
        }

    hybrids = [n for n in rows if n.startswith("hyb") and rows[n]["new"]["n"]]
    checks = [check(n) for n in hybrids]
    passing = [c for c in checks if c["pass"]]
    best = max(passing, key=lambda c: c["reduction_train_fs"]) if passing else None
    if best is None and checks:  # closest miss: the smallest new-task ratio among >= 50 % cuts
        cut = [
            c
            for c in checks
            if math.isfinite(c["reduction_train_fs"]) and c["reduction_train_fs"] >= 0.5
        ]
        best = min(cut or checks, key=lambda c: c["new_over_best_of_w0_grbal"])
    return {
        "required": family != "CartPole-v1",  # CartPole has no forgetting to remove
        "reference_forgetting_train_fs": f0,
        "preregistered": check(PREREGISTERED) if PREREGISTERED in rows else None,
        "best_of_sweep": best,
        "note": "best_of_sweep is chosen on the test streams (optimistic)",
    }


# --- tables ---------------------------------------------------------------------------------

COLUMNS = (
    ("new", "new-task nMSE"),
    ("ratio_identity", "/ identity"),
    ("ratio_linear", "/ linear"),
    ("F_train_0", "F train 0-shot"),
    ("F_train_fs", "F train few-shot"),
    ("F_A_0", "F task A 0-shot"),
    ("F_A_fs", "F task A few-shot"),
)


def _cell(summary: dict[str, Any], digits: int = 4) -> str:
    mean, ci, n, bad = summary["mean"], summary["ci95"], summary["n"], summary["n_bad"]
    if n == 0:
        return "diverged" if bad else "-"
    text = f"{mean:.{digits}f}"
    if ci is not None and math.isfinite(ci):
        text += f" ± {ci:.{digits}f}"
    return text


def method_table(agg: dict[str, Any]) -> str:
    """Markdown table of one family and split: seed means ± 95% CI."""
    rows = agg["rows"]
    head = [label for _, label in COLUMNS] + ["diverged", "rollbacks", "ms/step"]
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for base in ("identity", "linear"):
        cells = [_cell(rows[base]["new"])] + ["—"] * (len(head) - 1)
        label = "linear LS (best ridge)" if base == "linear" else base
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for name, row in rows.items():
        if name in ("identity", "linear"):
            continue
        cells = [_cell(row[k], 3 if k.startswith("ratio") else 4) for k, _ in COLUMNS]
        cells += [
            f"{row['diverged']}/{row['runs']}",
            str(row["rollbacks"]),
            _cell(row["ms_per_step"], 1) if row["ms_per_step"]["n"] else "-",
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
    def yes(ok: bool) -> str:
        return "met" if ok else "MISSED"

    lines = []
    for split, s in t.items():
        g = s["adaptation_gain"]
        lines.append(
            f"- {split}: adaptation gain vs none "
            + ", ".join(f"{k} {100 * v:.0f} %" for k, v in g["gains"].items())
            + f" (>= 50 %): {yes(g['pass'])}"
        )
        h = s["hybrid"]
        for label in ("preregistered", "best_of_sweep"):
            c = h[label]
            if c is None:
                continue
            lines.append(
                f"- {split}: hybrid target, {label.replace('_', ' ')} `{c['method']}`: few-shot "
                f"train forgetting cut {percent(c['reduction_train_fs']).lstrip('+')} vs w=0 "
                f"(w=0 forgetting {h['reference_forgetting_train_fs']:.4f}), new-task "
                f"{c['new_over_best_of_w0_grbal']:.2f}x the better of w=0 and GrBAL: "
                f"{yes(c['pass'])}{'' if h['required'] else ' (not required)'}"
            )
        st = s["stability"]
        if not st.get("tested", True):
            lines.append(f"- {split}: stability (w <= 3, lr up to 2x): not tested at this level")
        else:
            lines.append(
                f"- {split}: stability (w <= 3, lr up to 2x): diverged runs "
                f"{st['diverged_runs'] or 'none'}; rollbacks {st['rollbacks'] or 'none'}: "
                f"{yes(st['pass'])}"
            )
        bi = s["beats_identity"]
        lines.append(
            f"- {split}: every learned method beats identity: {yes(bi['pass'])}"
            + (f" (not: {', '.join(bi['failing'])})" if bi["failing"] else "")
        )
        bl = s["beats_linear"]
        req = "" if bl["required"] else " (not required)"
        lines.append(
            f"- {split}: adapted SSM beats linear LS ({bl['linear']:.4f}): "
            + ", ".join(f"{k} {v:.4f}" for k, v in bl["models"].items())
            + f": {yes(bl['pass'])}{req}"
        )
        sr = s["stretch"]
        if sr["best_hybrid"] and len(sr["tuned_over"]) < 2:
            lines.append(f"- {split}: stretch: not tested at this level (no step-size sweep)")
        elif sr["best_hybrid"]:
            lines.append(
                f"- {split}: stretch, best hybrid `{sr['best_hybrid']}` "
                f"{sr['best_hybrid_new']:.4f} vs tuned w=0 `{sr['tuned_w0']}` "
                f"{sr['tuned_w0_new']:.4f}: {yes(sr['pass'])}"
            )
    return "\n".join(lines)


HEADLINE = ("none", "grbal", REFERENCE, PREREGISTERED, "hybn_1", "hyb_1", "hyb_3", "l2_1",
            "FO_cont_w0", "J_cont_w0")  # fmt: skip


def headline_table(agg: dict[str, Any]) -> str:
    """One compact table: the key rows of every family, both streams side by side."""
    cols = [(split, k) for k in ("new", "F_train_fs") for split in SPLITS]
    head = [f"{'new' if k == 'new' else 'F train few-shot'} ({split})" for split, k in cols]
    lines = ["| family | method | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    for family, fam in agg.items():
        splits = fam["splits"]
        for name in ("identity", "linear", *HEADLINE):
            if name not in splits[SPLITS[0]]["rows"]:
                continue
            cells = []
            for split, k in cols:
                row = splits[split]["rows"][name]
                cells.append(_cell(row[k]) if k in row else "—")
            label = "linear LS (best ridge)" if name == "linear" else name
            lines.append(f"| {family} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(agg: dict[str, Any], header: str) -> str:
    parts = [header, "\n## Headline (seed means ± 95% CI; nMSE, forgetting: positive = worse)\n"]
    parts.append(headline_table(agg))
    for family, fam in agg.items():
        alpha = fam["alpha"]
        parts.append(
            f"\n## {family} (seeds {fam['seeds']}; mean learned step size {alpha['mean']:.4f})"
        )
        for split, s in fam["splits"].items():
            parts.append(f"\n### {family}, {split} stream: seed means ± 95% CI\n")
            parts.append(method_table(s))
            if s["effects"]:
                parts.append(
                    f"\nEffect sizes vs `{REFERENCE}` (seed means; pass = seeds with >= 50 % "
                    "less train forgetting and <= +10 % new-task error)\n"
                )
                parts.append(effects_table(s))
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
        choices=("auto", "cpu", "cuda"),
        default="cpu",
        help="where every unit trains and adapts (auto picks cuda when available)",
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
    if args.jobs < 0:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.jobs:
        changes["jobs"] = args.jobs
    changes["device"] = args.device
    return dataclasses.replace(p, **changes)


def run(args: argparse.Namespace) -> int:
    """Run the profile, write the run folder, print the tables; returns the exit code."""
    torch.set_num_threads(1)
    if args.rerender:
        return rerender(Path(args.rerender))
    profile = resolve_profile(args)
    run_dir = fresh_run_dir(args.out, args.name or f"evaluate-{args.profile}")
    grids = {f: method_grid(profile.level(f)) for f in profile.families}
    units = [
        Unit(f, seed, profile, tuple(grids[f]), str(run_dir.path / "work" / f"{f}-seed{seed}"))
        for f in profile.families
        for seed in range(profile.seeds)
    ]
    command = "python -m eaml_ssm evaluate " + " ".join(_argv(args))
    run_dir.write_json("config.json", {"command": command, "profile": dataclasses.asdict(profile)})
    log.info(
        "evaluate: %d units (%s) into %s", len(units), ", ".join(profile.families), run_dir.path
    )
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    results = _run_units(units, profile.jobs, args.quiet)
    saved = {
        "command": command,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "load_average": (load0, os.getloadavg()[0]),
        "profile": dataclasses.asdict(profile),
        "units": finite(results),
    }
    return render(run_dir, saved)


def render(run_dir: RunDir, saved: dict[str, Any]) -> int:
    """Aggregate saved per-seed results, write results.json/results.md/plots, print them."""
    profile = saved["profile"]
    levels = dict(profile["levels"])
    grids = {f: method_grid(levels.get(f, "core")) for f in profile["families"]}
    agg = aggregate(saved["units"], grids)
    wall, load = saved["wall_seconds"], saved["load_average"]
    header = (
        f"# Evaluation\n\nCommand: `{saved['command']}`  \n"
        f"Wall time: {_seconds(wall)} ({_cpu_note(profile['jobs'], load)})"
    )
    text = report(agg, header)
    run_dir.write_json("results.json", finite({**saved, "aggregate": agg}))
    (run_dir.path / "results.md").write_text(text)
    make_plots(run_dir, agg)
    print(text)
    print(f"run folder: {run_dir.path}  ({_seconds(wall)})")
    return 0


def _seconds(wall: float | None) -> str:
    return "unknown" if wall is None or not math.isfinite(wall) else f"{wall:.0f} s"


def rerender(path: Path) -> int:
    """Re-aggregate a run folder (no training, no streams) from its results.json, or, for an
    interrupted run, from config.json and the per-seed work/*/unit.json files."""
    if (path / "results.json").exists():
        saved = json.loads((path / "results.json").read_text())
        saved.pop("aggregate", None)
        return render(RunDir(path), saved)
    units = sorted(path.glob("work/*/unit.json"))
    if not (path / "config.json").exists() or not units:
        raise FileNotFoundError(f"--rerender: no results.json (nor config.json + units) in {path}")
    config = json.loads((path / "config.json").read_text())
    saved = {
        **config,
        "command": config["command"] + f"  (interrupted: {len(units)} units)",
        "wall_seconds": math.nan,
        "load_average": (math.nan, math.nan),
        "units": [json.loads(u.read_text()) for u in units],
    }
    return render(RunDir(path), saved)


def _argv(args: argparse.Namespace) -> list[str]:
    out = [f"--profile {args.profile}"]
    for key in ("families", "seeds", "meta_steps", "methods", "jobs"):
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
