"""Model inputs/targets, angle wrapping, and the store-based Normalizer."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest
import torch

import rust_buffer
from eaml_ssm.features import (
    Normalizer,
    apply_delta,
    column_moments,
    encode_actions,
    encode_inputs,
    encode_targets,
    encode_transitions,
    model_batch,
    wrap_angle,
)


def test_one_hot_for_discrete_actions():
    enc = encode_actions("CartPole-v1", [1, 0, 1])
    np.testing.assert_array_equal(enc, [[0, 1], [1, 0], [0, 1]])
    assert enc.dtype == np.float32
    np.testing.assert_array_equal(encode_actions("Acrobot-v1", np.array([2]))[0], [0, 0, 1])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        encode_actions("CartPole-v1", [2])
    with pytest.raises(ValueError, match="must be integers"):
        encode_actions("CartPole-v1", [0.5])


def test_box_actions_scaled_to_unit_interval():
    # Pendulum torque is in [-2, 2]; out-of-range actions are clipped like the env does.
    enc = encode_actions("Pendulum-v1", np.array([[-2.0], [0.0], [1.0], [2.0], [5.0]]))
    np.testing.assert_allclose(enc[:, 0], [-1.0, 0.0, 0.5, 1.0, 1.0])


def test_inputs_are_state_then_action_encoding():
    s = np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 2.0, 3.0, 4.0]])
    x = encode_inputs("CartPole-v1", s, [0, 1])
    np.testing.assert_allclose(x, [[0.1, 0.2, 0.3, 0.4, 1, 0], [1, 2, 3, 4, 0, 1]], rtol=1e-6)


def test_targets_are_deltas_with_angles_wrapped():
    s = np.array([[0.0, 0.0, 3.1, 0.0]])
    s2 = np.array([[0.5, -0.1, -3.1, 0.2]])
    y = encode_targets("CartPole-v1", s, s2)
    # the pole angle (column 2) crossed +-pi: the change is +0.083, not -6.2
    np.testing.assert_allclose(y[0], [0.5, -0.1, 2 * np.pi - 6.2, 0.2], atol=1e-6)
    np.testing.assert_allclose(
        apply_delta("CartPole-v1", s, [[0.5, -0.1, 0.0, 0.2]])[0], [0.5, -0.1, 3.1, 0.2], rtol=1e-6
    )
    # Pendulum's observation is (cos, sin, thdot): nothing to wrap
    p = encode_targets("Pendulum-v1", [[1.0, 0.0, 0.0]], [[-1.0, 0.0, 7.0]])
    np.testing.assert_allclose(p[0], [-2.0, 0.0, 7.0])


def test_wrap_angle_range():
    x = np.linspace(-20, 20, 1001)
    w = wrap_angle(x)
    assert np.all((w >= -np.pi) & (w < np.pi))
    np.testing.assert_allclose(np.sin(w), np.sin(x), atol=1e-9)


def test_shape_errors_say_what_was_expected():
    with pytest.raises(ValueError, match=r"expects \(b, 4\)"):
        encode_inputs("CartPole-v1", np.zeros((2, 3)), [0, 1])
    with pytest.raises(ValueError, match="2 states but 3 actions"):
        encode_inputs("CartPole-v1", np.zeros((2, 4)), [0, 1, 0])
    with pytest.raises(ValueError, match="expects"):
        encode_targets("Pendulum-v1", np.zeros((2, 3)), np.zeros((2, 4)))


def test_column_moments_match_numpy_in_chunks():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1001, 5)) * [1, 10, 0.1, 3, 1e-3] + [5, -2, 0, 1e3, 7]).astype(
        np.float32
    )
    for chunk in (1, 7, 100, 5000):
        mean, std = column_moments(x, chunk)
        np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(std, x.astype(np.float64).std(0), rtol=1e-7)
    with pytest.raises(ValueError, match="non-empty"):
        column_moments(np.zeros((0, 3), np.float32))


def _filled_store(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((n, 4)) * [0.5, 2.0, 0.1, 1.0] + [0.1, -1.0, 0.0, 3.0]
    a = rng.integers(0, 2, n)
    s2 = s + rng.standard_normal((n, 4)) * [0.01, 0.2, 0.02, 0.3] + 0.05
    x, y = encode_transitions("CartPole-v1", s, a, s2)
    store = rust_buffer.RingBuffer(n, 6, 4, seed=seed)
    store.add(x, y)
    return store, x, y


def test_normalizer_statistics_come_from_the_store():
    store, x, y = _filled_store()
    norm = Normalizer.from_store(store)
    np.testing.assert_allclose(norm.input_mean[:4], x[:, :4].astype(np.float64).mean(0), atol=1e-5)
    np.testing.assert_allclose(norm.input_std[:4], x[:, :4].astype(np.float64).std(0), rtol=1e-5)
    np.testing.assert_allclose(norm.target_std, y.astype(np.float64).std(0), rtol=1e-5)
    # the action one-hot is left as it is
    np.testing.assert_array_equal(norm.input_mean[4:], [0, 0])
    np.testing.assert_array_equal(norm.input_std[4:], [1, 1])
    xn = norm.normalize_inputs(torch.from_numpy(x))
    yn = norm.normalize_targets(torch.from_numpy(y))
    np.testing.assert_allclose(xn[:, :4].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(yn.std(0, unbiased=False), 1, atol=1e-4)
    torch.testing.assert_close(
        norm.denormalize_targets(yn), torch.from_numpy(y), atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        norm.denormalize_inputs(xn), torch.from_numpy(x), atol=1e-5, rtol=1e-5
    )


def test_normalizer_reads_the_views_without_copying_the_store():
    n, d = 200_000, 16
    store = rust_buffer.RingBuffer(n, d, d, seed=0)
    rng = np.random.default_rng(1)
    for _ in range(4):
        store.add(rng.standard_normal((n // 4, d)), rng.standard_normal((n // 4, d)))
    store_bytes = 2 * n * d * 4
    tracemalloc.start()
    try:
        Normalizer.from_store(store, chunk_rows=2048)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < store_bytes / 10, (peak, store_bytes)


def test_normalizer_state_dict_round_trip():
    store, x, _ = _filled_store()
    norm = Normalizer.from_store(store)
    buf = io.BytesIO()
    torch.save({"normalizer": norm.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf)["normalizer"]
    back = Normalizer.from_state_dict(state)
    xt = torch.from_numpy(x)
    torch.testing.assert_close(back.normalize_inputs(xt), norm.normalize_inputs(xt))
    for k, v in norm.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v)
    fresh = Normalizer(6, 4)
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.target_std, norm.target_std)
    with pytest.raises(ValueError, match="expected"):
        Normalizer(5, 4).load_state_dict(state)
    with pytest.raises(ValueError, match="lacks"):
        Normalizer(6, 4).load_state_dict({"input_mean": state["input_mean"]})


def test_constant_columns_and_errors():
    x = np.ones((10, 3), np.float32)
    y = np.zeros((10, 2), np.float32)
    norm = Normalizer.from_arrays(x, y, state_dim=3)
    np.testing.assert_array_equal(norm.input_std, [1, 1, 1])
    np.testing.assert_array_equal(norm.normalize_inputs(torch.from_numpy(x)), 0)
    with pytest.raises(ValueError, match="empty store"):
        Normalizer.from_store(rust_buffer.RingBuffer(4, 3, 2))
    with pytest.raises(ValueError, match="normalizer expects 3"):
        norm.normalize_inputs(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="state_dim"):
        Normalizer.from_arrays(x, y, state_dim=4)


def test_model_batch_normalizes():
    store, _, _ = _filled_store()
    norm = Normalizer.from_store(store)
    s = np.array([[0.1, -1.0, 0.0, 3.0]])
    x, y = model_batch("CartPole-v1", s, [1], s + 0.05, norm)
    torch.testing.assert_close(x[0, 4:], torch.tensor([0.0, 1.0]))
    expected = (torch.full((4,), 0.05) - norm.target_mean) / norm.target_std
    torch.testing.assert_close(y[0], expected, atol=1e-5, rtol=1e-5)


def test_to_returns_a_copy_and_leaves_the_original():
    store, x, _ = _filled_store()
    norm = Normalizer.from_store(store)
    moved = norm.to("cpu")
    assert moved is not norm
    moved.input_mean = moved.input_mean + 1
    xt = torch.from_numpy(x)
    assert not torch.equal(moved.normalize_inputs(xt), norm.normalize_inputs(xt))
    assert moved.device == norm.device
