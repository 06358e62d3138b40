"""Identity and ridge-linear baselines: exact recovery, batching, and CartPole sanity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eaml_ssm.baselines import (
    fit_per_task,
    fit_ridge,
    identity_predict,
    mse,
    predict_per_task,
    window_ridge_predict,
)
from eaml_ssm.collect import build_store
from eaml_ssm.features import Normalizer
from eaml_ssm.tasks import draw_tasks


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 5))
    w = rng.standard_normal((5, 3))
    y = x @ w + np.array([1.0, -2.0, 0.5])
    model = fit_ridge(x, y, ridge=0.0)
    np.testing.assert_allclose(model.weight.numpy(), w, atol=1e-8)
    np.testing.assert_allclose(model.bias.numpy(), [1.0, -2.0, 0.5], atol=1e-8)
    assert model.predict(x).dtype == torch.float32
    # a large ridge shrinks the weights but never the (unpenalized) intercept
    big = fit_ridge(x, y + 0.0, ridge=1e6)
    assert float(big.weight.abs().max()) < 0.01
    np.testing.assert_allclose(big.bias.numpy(), y.mean(0), atol=0.02)


def test_collinear_one_hot_columns_with_zero_ridge():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 2, 100)
    x = np.concatenate([rng.standard_normal((100, 2)), np.eye(2)[a]], axis=1)
    y = x[:, :1] * 2 + a[:, None] * 0.3
    pred = fit_ridge(x, y, ridge=0.0).predict(x)
    np.testing.assert_allclose(pred.numpy(), y, atol=1e-5)


def test_batched_window_fit_equals_per_window_fits():
    rng = np.random.default_rng(2)
    sx, sy = rng.standard_normal((6, 16, 4)), rng.standard_normal((6, 16, 2))
    qx = rng.standard_normal((6, 16, 4))
    batched = window_ridge_predict(sx, sy, qx, ridge=0.1)
    assert batched.shape == (6, 16, 2)
    for i in range(6):
        one = fit_ridge(sx[i], sy[i], ridge=0.1).predict(qx[i])
        torch.testing.assert_close(batched[i], one)


def test_per_task_fits_recover_different_maps():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((300, 3))
    ids = np.repeat([4, 9, 11], 100)
    ws = {4: rng.standard_normal((3, 2)), 9: rng.standard_normal((3, 2)), 11: np.zeros((3, 2))}
    y = np.concatenate([x[ids == t] @ ws[t] for t in (4, 9, 11)])
    models = fit_per_task(x, y, ids, ridge=0.0)
    assert set(models) == {4, 9, 11}
    for t, m in models.items():
        np.testing.assert_allclose(m.weight.numpy(), ws[t], atol=1e-8)
    np.testing.assert_allclose(predict_per_task(models, x, ids).numpy(), y, atol=1e-5)
    with pytest.raises(ValueError, match="no linear fit for task ids"):
        predict_per_task(models, x[:2], [4, 5])


def test_identity_in_raw_and_normalized_space():
    x = torch.zeros(7, 6)
    assert torch.equal(identity_predict(x, 4), torch.zeros(7, 4))
    norm = Normalizer(6, 4)
    norm.target_mean = torch.tensor([1.0, 0.0, 0.0, 2.0])
    norm.target_std = torch.tensor([2.0, 1.0, 1.0, 4.0])
    pred = identity_predict(x, 4, norm)
    torch.testing.assert_close(pred[0], torch.tensor([-0.5, 0.0, 0.0, -0.5]))
    torch.testing.assert_close(norm.denormalize_targets(pred), torch.zeros(7, 4))


def test_linear_beats_identity_on_cartpole_by_far():
    # Seed study: on CartPole, linear LS on (state, action) is ~4 orders better than identity.
    store, _ = build_store(draw_tasks("CartPole-v1", 4, seed=0), 400, seed=0)
    norm = Normalizer.from_store(store)
    x = norm.normalize_inputs(torch.from_numpy(np.array(store.obs_view())))
    y = norm.normalize_targets(torch.from_numpy(np.array(store.target_view())))
    ids = np.array(store.task_id_view())
    models = fit_per_task(x, y, ids, ridge=1e-3)
    lin = mse(predict_per_task(models, x, ids), y)
    ident = mse(identity_predict(x, 4, norm), y)
    assert ident > 0.9  # nMSE of 'no change' is about 1 in normalized space
    assert lin < 0.01 * ident


def test_errors():
    with pytest.raises(ValueError, match="same rows"):
        fit_ridge(np.zeros((5, 2)), np.zeros((4, 1)))
    with pytest.raises(ValueError, match="ridge must be >= 0"):
        fit_ridge(np.zeros((5, 2)), np.zeros((5, 1)), ridge=-1)
    with pytest.raises(ValueError, match="columns"):
        fit_ridge(np.ones((5, 2)), np.ones((5, 1))).predict(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="differ"):
        mse(np.zeros((2, 2)), np.zeros((2, 3)))
