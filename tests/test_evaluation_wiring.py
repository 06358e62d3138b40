"""Tests the mutation run of the evaluation protocol found missing: the window baseline's fit
window, the normalizer's variance floor, what task-A forgetting is measured against, and
`run_method` / the probes wired end to end on a toy adapter (every value by hand)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toy_linear import sgd_step, toy_adapter

from eaml_ssm import evaluate, protocol
from eaml_ssm.adaptation import Adapter
from eaml_ssm.features import Normalizer

M = 4  # window length of the toy streams


def stream_from(x: np.ndarray, y: np.ndarray, name: str = "toy") -> protocol.StreamData:
    starts = np.zeros(len(x), dtype=bool)
    starts[0] = True
    return protocol.stream_data(
        name, x.astype(np.float32), y.astype(np.float32), starts, Normalizer(1, 1)
    )


def slope_stream(a: float, n: int = 3 * M, seed: int = 0) -> protocol.StreamData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 1))
    return stream_from(x, a * x, f"a={a}")


def err(w: float, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((w * x - y) ** 2))


# --- the window baseline is fitted on the previous window, never on the scored one ----------


def test_linear_window_baseline_fits_the_previous_window() -> None:
    slopes = [1.0, -2.0, 3.0, 0.5]  # the slope changes every window
    rng = np.random.default_rng(4)
    x = rng.normal(size=(len(slopes) * M, 1))
    y = np.concatenate([a * x[k * M : (k + 1) * M] for k, a in enumerate(slopes)])
    data = stream_from(x, y)
    errors = protocol.linear_windows(data, M, 1e-9)
    # an exact fit of window k-1 predicts window k with slope a_{k-1} (the intercept is 0)
    want = [
        float(np.mean(((slopes[k - 1] - slopes[k]) * x[k * M : (k + 1) * M]) ** 2))
        for k in range(1, len(slopes))
    ]
    assert errors == pytest.approx(want, rel=1e-5, abs=1e-9)
    assert min(errors) > 0.1  # fitting the scored window itself would give 0


# --- a constant target column is centred, not divided by zero ------------------------------


def test_zero_variance_target_column_gets_a_floor() -> None:
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(50, 3))
    targets = np.stack([rng.normal(size=50), np.full(50, 2.5)], axis=1)  # column 1 constant
    norm = Normalizer.from_arrays(inputs, targets, state_dim=2)
    assert float(norm.target_std[1]) == 1.0
    data = protocol.stream_data("const", inputs, targets, np.eye(1, 50, dtype=bool)[0], norm)
    assert torch.isfinite(data.y).all()
    assert torch.allclose(data.y[:, 1], torch.zeros(50))  # centred at the store mean
    assert torch.isfinite(data.x).all()


# --- run_method end to end on a toy adapter -------------------------------------------------


def toy_probes(streams: list[protocol.StreamData]) -> evaluate.Probes:
    old = slope_stream(-1.0, n=4 * M, seed=9)
    a_old = slope_stream(3.0, n=4 * M, seed=5)  # fresh rollouts of task A (slope 3)
    return evaluate.Probes(
        streams={"heldout": streams},
        train_pairs=protocol.window_pairs(old, M, 2),
        a_pairs={"heldout": protocol.window_pairs(a_old, M, 2)},
    )


def zero_stream(n: int = 3 * M) -> protocol.StreamData:
    return stream_from(np.zeros((n, 1)), np.zeros((n, 1)), "zero")


def before_of(adapter: Adapter, probes: evaluate.Probes) -> dict[str, float]:
    return {
        "0": protocol.retention(adapter, probes.train_pairs, M, shots=0),
        "fs": protocol.retention(adapter, probes.train_pairs, M, shots=1),
    }


def test_task_a_forgetting_is_measured_right_after_task_a() -> None:
    """A, then streams whose gradient is zero (x = y = 0): the weights stop moving after A,
    so forgetting of A is exactly 0; measured against the weights before the stream it would
    not be (the weights did move on A), and train forgetting, measured against theta*, is not."""
    streams = [slope_stream(3.0), zero_stream(), zero_stream()]
    base = toy_adapter(0.5, 0.1)
    probes = toy_probes(streams)
    method = evaluate.Method("cont_w0", overrides=(("mode", "continual"),))
    row = evaluate.run_method(base, method, streams, probes, "heldout", before_of(base, probes), M)
    assert row["F_A_0"] == pytest.approx(0.0, abs=1e-7)
    assert row["F_A_fs"] == pytest.approx(0.0, abs=1e-7)
    assert abs(row["F_train_0"]) > 1e-3  # the weights did move on task A


def test_a_method_that_never_adapts_forgets_nothing() -> None:
    streams = [slope_stream(3.0), slope_stream(-2.0, seed=1), slope_stream(1.0, seed=2)]
    base = toy_adapter(0.5, 0.1)
    probes = toy_probes(streams)
    row = evaluate.run_method(
        base, evaluate.Method("none", adapt=False), streams, probes, "heldout",
        before_of(base, probes), M,
    )  # fmt: skip
    for key in ("F_train_0", "F_train_fs", "F_A_0", "F_A_fs"):
        assert row[key] == pytest.approx(0.0, abs=1e-7), key
    assert row["rollbacks"] == 0 and not row["diverged"]


def test_run_method_end_to_end_matches_hand_values() -> None:
    """Every number of a continual run by hand: the scored curve, the forgetting of the
    training pairs and of task A, and that the base adapter itself is left untouched."""
    lr, w0 = 0.1, 0.5
    streams = [slope_stream(3.0), slope_stream(-2.0, seed=1)]
    base = toy_adapter(w0, lr)
    probes = toy_probes(streams)
    before = before_of(base, probes)
    row = evaluate.run_method(
        base, evaluate.Method("cont_w0", overrides=(("mode", "continual"),)), streams, probes,
        "heldout", before, M,
    )  # fmt: skip
    assert base.params["weight"].item() == pytest.approx(w0)  # the method ran on a fork

    # the hand-computed trajectory through whole_stream's windows
    cat = stream_scoring_concat(streams)
    x, y = cat
    w, curve, w_after_a = w0, [], None
    windows = len(x) // M
    for k in range(1, windows):
        prev, cur = slice((k - 1) * M, k * M), slice(k * M, (k + 1) * M)
        w = sgd_step(w, x[prev], y[prev], lr)
        if k == 3:  # task A's last window (windows 0-2) has just been used
            w_after_a = w
        curve.append(err(w, x[cur], y[cur]))
    assert row["curve"] == pytest.approx(curve, rel=1e-4)
    assert row["new"] == pytest.approx(np.mean(curve), rel=1e-4)

    def ret(w_: float, pairs: list[protocol.WindowPair], shots: int) -> float:
        out = []
        for p in pairs:
            px, py = p.x.numpy(), p.y.numpy()
            ww = sgd_step(w_, px[:M], py[:M], lr) if shots else w_
            out.append(err(ww, px[M:], py[M:]))
        return float(np.mean(out))

    tp, ap = probes.train_pairs, probes.a_pairs["heldout"]
    assert row["F_train_0"] == pytest.approx(ret(w, tp, 0) - ret(w0, tp, 0), rel=1e-4)
    assert row["F_train_fs"] == pytest.approx(ret(w, tp, 1) - ret(w0, tp, 1), rel=1e-4)
    assert w_after_a is not None
    assert row["F_A_0"] == pytest.approx(ret(w, ap, 0) - ret(w_after_a, ap, 0), rel=1e-4)
    assert row["F_A_fs"] == pytest.approx(ret(w, ap, 1) - ret(w_after_a, ap, 1), rel=1e-4)


def stream_scoring_concat(streams: list[protocol.StreamData]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.concatenate([s.x.numpy() for s in streams]),
        np.concatenate([s.y.numpy() for s in streams]),
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_run_method_on_cuda_matches_cpu() -> None:
    """CPU streams and probes, adapter on CUDA (what `evaluate --device cuda` does)."""
    streams = [slope_stream(3.0), slope_stream(-2.0, seed=1)]
    probes = toy_probes(streams)
    method = evaluate.Method("cont_w0", overrides=(("mode", "continual"),))
    rows = []
    for device in ("cpu", "cuda"):
        base = toy_adapter(0.5, 0.1)
        base = Adapter(base.model.to(device), base.config, None, device)
        before = before_of(base, probes)
        rows.append(evaluate.run_method(base, method, streams, probes, "heldout", before, M))
    assert rows[1]["curve"] == pytest.approx(rows[0]["curve"], rel=1e-4)
    assert rows[1]["F_A_fs"] == pytest.approx(rows[0]["F_A_fs"], rel=1e-4, abs=1e-7)
