"""One evaluation unit, a (family, seed): collect and meta-train (models.Models), draw the
unit's own test tasks and probes, run every method on one whole stream per split, and
score it against the references (`evaluate_unit`, what one worker process runs).

Symbols (w windows of l steps): see the glossary in eaml_ssm/__init__.py. In code the window
length l is `m` (the profile's `window`; not the glossary's m).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eaml_ssm import protocol, references, runtime, stream_scoring
from eaml_ssm.adaptation import Adapter
from eaml_ssm.artifacts import RunDir, finite
from eaml_ssm.config import RunConfig
from eaml_ssm.dynamics_ood import DYNAMICS_QUANTITIES, draw_dynamics_ood, dynamics_quantities
from eaml_ssm.evaluate.methods import W_PRE, Method
from eaml_ssm.evaluate.profiles import Profile
from eaml_ssm.evaluate.seeds import unit_seeds
from eaml_ssm.evaluate.trained import Models, negative_share, small_store, store_adapter
from eaml_ssm.run_data import Data, collect_data
from eaml_ssm.tasks import Task, draw_tasks

log = logging.getLogger(__name__)

DIVERGED = 10.0  # nMSE above this (10x identity on training data) or non-finite: diverged


@dataclass(frozen=True)
class Unit:
    """One (family, seed) of a run: its profile, its methods and its work folder."""

    family: str
    seed: int
    profile: Profile
    methods: tuple[Method, ...]
    work: str  # folder for this unit's stage outputs (store, checkpoints)


def unit_config(unit: Unit) -> RunConfig:
    """The run configuration of a unit's collection and meta-training (its own seeds)."""
    p = unit.profile
    seeds = unit_seeds(unit.seed, p.num_tasks, p.test_tasks)
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
        experience_weight=W_PRE,
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
    quantity outside its training range (dynamics_ood.draw_dynamics_ood) where the family has a
    table of them, else parameters outside their ranges."""
    p = unit.profile
    first = unit_seeds(unit.seed, p.num_tasks, p.test_tasks).test
    if split == "ood" and unit.family in DYNAMICS_QUANTITIES:
        return [draw_dynamics_ood(unit.family, first + i) for i in range(p.test_tasks)]
    return draw_tasks(unit.family, p.test_tasks, seed=first, split=split)


def make_probes(unit: Unit, data: Data) -> Probes:
    p, norm, m = unit.profile, data.normalizer, unit.profile.window
    rollout = unit_seeds(unit.seed, p.num_tasks, p.test_tasks).rollout
    old = data.train_tasks[: p.old_tasks]
    old_streams = protocol.task_streams(old, 2 * m * p.pairs_per_task, norm, rollout)
    train_pairs = [q for s in old_streams for q in protocol.window_pairs(s, m, p.pairs_per_task)]
    streams, a_pairs, tasks = {}, {}, {}
    for i, split in enumerate(protocol.TEST_SPLITS):
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


def evaluate_unit(unit: Unit) -> dict[str, Any]:
    """Train (cached per variant) and run every method of `unit` on both streams."""
    runtime.setup(unit.seed, threads=1, device=unit.profile.device)
    t0 = time.perf_counter()
    cfg = unit_config(unit)
    work = Path(unit.work)
    data = collect_data(cfg, RunDir(work / "data"))
    models = Models(cfg, data, work, unit.profile.joint_steps)
    probes = make_probes(unit, data)
    m = unit.profile.window
    out: dict[str, Any] = {"family": unit.family, "seed": unit.seed, "splits": {}, "before": {}}
    befores: dict[str, dict[str, float]] = {}
    prior = references.global_fit(data.store, data.normalizer)
    for split in protocol.TEST_SPLITS:
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
                store = small_store(models, method.store, sum(len(x) for x in streams))
                base = store_adapter(models, store)
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
    run = protocol.StreamRun(
        errors=curve, tasks=[t for _, t, _ in scored], switch=[f for _, _, f in scored]
    )
    return stream_scoring.stream_summary(run)
