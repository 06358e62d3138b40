"""The evaluation machinery on a toy family: metrics against hand-computed values, the CI
formula, effect sizes, the table writer and the targets (the profiles themselves are a
separate command: `python -m eaml_ssm evaluate --profile quick`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from toy_linear import sgd_step, toy_adapter

from eaml_ssm import evaluate, protocol, stats
from eaml_ssm.adaptation import AdaptationConfig, Adapter
from eaml_ssm.artifacts import finite
from eaml_ssm.features import Normalizer
from eaml_ssm.markdown import md_table

M = 4  # window length of the toy streams


# --- a toy family: y = a * x, one scalar input and output, a stateless linear model --------


def toy_stream(a: float, n: int = 3 * M, seed: int = 0) -> protocol.StreamData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1)).astype(np.float32)  # (T, 1)
    y = (a * x).astype(np.float32)  # (T, 1)
    starts = np.zeros(n, dtype=bool)
    starts[0] = True
    return protocol.stream_data(f"a={a}", x, y, starts, Normalizer(1, 1))


def test_nmse_is_mean_over_rows_and_dimensions() -> None:
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert protocol.nmse(pred, torch.zeros(2, 2)) == pytest.approx(7.5)


def test_identity_windows_use_the_normalized_zero_change() -> None:
    data = toy_stream(1.0)
    norm = Normalizer(1, 1)
    norm.target_mean = torch.tensor([0.5])
    norm.target_std = torch.tensor([2.0])
    zero = -0.25  # (0 - 0.5) / 2
    want = [float(np.mean((zero - data.y[k * M : (k + 1) * M].numpy()) ** 2)) for k in (1, 2)]
    assert protocol.identity_windows(data, M, norm) == pytest.approx(want)


def test_linear_windows_fit_exact_linear_data() -> None:
    data = toy_stream(-1.5)
    errors = protocol.linear_windows(data, M, 1e-9)
    assert len(errors) == 2
    assert max(errors) < 1e-8
    ridge, best = protocol.best_linear_windows(data, M, ridges=(10.0, 1e-3, 1.0))
    assert ridge == 1e-3  # the smallest ridge shrinks an exact fit least
    assert best == pytest.approx(protocol.linear_windows(data, M, 1e-3))


def test_prequential_without_adaptation_matches_hand_values() -> None:
    data = toy_stream(2.0)
    x, y = data.x.numpy(), data.y.numpy()
    run = protocol.prequential_run(toy_adapter(0.5), data, M, adapt=False)
    want = [
        float(np.mean((0.5 * x[k * M : (k + 1) * M] - y[k * M : (k + 1) * M]) ** 2)) for k in (1, 2)
    ]
    assert run.errors == pytest.approx(want, rel=1e-5)
    assert run.updates == 0 and run.steps == 0


@pytest.mark.parametrize("mode", ["continual", "reset"])
def test_prequential_adapts_on_the_previous_window_and_scores_the_next(mode: str) -> None:
    data = toy_stream(2.0)
    x, y = data.x.numpy(), data.y.numpy()
    lr, w0 = 0.1, 0.5
    run = protocol.prequential_run(toy_adapter(w0, lr, mode=mode), data, M, adapt=True)
    w, want = w0, []
    for k in (1, 2):
        start = w0 if mode == "reset" else w
        prev = slice((k - 1) * M, k * M)
        w = sgd_step(start, x[prev], y[prev], lr)
        cur = slice(k * M, (k + 1) * M)
        want.append(float(np.mean((w * x[cur] - y[cur]) ** 2)))
    assert run.errors == pytest.approx(want, rel=1e-5)
    assert run.updates == 2 and run.steps == 2
    assert run.tasks == [0, 0] and run.switch == [False, False]


def test_prequential_rejects_short_streams() -> None:
    with pytest.raises(ValueError, match="fewer than 2 windows"):
        protocol.prequential_run(toy_adapter(1.0), toy_stream(1.0, n=M + 1), M, adapt=True)


def test_retention_zero_and_few_shot_by_hand() -> None:
    old = toy_stream(-1.0, n=4 * M, seed=3)
    pairs = protocol.window_pairs(old, M, 2)
    assert len(pairs) == 2
    x, y = old.x.numpy(), old.y.numpy()
    lr, w = 0.1, 0.5
    zero, few = [], []
    for p in range(2):
        a = slice(2 * M * p, 2 * M * p + M)
        b = slice(2 * M * p + M, 2 * M * (p + 1))
        zero.append(float(np.mean((w * x[b] - y[b]) ** 2)))
        w1 = sgd_step(w, x[a], y[a], lr)
        few.append(float(np.mean((w1 * x[b] - y[b]) ** 2)))
    adapter = toy_adapter(w, lr, lr_scale=3.0)  # few-shot retention ignores the method's lr scale
    assert protocol.retention(adapter, pairs, M, shots=0) == pytest.approx(np.mean(zero), rel=1e-5)
    assert protocol.retention(adapter, pairs, M, shots=1) == pytest.approx(np.mean(few), rel=1e-5)
    with pytest.raises(ValueError, match="at least one window pair"):
        protocol.retention(adapter, [], M, shots=0)


def test_grbal_few_shot_retention_starts_from_the_meta_weights() -> None:
    stream, old = toy_stream(3.0), toy_stream(-1.0, n=4 * M, seed=3)
    pairs = protocol.window_pairs(old, M, 2)
    fresh = toy_adapter(0.5)
    grbal = toy_adapter(0.5, mode="reset")
    protocol.prequential_run(grbal, stream, M, adapt=True)  # weights move away from theta*
    assert protocol.retention(grbal, pairs, M, shots=0) != pytest.approx(
        protocol.retention(fresh, pairs, M, shots=0)
    )
    assert protocol.retention(grbal, pairs, M, shots=1) == pytest.approx(
        protocol.retention(fresh, pairs, M, shots=1)
    )


def test_prequential_writes_every_transition_of_the_stream_into_a_store() -> None:
    import rust_buffer

    store = rust_buffer.RingBuffer(100, 1, 1, seed=0)
    data = toy_stream(1.0)
    protocol.prequential_run(toy_adapter(1.0), data, M, adapt=True, store=store, task_id=7)
    n = (len(data) // M) * M  # every window arrived (live), the last one too
    assert store.task_counts() == {7: n}
    np.testing.assert_array_equal(store.obs_view()[:, 0], data.raw_x[:n, 0])
    starts = data.reset.numpy()[:n].copy()
    starts[0] = True  # the stream's first row opens an episode
    steps = store.step_view()
    assert (steps[starts] == 0).all() and (np.diff(steps)[~starts[1:]] == 1).all()


# --- statistics -----------------------------------------------------------------------------


def test_ci_formula_by_hand() -> None:
    s = stats.summarize([1.0, 2.0, 3.0])
    assert s.mean == pytest.approx(2.0)
    assert s.ci95 == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    five = stats.summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    assert five.ci95 == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert stats.t_quantile_975(100) == pytest.approx(1.96)
    with pytest.raises(ValueError, match=">= 1"):
        stats.t_quantile_975(0)


def test_summary_counts_diverged_values() -> None:
    s = stats.summarize([1.0, math.nan, 3.0, math.inf])
    assert (s.mean, s.n, s.n_bad) == (2.0, 2, 2)
    single = stats.summarize([0.5])
    assert single.n == 1 and math.isnan(single.ci95)
    assert stats.summarize([math.nan]).format() == "diverged"
    assert (
        stats.summarize([2.0, 4.0]).format(2)
        == f"3.00 ± {12.706 * math.sqrt(2) / math.sqrt(2):.2f}"
    )


def test_saved_summaries_format_like_fresh_ones() -> None:
    """A summary read back from results.json (NaN saved as null) formats as it did."""
    for values in ([1.0, 2.0, 4.0], [0.5], [math.nan, math.nan], []):
        s = stats.summarize(values)
        saved = finite(s.to_dict())
        assert stats.Summary.from_dict(saved).format(3) == s.format(3)
    assert stats.Summary.from_dict(finite(stats.summarize([0.5]).to_dict())).format() == "0.5000"


def test_md_table_writes_header_separator_and_rows() -> None:
    table = md_table(["a", "b"], [["1", "2"], ["x", ""]])
    assert table == "| a | b |\n|---|---|\n| 1 | 2 |\n| x |  |"
    assert md_table(["only"], []) == "| only |\n|---|"


def test_method_labels_are_the_pipeline_summary_names() -> None:
    """One registry of names: the pipeline's summary labels (the golden record's keys) are
    `label` of the evaluation's keys."""
    import json

    golden = json.loads((Path(__file__).parent / "golden" / "pipeline_summary.json").read_text())
    keys = ("none", "grbal", "cont_w0", "hybn_0.1", "hybn_0.1_live")
    assert {evaluate.label(k) for k in keys} <= set(golden)
    assert evaluate.label("hybn_0.1_oldonly") == "hybrid (w=0.1, replay_live=False)"
    assert evaluate.label("hybn_3") == "hybrid (w=3)"
    for key in ("hyb_1", "J_none", "hybn_1.2.3", "cont_w0_m0.3"):
        assert evaluate.label(key) == key


