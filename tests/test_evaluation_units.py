"""Independent evaluation units (disjoint task seeds), test splits on the dynamics-setting
quantities, the probes' wiring on a real family, the method grid's controls and the
step-size variants."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from tiny_run import tiny_profile

from eaml_ssm import dynamics_ood, evaluate, protocol, tasks
from eaml_ssm.evaluate.seeds import SEED_STRIDE, unit_seeds
from eaml_ssm.features import Normalizer


def test_unit_seeds_are_disjoint_across_seeds_and_roles() -> None:
    ranges = []
    for seed in range(5):
        s = unit_seeds(seed, num_tasks=100, test_tasks=5)
        ranges += [(s.train, s.train + 100), (s.test, s.test + 5)]
    ranges.sort()
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    with pytest.raises(ValueError, match="num_tasks"):
        unit_seeds(0, num_tasks=SEED_STRIDE, test_tasks=5)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        unit_seeds(-1, 10, 5)


def test_pendulum_quantity_ranges_by_hand() -> None:
    r = dynamics_ood.quantity_ranges("Pendulum-v1")
    assert r["g/l"] == pytest.approx((7.5 / 1.5, 12.5 / 0.5))
    assert r["1/(m l^2)"] == pytest.approx((1 / (1.5 * 1.5**2), 1 / (0.5 * 0.5**2)))
    cp = dynamics_ood.quantity_ranges("CartPole-v1")
    assert cp["F/M"] == pytest.approx((5.0 / (1.5 + 0.15), 15.0 / (0.5 + 0.05)))
    assert cp["m_p/M"] == pytest.approx((0.05 / (1.5 + 0.05), 0.15 / (0.5 + 0.15)))
    with pytest.raises(ValueError, match="no dynamics quantities"):
        dynamics_ood.quantity_ranges("MountainCarContinuous-v0")


def test_outside_factor() -> None:
    assert dynamics_ood.outside_factor(30.0, (5.0, 25.0)) == pytest.approx(1.2)
    assert dynamics_ood.outside_factor(2.5, (5.0, 25.0)) == pytest.approx(2.0)
    assert dynamics_ood.outside_factor(10.0, (5.0, 25.0)) == 1.0


def test_the_old_parameter_ood_split_is_partly_in_range() -> None:
    """Why the split moved: v1's out-of-range Pendulum tasks keep g/l inside its range."""
    r = dynamics_ood.quantity_ranges("Pendulum-v1")
    old = [tasks.draw_task("Pendulum-v1", s, "ood") for s in range(10)]
    assert all(r["g/l"][0] <= t.params["g"] / t.params["l"] <= r["g/l"][1] for t in old)


@pytest.mark.parametrize("family", ["Pendulum-v1", "CartPole-v1"])
def test_dynamics_ood_tasks_are_outside_in_every_quantity(family: str) -> None:
    ranges = dynamics_ood.quantity_ranges(family)
    lo, hi = dynamics_ood.DYNAMICS_OOD_FACTORS
    for seed in range(8):
        task = dynamics_ood.draw_dynamics_ood(family, seed)
        assert task.split == "ood" and task.seed == seed
        for q, value in dynamics_ood.dynamics_quantities(task).items():
            assert lo <= dynamics_ood.outside_factor(value, ranges[q]) <= hi, (seed, q, value)
    again = dynamics_ood.draw_dynamics_ood(family, 3)
    assert again.params == dynamics_ood.draw_dynamics_ood(family, 3).params
    assert again.params != dynamics_ood.draw_dynamics_ood(family, 4).params
    with pytest.raises(ValueError, match="factors"):
        dynamics_ood.draw_dynamics_ood(family, 0, factors=(2.0, 1.5))


def _unit(seed: int) -> evaluate.Unit:
    p = tiny_profile(seeds=2, num_tasks=4, test_tasks=5)
    return evaluate.Unit("Pendulum-v1", seed, p, (), "/nonexistent")


