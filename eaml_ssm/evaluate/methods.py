"""The evaluation's method grid: which weights each row uses and how they adapt.

A method is a row of the tables, named by a short key (`grbal`, `cont_w0`, `hybn_0.3`, ...;
docs/evaluation.md lists them). `label(key)` is the display name the pipeline's summary uses
for the same method ("GrBAL reset (w=0)", ...): one registry for both names. `method_grid`
returns the rows of a level ("sanity", "core", "cartpole", "all", "stability", "steps").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from eaml_ssm.method_names import REFERENCE, core_method, hybrid_key

W_PRE = 0.3  # the hybrid weight fixed before the run (calibration study)
PREREGISTERED = hybrid_key(W_PRE)  # "hybn_0.3"


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


def _core(key: str, **kw: Any) -> Method:
    """A baseline row from the shared registry (`method_names.core_method`)."""
    adapts, fields = core_method(key)
    return _m(key, group="baseline", adapt=adapts, **fields, **kw)


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
# Step-size variants of the second-order weights (model names; see models.step_size_variant):
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


def live_replay_rows() -> list[Method]:
    """The replay-source comparison (item 7 of the evaluation issue): `hybn_0.3` on a store
    that also receives every used stream window ("live" store), replaying old tasks only
    (`replay_live=False`) or old tasks and the live stream (`replay_live=True`)."""
    out = []
    for live in (False, True):
        out.append(
            _m(
                hybrid_key(W_PRE, live),
                group="replay source",
                weight=W_PRE,
                store="live",
                mode="continual",
                experience_weight=W_PRE,
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
            _m(f"{PREREGISTERED}{tag}", model=model, mode="continual", experience_weight=W_PRE),
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
                experience_weight=W_PRE,
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
    w0: dict[str, Any] = core_method(REFERENCE)[1]
    grid = [
        _core("none"),
        _core("grbal", weight=0.0),
        _core(REFERENCE, weight=0.0),
        _hybrid(W_PRE, True, "uniform"),
        _hybrid(1.0, True, "uniform"),
        _hybrid(1.0, False, "uniform"),
        _m("l2_1", group="l2", mode="continual", experience_weight=0.0, anchor_weight=1.0),
    ]
    zero_shot = _m(ZERO_SHOT, model="joint", adapt=False, group="baseline")
    if level == "sanity":
        return [*grid[:4], zero_shot, matched_control(W_PRE)]
    if level == "stability":
        return [*grid[:3], zero_shot, *_stability_grid()]
    if level == "steps":
        return [*grid[:4], zero_shot, *step_size_rows()]
    grid += [zero_shot, matched_control(W_PRE), matched_control(1.0), *live_replay_rows()]
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
                f"{prefix}_{PREREGISTERED}",
                model=model,
                mode="continual",
                experience_weight=W_PRE,
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
                experience_weight=W_PRE,
                replay="rows",  # a reservoir store keeps few intact windows: rows for both
            )
        )
    return grid
