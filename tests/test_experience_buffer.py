"""ExperienceBuffer: the seed's API over rust_buffer.RingBuffer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eaml_ssm import ExperienceBuffer
from eaml_ssm.collect import build_store
from eaml_ssm.features import Normalizer
from eaml_ssm.tasks import draw_tasks


def test_empty_buffer_returns_none():
    buf = ExperienceBuffer(max_size=10, device="cpu")
    assert len(buf) == 0 and buf.get_batch(4) is None


def test_add_rows_and_batches_then_sample():
    buf = ExperienceBuffer(100, "cpu", seed=0)
    buf.add(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 0.5]))  # one row
    buf.add(np.arange(12.0).reshape(4, 3), np.ones((4, 2)))  # a batch
    assert len(buf) == 5
    got = buf.get_batch(64)
    assert got is not None
    x, y = got
    assert x.shape == (5, 3) and y.shape == (5, 2)  # min(k, len) rows
    stored = {(1.0, 2.0, 3.0)} | {tuple(r) for r in np.arange(12.0).reshape(4, 3)}
    assert {tuple(r) for r in x.tolist()} <= stored
    x2, _ = buf.get_batch(3)
    assert x2.shape == (3, 3) and x2.dtype == torch.float32


def test_oldest_rows_are_overwritten_when_full():
    buf = ExperienceBuffer(8, seed=1)
    for i in range(20):
        buf.add(np.full(2, float(i)), np.full(1, float(i)))
    assert len(buf) == 8
    x, _ = buf.get_batch(8)
    seen = set()
    for _ in range(50):
        seen |= set(buf.get_batch(8)[0][:, 0].tolist())
    assert seen == set(range(12, 20))  # exactly the newest 8 rows remain
    assert set(x[:, 0].tolist()) <= seen


def test_grad_tensors_are_accepted_and_detached():
    buf = ExperienceBuffer(4)
    w = torch.ones(2, 3, requires_grad=True)
    buf.add(w * 2, w[:, :1])
    x, _ = buf.get_batch(2)
    assert not x.requires_grad and torch.all(x == 2)


def test_bad_inputs():
    with pytest.raises(ValueError, match="max_size must be a positive int"):
        ExperienceBuffer(0)
    buf = ExperienceBuffer(4)
    buf.add(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match=r"buffer holds \(3, 2\)"):
        buf.add(np.zeros(4), np.zeros(2))
    with pytest.raises(ValueError, match="2 rows but targets has 1"):
        buf.add(np.zeros((2, 3)), np.zeros((1, 2)))
    with pytest.raises(ValueError):
        buf.add(np.array([np.nan, 0, 0]), np.zeros(2))
    assert len(buf) == 1
    with pytest.raises(ValueError, match="batch_size"):
        buf.get_batch(0)
    with pytest.raises(ValueError, match="1-D"):
        buf.add(np.zeros((1, 1, 3)), np.zeros((1, 2)))


def test_model_space_facade_over_a_raw_store():
    store, _ = build_store(draw_tasks("CartPole-v1", 3), 200, seed=0, capacity=1000)
    norm = Normalizer.from_store(store)
    buf = ExperienceBuffer.from_store(store, "cpu", normalizer=norm)
    assert len(buf) == 600
    assert np.shares_memory(buf.store.obs_view(), store.obs_view())  # wraps, no copy
    x, y = buf.get_batch(4096)
    assert x.shape == (600, 6)
    assert abs(float(y.mean())) < 0.2 and abs(float(y.std()) - 1) < 0.2  # model space
    # add() takes model-space rows and stores them raw
    xm = norm.normalize_inputs(torch.tensor([[0.1, 0.2, 0.01, -0.3, 1.0, 0.0]]))
    ym = norm.normalize_targets(torch.tensor([[0.004, 0.2, -0.006, -0.3]]))
    buf.add(xm, ym)
    np.testing.assert_allclose(store.obs_view()[600], [0.1, 0.2, 0.01, -0.3, 1.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(store.target_view()[600], [0.004, 0.2, -0.006, -0.3], atol=1e-6)
    with pytest.raises(ValueError, match="normalizer is"):
        ExperienceBuffer.from_store(store, normalizer=Normalizer(3, 2))
