"""StoreLoader: no-copy CPU path (data_ptr), normalization, and the pinned CUDA path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rust_buffer
from eaml_ssm.collect import build_store
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import StoreLoader
from eaml_ssm.tasks import draw_tasks

cuda = pytest.mark.gpu


class SpyStore:
    """Forwards to a real store and keeps the arrays it handed out."""

    def __init__(self, store):
        self.store = store
        self.returned: list[np.ndarray] = []

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if not name.startswith("sample"):
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self.returned = [a.copy() for a in out] + list(out)  # values before, arrays
            return out

        return call

    def __len__(self):
        return len(self.store)


@pytest.fixture(scope="module")
def store():
    s, _ = build_store(draw_tasks("Pendulum-v1", 6, seed=0), 300, seed=0, store_seed=1)
    return s


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_cpu_batches_wrap_the_sampled_arrays_without_copy(store):
    spy = SpyStore(store)
    loader = StoreLoader(spy, "cpu")
    x, y = loader.batch(64)
    _, _, obs, tgt = spy.returned
    assert x.data_ptr() == _ptr(obs) and y.data_ptr() == _ptr(tgt)
    assert x.shape == (64, 4) and y.shape == (64, 3) and x.dtype == torch.float32

    sx, sy, qx, qy, ids = loader.tasks(4, 8, 5)
    arrays = spy.returned[5:]
    for t, a in zip((sx, sy, qx, qy, ids), arrays, strict=True):
        assert t.data_ptr() == _ptr(a)
    assert sx.shape == (4, 8, 4) and qy.shape == (4, 5, 3) and ids.dtype == torch.int64

    xs, ys, ids = loader.sequences(16, 10)
    for t, a in zip((xs, ys, ids), spy.returned[3:], strict=True):
        assert t.data_ptr() == _ptr(a)
    assert xs.shape == (16, 10, 4)


def test_cpu_normalization_is_in_place_and_correct(store):
    norm = Normalizer.from_store(store)
    spy = SpyStore(store)
    loader = StoreLoader(spy, "cpu", norm)
    x, y = loader.batch(128)
    raw_x, raw_y, obs, _ = spy.returned
    assert x.data_ptr() == _ptr(obs)  # normalized where the store put the batch
    expect = (torch.from_numpy(raw_x) - norm.input_mean) / norm.input_std
    torch.testing.assert_close(x, expect)
    torch.testing.assert_close(norm.denormalize_targets(y), torch.from_numpy(raw_y))
    sx, sy, qx, qy, _ = loader.tasks(3, 4, 4, contiguous=True)
    # contiguous support then query: the query's first state follows the support's last row
    raw = norm.denormalize_inputs(torch.cat([sx, qx], 1))[..., :3]
    dy = norm.denormalize_targets(torch.cat([sy, qy], 1))
    torch.testing.assert_close(raw[:, 1:], raw[:, :-1] + dy[:, :-1], atol=1e-4, rtol=1e-4)


def test_loader_bad_inputs(store):
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        StoreLoader(store).batch(0)
    with pytest.raises(ValueError, match="seq_len"):
        StoreLoader(store).sequences(4, -1)
    with pytest.raises(ValueError, match="normalizer is"):
        StoreLoader(store, normalizer=Normalizer(5, 3))
    with pytest.raises(ValueError, match="needs a CUDA device"):
        StoreLoader(store, "cpu", pinned=True)
    with pytest.raises(ValueError):
        StoreLoader(rust_buffer.RingBuffer(10, 4, 3)).batch(4)  # empty store


@cuda
def test_pinned_double_buffered_feed(store):
    norm = Normalizer.from_store(store)
    rows = {tuple(r) for r in np.asarray(store.obs_view()).round(5)}
    with StoreLoader(store, "cuda", norm) as loader:
        assert loader.pinned
        feed_batches = [loader.batch(256) for _ in range(5)]
        for x, y in feed_batches:
            assert x.device.type == "cuda" and x.shape == (256, 4) and y.shape == (256, 3)
            raw = norm.denormalize_inputs(x).cpu().numpy().round(5)
            assert sum(tuple(r) in rows for r in raw) > 250  # rows of the store (float tol.)
        assert not torch.equal(feed_batches[0][0], feed_batches[1][0])
        staging = loader._feeds[("batch", 256)].slots[0][0]
        assert staging.is_pinned()
        sx, _, qx, _, ids = loader.tasks(4, 8, 8)
        assert sx.is_cuda and qx.shape == (4, 8, 4) and ids.is_cuda
        xs, _, _ = loader.sequences(8, 16)
        assert xs.shape == (8, 16, 4) and xs.is_cuda


def test_double_buffer_prefetches_the_next_batch_in_the_background():
    # The staging logic of the CUDA feed, run on CPU slots (clones instead of device copies).
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event, get_ident

    from eaml_ssm.feed.loader import _DoubleBuffer

    filled: list[int] = []
    threads: set[int] = set()
    done = [Event() for _ in range(8)]  # done[k]: batch k has been gathered

    def fill(out, index):
        k = len(filled)
        assert index == k  # draw k gets its own index (its seed)
        out[0][...] = k  # batch number k fills with k
        out[1][...] = -k
        filled.append(1)
        threads.add(get_ident())
        done[k].set()

    with ThreadPoolExecutor(1) as pool:
        feed = _DoubleBuffer(
            [((4, 3), torch.float32), ((4,), torch.int64)], fill, torch.device("cpu"), pool, None, 0
        )
        for k in range(5):
            x, ids = feed.next()
            assert torch.all(x == k) and torch.all(ids == -k)
            assert done[k + 1].wait(5)  # batch k+1 is gathered without another call
            assert torch.all(x == k)  # the caller's batch is not the slot being refilled
        assert get_ident() not in threads
        feed.drain()


def test_double_buffer_reraises_sampling_errors():
    from concurrent.futures import ThreadPoolExecutor

    from eaml_ssm.feed.loader import _DoubleBuffer

    def fill(out, index):
        raise ValueError("store is empty")

    with ThreadPoolExecutor(1) as pool:
        feed = _DoubleBuffer([((2, 2), torch.float32)], fill, torch.device("cpu"), pool, None, 0)
        with pytest.raises(ValueError, match="store is empty"):
            feed.next()
        with pytest.raises(ValueError, match="store is empty"):
            feed.next()