def test_effect_sizes_by_hand() -> None:
    assert stats.relative_change([2.0, 4.0], [2.0, 2.0]) == pytest.approx(0.5)
    assert stats.reduction([0.01, 0.03], [0.04, 0.04]) == pytest.approx(0.5)
    assert math.isnan(stats.reduction([0.01], [5e-5]))  # reference forgetting is noise
    n = stats.pass_count(
        new=[1.0, 1.0, 2.0], forget=[0.1, 0.6, 0.1], new_ref=[1.0, 1.0, 1.0], forget_ref=[1.0] * 3
    )
    assert n == 1  # seed 1 forgets too much, seed 2 is too slow on the new task
    with pytest.raises(ValueError, match="equal-length"):
        stats.pass_count([1.0], [1.0], [1.0, 2.0], [1.0])
    assert stats.percent(-0.123) == "-12 %" and stats.percent(math.nan) == "n/a"


# --- aggregation, tables and targets ---------------------------------------------------------


def _row(new: float, f_fs: float, diverged: bool = False) -> dict[str, object]:
    return {
        "new": new,
        "curve": [new, new],
        "F_train_0": f_fs,
        "F_train_fs": f_fs,
        "F_A_0": 0.0,
        "F_A_fs": 0.0,
        "diverged": diverged,
        "rollbacks": 1 if diverged else 0,
        "ms_per_step": 2.0,
        "ratio_identity": new,
        "ratio_linear": new / 0.5,
    }


