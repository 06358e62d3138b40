"""Whole-stream scoring (switch windows included), recovery, the references on the same
windows, and the paired / geometric-mean statistics, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from toy_linear import toy_adapter

from eaml_ssm import baselines, protocol, references, stats, stream_scoring
from eaml_ssm.features import Normalizer

M = 4


def stream(a: float, windows: int = 3, seed: int = 0, bias: float = 0.0) -> protocol.StreamData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(windows * M, 1)).astype(np.float32)
    y = (a * x + bias).astype(np.float32)
    starts = np.zeros(len(x), dtype=bool)
    starts[0] = True
    return protocol.stream_data(f"a={a}", x, y, starts, Normalizer(1, 1))


# --- concatenation and scoring --------------------------------------------------------------


def test_concat_marks_tasks_and_switch_windows() -> None:
    whole = stream_scoring.concat_streams([stream(1.0), stream(2.0, 2), stream(3.0, 4)], M)
    assert whole.starts == (0, 3, 5, 9) and whole.windows == 9
    scored = whole.scored()
    assert [k for k, _, _ in scored] == list(range(1, 9))
    assert [k for k, _, first in scored if first] == [3, 5]
    assert [t for _, t, _ in scored] == [0, 0, 1, 1, 2, 2, 2, 2]
    assert bool(whole.data.reset[3 * M]) and bool(whole.data.reset[5 * M])


def test_concat_rejects_switches_inside_a_window() -> None:
    ragged = protocol.stream_data(
        "ragged", np.zeros((M + 2, 1)), np.zeros((M + 2, 1)), np.eye(1, M + 2, dtype=bool)[0],
        Normalizer(1, 1),
    )  # fmt: skip
    with pytest.raises(ValueError, match="multiple of the window"):
        stream_scoring.concat_streams([stream(1.0), ragged], M)
    with pytest.raises(ValueError, match="at least one stream"):
        stream_scoring.concat_streams([], M)


@pytest.mark.parametrize("mode", ["continual", "reset"])
def test_whole_stream_scores_the_switch_window_after_adapting_on_the_old_task(mode: str) -> None:
    lr, w0 = 0.1, 0.5
    a, b = stream(3.0), stream(-2.0, seed=1)
    whole = stream_scoring.concat_streams([a, b], M)
    done: list[int] = []
    run = stream_scoring.whole_stream_run(
        toy_adapter(w0, lr, mode=mode), whole, adapt=True, on_task_done=done.append
    )
    x = np.concatenate([a.x.numpy(), b.x.numpy()])
    y = np.concatenate([a.y.numpy(), b.y.numpy()])
    w, want = w0, []
    for k in range(1, 6):
        prev, cur = slice((k - 1) * M, k * M), slice(k * M, (k + 1) * M)
        start = w0 if mode == "reset" else w
        w = start - lr * 2.0 * float(np.mean((start * x[prev] - y[prev]) * x[prev]))
        want.append(float(np.mean((w * x[cur] - y[cur]) ** 2)))
    assert run.errors == pytest.approx(want, rel=1e-5)
    assert run.switch == [False, False, True, False, False]
    assert run.tasks == [0, 0, 1, 1, 1] and done == [0]
    assert run.updates == 5 and run.steps == 5


def test_whole_stream_writes_each_task_under_its_own_id() -> None:
    """Every window reaches the store (the last one too), task t as task_id_base + t."""
    import rust_buffer

    store = rust_buffer.RingBuffer(100, 1, 1, seed=0)
    whole = stream_scoring.concat_streams([stream(3.0), stream(-2.0, 2, seed=1)], M)
    stream_scoring.whole_stream_run(
        toy_adapter(0.5), whole, adapt=True, store=store, task_id_base=40
    )
    assert store.task_counts() == {40: 3 * M, 41: 2 * M}
    np.testing.assert_array_equal(store.obs_view()[:, 0], whole.data.raw_x[:, 0])
    with pytest.raises(ValueError, match="task starts"):
        protocol.prequential_run(toy_adapter(0.5), whole.data, M, adapt=False, starts=(0, 3))


def test_recovery_counts_windows_until_within_ten_percent_of_settled() -> None:
    errors = [0.9, 0.5, 0.5, 8.0, 4.0, 1.15, 1.0, 1.0, 1.0]
    tasks = [0, 0, 0, 1, 1, 1, 1, 1, 1]
    switch = [False, False, False, True, False, False, False, False, False]
    rec = stream_scoring.recovery(errors, tasks, switch)
    # task 1: settled = mean of the last ceil(6/3) = 2 windows = 1.0; 1.15 > 1.1, so the first
    # window within 10 % is the 4th of the task (index 3)
    assert rec == [{"windows": 3.0, "switch_error": 8.0, "settled": 1.0}]
    summary = stream_scoring.stream_summary(
        protocol.StreamRun(errors=errors, tasks=tasks, switch=switch)
    )
    assert summary["switch"] == pytest.approx(8.0)
    assert summary["new"] == pytest.approx(np.mean(errors))
    assert summary["new_settled"] == pytest.approx(np.mean(errors[:3] + errors[4:]))
    assert summary["recovery"] == pytest.approx(3.0)
    bad = stream_scoring.recovery([1.0, math.inf, 1.0], [0, 1, 1], [False, True, False])
    assert math.isnan(bad[0]["windows"])
    with pytest.raises(ValueError, match="one entry per scored window"):
        stream_scoring.recovery([1.0], [0, 1], [False])


# --- references on the whole-stream windows ---------------------------------------------------


def test_growing_linear_uses_the_task_past_and_the_old_task_at_a_switch() -> None:
    a, b = stream(3.0, bias=1.0), stream(-2.0, seed=1, bias=0.5)
    whole = stream_scoring.concat_streams([a, b], M)
    errors = references.growing_linear_errors(whole, 1e-9)
    assert len(errors) == 5
    # exact linear tasks: every in-task window is fitted exactly, the switch window is
    # predicted by task A's fit (y = 3 x + 1) on task B's inputs
    xb, yb = b.x.numpy()[:M], b.y.numpy()[:M]
    stale = float(np.mean((3.0 * xb + 1.0 - yb) ** 2))
    assert errors[2] == pytest.approx(stale, rel=1e-4)
    assert max(errors[:2] + errors[3:]) < 1e-8


def test_ridge_toward_prior_limits() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 2))
    y = x @ np.array([[1.0], [-2.0]]) + 0.3
    prior = baselines.LinearModel(
        weight=torch.tensor([[5.0], [5.0]], dtype=torch.float64),
        bias=torch.tensor([1.0], dtype=torch.float64),
    )
    free = baselines.fit_ridge_toward(x, y, prior, 1e-9)
    assert free.weight.numpy().ravel() == pytest.approx([1.0, -2.0], abs=1e-6)
    assert float(free.bias) == pytest.approx(0.3, abs=1e-6)
    stiff = baselines.fit_ridge_toward(x, y, prior, 1e12)
    assert stiff.weight.numpy().ravel() == pytest.approx([5.0, 5.0], abs=1e-4)
    assert baselines.fit_ridge_toward(x[:0], y[:0], prior, 1.0) is prior
    with pytest.raises(ValueError, match="do not match the prior"):
        baselines.fit_ridge_toward(x[:, :1], y, prior, 1.0)


def test_ridge_prior_errors_use_the_prior_at_a_switch() -> None:
    a, b = stream(3.0), stream(-2.0, seed=1)
    whole = stream_scoring.concat_streams([a, b], M)
    prior = baselines.LinearModel(
        weight=torch.tensor([[0.5]], dtype=torch.float64),
        bias=torch.tensor([0.0], dtype=torch.float64),
    )
    errors = references.ridge_prior_errors(whole, prior, 1e-9)
    xb, yb = b.x.numpy()[:M], b.y.numpy()[:M]
    assert errors[2] == pytest.approx(float(np.mean((0.5 * xb - yb) ** 2)), rel=1e-4)
    assert max(errors[:2] + errors[3:]) < 1e-8


def test_reference_rows_pick_the_best_ridge_and_score_identity() -> None:
    whole = stream_scoring.concat_streams([stream(3.0), stream(-2.0, seed=1)], M)
    rows = references.reference_rows(whole, Normalizer(1, 1), None)
    assert set(rows) == {"identity", "linear"}
    assert rows["linear"]["ridge"] == min(references.GROWING_RIDGES)
    y = whole.data.y.numpy()
    want = [float(np.mean(y[k * M : (k + 1) * M] ** 2)) for k in range(1, 6)]
    assert rows["identity"]["curve"] == pytest.approx(want, rel=1e-5)
    assert rows["identity"]["new"] == pytest.approx(np.mean(want), rel=1e-5)


# --- paired statistics ----------------------------------------------------------------------


def test_paired_differences_and_geometric_mean_ratios_by_hand() -> None:
    values, ref = [1.0, 2.0, 4.0, math.nan], [2.0, 2.0, 2.0, 1.0]
    p = stats.paired(values, ref)
    d = np.array([-1.0, 0.0, 2.0])
    assert (p.n, p.n_bad) == (3, 1)
    assert p.mean == pytest.approx(d.mean())
    assert p.ci95 == pytest.approx(4.303 * d.std(ddof=1) / math.sqrt(3))
    assert p.median == pytest.approx(0.0)
    assert not p.excludes_zero
    assert stats.paired([1.0, 1.1, 1.2], [2.0, 2.1, 2.2]).excludes_zero  # always 1 lower
    r = stats.ratio([1.0, 4.0], [2.0, 2.0])  # ratios 0.5 and 2: geometric mean 1
    assert r.gmean == pytest.approx(1.0) and r.n == 2
    logs = np.log([0.5, 2.0])
    half = 12.706 * logs.std(ddof=1) / math.sqrt(2)
    assert r.low == pytest.approx(math.exp(-half)) and r.high == pytest.approx(math.exp(half))
    assert stats.ratio([1.0, 4.0], [2.0, 2.0]).gmean != pytest.approx(np.mean([0.5, 2.0]))
    with pytest.raises(ValueError, match="one value per seed"):
        stats.paired([1.0], [1.0, 2.0])