def test_probes_wiring_independent_units_and_splits() -> None:
    from eaml_ssm.run_data import Data

    family = tasks.get_family("Pendulum-v1")
    norm = Normalizer(family.input_dim, family.target_dim)
    probes = {}
    for seed in (0, 1):
        unit = _unit(seed)
        cfg_seed = evaluate.unit_config(unit).seed
        train = tasks.draw_tasks("Pendulum-v1", 4, seed=cfg_seed, split="train")
        data = Data(family, train, None, norm)
        probes[seed] = (train, evaluate.make_probes(unit, data))
    (train0, p0), (train1, p1) = probes[0], probes[1]
    assert {t.seed for t in train0}.isdisjoint({t.seed for t in train1})
    ranges = dynamics_ood.quantity_ranges("Pendulum-v1")
    for train, p in ((train0, p0), (train1, p1)):
        assert set(p.streams) == set(protocol.TEST_SPLITS)
        for split in protocol.TEST_SPLITS:
            assert len(p.tasks[split]) >= 5 and len(p.streams[split]) == len(p.tasks[split])
            assert all(len(s) == 32 for s in p.streams[split])
            assert {t.seed for t in p.tasks[split]}.isdisjoint({t.seed for t in train})
            assert len(p.a_pairs[split]) == 2
        for t in p.tasks["heldout"]:
            spec = {s.name: s for s in t.family.params}
            assert all(spec[k].contains(v, "heldout") for k, v in t.params.items())
        for t in p.tasks["ood"]:
            q = dynamics_ood.dynamics_quantities(t)
            assert all(dynamics_ood.outside_factor(q[k], ranges[k]) > 1.0 for k in q)
        assert len(p.train_pairs) == 2  # old_tasks x pairs_per_task
    assert {t.seed for t in p0.tasks["ood"]}.isdisjoint({t.seed for t in p1.tasks["ood"]})


def test_matched_controls_sit_at_the_hybrid_effective_step() -> None:
    grid = {m.name: m for m in evaluate.method_grid("all")}
    for w in evaluate.HYBRID_WEIGHTS:
        control = grid[evaluate.matched_control_name(w)]
        cfg = dict(control.overrides)
        assert cfg["experience_weight"] == 0.0 and cfg["mode"] == "continual"
        assert cfg["lr_scale"] == pytest.approx(1.0 / (1.0 + w))
        assert f"hybn_{w:g}" in grid
    assert evaluate.ZERO_SHOT in grid and not grid[evaluate.ZERO_SHOT].adapt
    for level in evaluate.LEVELS:
        assert evaluate.ZERO_SHOT in {m.name for m in evaluate.method_grid(level)}


def test_step_size_variants_separate_sign_from_magnitude() -> None:
    lrs = {"a": torch.tensor([0.2, -0.1]), "b": torch.tensor([0.1, 0.0, -0.2])}
    signed_mean = (0.2 - 0.1 + 0.1 - 0.2) / 5
    assert signed_mean == pytest.approx(0.0)  # no mean to match: a clear error
    with pytest.raises(ValueError, match="mean-match"):
        evaluate.step_size_variant(lrs, "maml_posm")
    lrs = {"a": torch.tensor([0.4, -0.1]), "b": torch.tensor([0.1, 0.0, -0.2])}
    pos = evaluate.step_size_variant(lrs, "maml_pos")
    assert pos["a"].tolist() == pytest.approx([0.4, 0.0]) and pos["b"].min() >= 0
    ab = evaluate.step_size_variant(lrs, "maml_abs")
    assert ab["b"].tolist() == pytest.approx([0.1, 0.0, 0.2])
    signed = 0.4 - 0.1 + 0.1 - 0.2
    for kind in ("maml_posm", "maml_absm"):
        out = evaluate.step_size_variant(lrs, kind)
        assert sum(float(t.sum()) for t in out.values()) == pytest.approx(signed)
        assert all(float(t.min()) >= 0 for t in out.values())
    with pytest.raises(ValueError, match="must be one of"):
        evaluate.step_size_variant(lrs, "maml_neg")
    assert math.isfinite(signed)


def test_replay_source_rows_set_the_adapter_option() -> None:
    rows = {m.name: m for m in evaluate.live_replay_rows()}
    assert set(rows) == {"hybn_0.3_live", "hybn_0.3_oldonly"}
    assert set(rows) <= {m.name for m in evaluate.method_grid("core")}
    for name, live in (("hybn_0.3_live", True), ("hybn_0.3_oldonly", False)):
        cfg = dict(rows[name].overrides)
        assert cfg["replay_live"] is live and cfg["experience_weight"] == 0.3
        assert rows[name].store == "live"  # both replay from a store the stream writes into


def test_negative_step_share_counts_entries() -> None:
    from types import SimpleNamespace

    fake = SimpleNamespace(
        learn_inner_lr=True,
        inner_lrs={"a": torch.tensor([0.1, -0.2, 0.3]), "b": torch.tensor([-1.0])},
    )
    assert evaluate.negative_share(fake) == pytest.approx(0.5)
    assert math.isnan(evaluate.negative_share(None))