def _unit(seed: int, scale: float) -> dict[str, object]:
    methods = {
        "none": _row(0.1 * scale, 0.0),
        "grbal": _row(0.02 * scale, 0.0),
        "cont_w0": _row(0.02 * scale, 0.02),
        "cont_w0_m0.3": _row(0.02 * scale, 0.02),
        "hybn_0.3": _row(0.021 * scale, 0.005),
        "hyb_1": _row(math.inf, math.nan, diverged=seed == 0) if seed == 0 else _row(0.5, 0.01),
        "J_none": _row(0.05 * scale, 0.0),
    }
    split = {
        "tasks": ["A", "B"],
        "identity": {"new": 1.0, "curve": [1.0, 1.0]},
        "linear": {"new": 0.5, "curve": [0.5, 0.5]},
        "ridge_prior": {"new": 0.3 + 0.01 * seed, "curve": [0.3, 0.3]},
        "methods": methods,
    }
    return {
        "family": "Toy-v0",
        "seed": seed,
        "alpha": 0.05,
        "splits": {"heldout": split, "ood": split},
    }


def _toy_methods() -> list[evaluate.Method]:
    names = ["none", "grbal", "cont_w0", "cont_w0_m0.3", "hyb_1", "J_none"]
    out = [evaluate.Method(n, adapt=n not in ("none", "J_none"), group="g") for n in names]
    return [*out, evaluate.Method("hybn_0.3", group="hybn uniform", weight=0.3)]


def test_aggregate_tables_and_targets() -> None:
    units = [_unit(0, 1.0), _unit(1, 1.0), _unit(2, 1.0)]
    agg = evaluate.aggregate(units, {"Toy-v0": _toy_methods()})
    rows = agg["Toy-v0"]["splits"]["heldout"]["rows"]
    assert rows["cont_w0"]["new"]["mean"] == pytest.approx(0.02)
    assert rows["cont_w0"]["new"]["ci95"] == pytest.approx(0.0)
    assert rows["hyb_1"]["diverged"] == 1 and rows["hyb_1"]["new"]["n"] == 2
    effects = agg["Toy-v0"]["splits"]["heldout"]["effects"]
    assert effects["hybn_0.3"]["red_train_fs"] == pytest.approx(0.75)
    assert effects["hybn_0.3"]["delta_new"] == pytest.approx(0.05)
    assert effects["hybn_0.3"]["pass_fs"] == 3
    assert effects["hybn_0.3"]["gain_vs_none"] == pytest.approx(0.79)
    t = agg["Toy-v0"]["targets"]["heldout"]
    assert t["beats_zero_shot"]["zero_shot"] == "J_none"  # 0.05 < none 0.1 < identity 1
    assert t["beats_zero_shot"]["pass"]  # every seed 0.03 below: the interval excludes 0
    assert t["beats_zero_shot"]["methods"]["cont_w0"]["mean"] == pytest.approx(-0.03)
    h = t["hybrid"]
    assert h["best"] == "hybn_0.3" and h["pass"]
    assert h["entry"]["control"] == "cont_w0_m0.3"
    assert h["entry"]["cut_F_train_fs"] == pytest.approx(0.75)
    assert h["entry"]["new_ratio"]["gmean"] == pytest.approx(1.05)
    assert not t["stability"]["pass"] and t["stability"]["diverged_runs"] == {"hyb_1": 1}
    assert t["beats_linear"]["pass"]
    assert t["beats_best_reference"]["reference"] == "J_none"
    claims = agg["Toy-v0"]["splits"]["heldout"]["claims"]
    assert claims["methods"]["grbal"]["linear"]["ratio"]["gmean"] == pytest.approx(0.04)

    table = evaluate.method_table(agg["Toy-v0"]["splits"]["heldout"])
    lines = table.splitlines()
    assert lines[0].startswith("| method | new (whole stream) | switch windows |")
    assert "| identity | 1.0000 ± 0.0000 |" in table
    assert "| cont_w0 | 0.0200 ± 0.0000 |" in table
    hyb = next(line for line in lines if line.startswith("| hyb_1 |"))
    assert "| 1/3 | 1 |" in hyb
    assert len({line.count("|") for line in lines}) == 1  # every row has every column
    text = evaluate.report(agg, "# toy")
    assert "not tested at this level" in text  # no 2x step sizes, no w = 3 in the toy grid
    assert "hybn_0.3" in text and "Effect sizes" in text and "matched" not in text.lower()[:0]
    assert "| hybn_0.3 | `cont_w0_m0.3` |" in text


def test_method_grid_levels() -> None:
    core = {m.name for m in evaluate.method_grid("core")}
    full = [m.name for m in evaluate.method_grid("all")]
    assert len(full) == len(set(full))
    assert core < set(full)
    assert {"none", "grbal", "cont_w0", "hybn_0.3", "hyb_3_lrx2", "J_hybn_0.3"} <= set(full)
    with pytest.raises(ValueError, match="method level must be one of"):
        evaluate.method_grid("everything")


def test_batched_zero_shot_retention_matches_pair_by_pair_for_a_stateful_model() -> None:
    from eaml_ssm.ssm import SSM

    torch.manual_seed(0)
    model = SSM(state_dim=4, input_dim=2, output_dim=1, hidden_dim=8)
    adapter = Adapter(model, AdaptationConfig(num_steps=1, experience_weight=0.0), None, "cpu")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6 * M, 2)).astype(np.float32)
    y = rng.normal(size=(6 * M, 1)).astype(np.float32)
    starts = np.zeros(6 * M, dtype=bool)
    starts[[0, 5, 2 * M + 3]] = True  # episodes restart inside pairs
    data = protocol.stream_data("toy", x, y, starts, Normalizer(2, 1))
    pairs = protocol.window_pairs(data, M, 3)
    by_hand = []
    for p in pairs:
        reset = p.reset.clone()
        reset[0] = True
        pred, _ = adapter.predict(p.x[None], None, reset=reset[None])  # (1, 2M, 1)
        by_hand.append(protocol.nmse(pred[0, M:], p.y[M:]))
    assert protocol.retention(adapter, pairs, M, shots=0) == pytest.approx(
        np.mean(by_hand), rel=1e-5
    )


def test_profile_flags_override_and_reject_bad_values() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(
        ["--profile", "quick", "--families", "Pendulum-v1", "--seeds", "2", "--methods", "all"]
    )
    p = evaluate.resolve_profile(args)
    assert p.families == ("Pendulum-v1",) and p.seeds == 2 and p.level("Pendulum-v1") == "all"
    assert evaluate.PROFILES["quick"].seeds >= 3 and evaluate.PROFILES["full"].seeds >= 5
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        evaluate.resolve_profile(parser.parse_args(["--seeds", "-1"]))
    assert evaluate.resolve_profile(parser.parse_args(["--device", "cuda:1"])).device == "cuda:1"
    assert evaluate.resolve_profile(parser.parse_args([])).device == "cpu"
    with pytest.raises(ValueError, match="--device must be"):
        evaluate.resolve_profile(parser.parse_args(["--device", "tpu"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--methods", "everything"])


def test_divergence_rule() -> None:
    ok = _row(0.5, 0.01)
    assert not evaluate.is_diverged(ok)
    assert evaluate.is_diverged({**ok, "curve": [0.1, evaluate.DIVERGED * 1.01]})
    assert evaluate.is_diverged({**ok, "curve": [0.1, None]})  # NaN as stored in JSON
    assert evaluate.is_diverged({**ok, "F_train_0": math.inf})
    # out-of-range targets: identity itself scores 30 on the second window, so 50 there is
    # not a divergence (bound 10 x 30), while 50 on the first (identity 0.5: bound 10) is
    big = {**ok, "curve": [0.1, 50.0]}
    assert evaluate.is_diverged(big) and not evaluate.is_diverged(big, [0.5, 30.0])
    assert evaluate.is_diverged({**ok, "curve": [50.0, 0.1]}, [0.5, 30.0])
    with pytest.raises(ValueError, match="windows"):
        evaluate.is_diverged(ok, [1.0])


def test_rerender_rebuilds_the_report_from_saved_results(tmp_path: Path) -> None:
    import json

    saved = {
        "command": "python -m eaml_ssm evaluate --profile quick",
        "wall_seconds": 12.0,
        "load_average": [1.0, 2.0],
        "profile": {"families": ["Toy-v0"], "levels": [["Toy-v0", "core"]], "jobs": 1},
        "units": [_unit(0, 1.0), _unit(1, 1.2), _unit(2, 0.8)],
    }
    for unit in saved["units"]:  # the toy rows stand in for the core methods
        for split in unit["splits"].values():
            for name in ("hybn_1", "l2_1"):
                split["methods"][name] = _row(0.03, 0.004)
    (tmp_path / "results.json").write_text(json.dumps(saved))
    assert evaluate.rerender(tmp_path) == 0
    text = (tmp_path / "results.md").read_text()
    assert "Wall time: 12 s" in text and "| Toy-v0 | cont_w0 |" in text
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["aggregate"]["Toy-v0"]["splits"]["ood"]["rows"]["hyb_1"]["diverged"] == 1
    assert (tmp_path / "plots" / "pareto_toy_ood.png").exists()
    with pytest.raises(FileNotFoundError, match=r"no results\.json"):
        evaluate.rerender(tmp_path / "missing")


def test_steps_level_pairs_w0_and_the_hybrid_with_every_step_size_variant() -> None:
    grid = {m.name: m for m in evaluate.method_grid("steps")}
    for name in ("cont_w0", "hybn_0.3"):
        assert grid[name].model == "maml"
        for tag in ("pos", "abs", "posm", "absm", "softplus"):
            twin = grid[f"{name}_{tag}"]
            assert twin.model == f"maml_{tag}"
            assert dict(twin.overrides)["experience_weight"] == dict(grid[name].overrides).get(
                "experience_weight", 0.3
            )


def test_pareto_series_start_at_w0_and_drop_near_divergent_points() -> None:
    def row(new: float, f: float, group: str = "", weight: float = math.nan) -> dict:
        s = {"mean": new, "ci95": 0.0, "n": 3, "n_bad": 0}
        return {"new": s, "F_train_fs": {**s, "mean": f}, "group": group, "weight": weight}

    rows = {
        "cont_w0": row(0.01, 0.02),
        "hybn_0.3": row(0.011, 0.005, "hybn uniform", 0.3),
        "hybn_3": row(0.04, 0.001, "hybn uniform", 3.0),
        "hyb_3": row(0.2, 0.5, "hyb uniform", 3.0),  # 20x the new-task error of w = 0
    }
    series = evaluate.pareto_series(rows)
    assert series == {"hybn uniform": [(0.0, 0.01, 0.02), (0.3, 0.011, 0.005), (3.0, 0.04, 0.001)]}


def test_publish_renders_the_marked_doc_blocks(tmp_path: Path, monkeypatch) -> None:
    import json

    run = tmp_path / "run"
    run.mkdir()
    saved = {
        "command": "python -m eaml_ssm evaluate --profile quick",
        "commit": "abc123",
        "wall_seconds": 12.0,
        "cpu_seconds": 20.0,
        "load_average": [1.0, 2.0],
        "profile": {"families": ["Toy-v0"], "levels": [["Toy-v0", "sanity"]], "jobs": 1},
        "units": [_unit(0, 1.0), _unit(1, 1.2), _unit(2, 0.8)],
    }
    (run / "results.json").write_text(json.dumps(saved))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    readme = tmp_path / "README.md"
    readme.write_text(
        "intro\n<!-- evaluate:quick/headline -->\nstale 9.99\n<!-- /evaluate:quick/headline -->\n"
        "<!-- evaluate:quick/source -->\n<!-- /evaluate:quick/source -->\ntail\n"
    )
    (tmp_path / "docs" / "evaluation.md").write_text("no markers here\n")
    dest = tmp_path / "docs" / "results" / "quick"
    assert evaluate.publish(run, dest) == 0
    text = readme.read_text()
    assert "stale 9.99" not in text and text.startswith("intro\n") and text.endswith("tail\n")
    assert "| Toy-v0 | cont_w0 |" in text
    assert "at commit `abc123`" in text and "Wall time: 12 s; 20 CPU-seconds" in text
    assert (tmp_path / "docs" / "evaluation.md").read_text() == "no markers here\n"
    published = json.loads((dest / "results.json").read_text())
    assert "aggregate" not in published and published["commit"] == "abc123"
    before = readme.read_text()
    assert evaluate.rerender(dest, docs=evaluate.DOC_FILES) == 0  # idempotent
    assert readme.read_text() == before
    readme.write_text("<!-- evaluate:quick/headline -->\nno end\n")
    with pytest.raises(ValueError, match="no closing"):
        evaluate.rerender(dest, docs=evaluate.DOC_FILES)
