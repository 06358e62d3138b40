"""Zero-copy views of rust_buffer.RingBuffer: aliasing, later writes, lifetime and DLPack.

The views cover the valid rows in slot order (slot = global row index mod capacity).

Shape glossary: n rows held, do obs_dim, dt target_dim.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from rust_buffer import RingBuffer

DO = 5
DT = 3


def full_store(capacity: int = 8) -> RingBuffer:
    store = RingBuffer(capacity, DO, DT, seed=0)
    obs = np.arange(capacity * DO, dtype=np.float32).reshape(capacity, DO)  # (n, do)
    target = -np.arange(capacity * DT, dtype=np.float32).reshape(capacity, DT)  # (n, dt)
    store.add(obs, target, task_id=np.arange(capacity), episode_id=7, step=np.arange(capacity))
    return store


def all_views(store: RingBuffer) -> list[np.ndarray]:
    return [
        store.obs_view(),
        store.target_view(),
        store.task_id_view(),
        store.episode_id_view(),
        store.step_view(),
    ]


def test_view_shapes_dtypes_and_flags() -> None:
    store = full_store()
    obs, target, task_id, episode_id, step = all_views(store)
    assert obs.shape == (8, DO)
    assert target.shape == (8, DT)
    assert obs.dtype == target.dtype == np.float32
    for column in (task_id, episode_id, step):
        assert column.shape == (8,)
        assert column.dtype == np.int64
    for view in (obs, target, task_id, episode_id, step):
        assert view.flags.c_contiguous
        assert not view.flags.writeable
        assert not view.flags.owndata  # it is not a copy
    assert episode_id.tolist() == [7] * 8
    assert step.tolist() == list(range(8))


def test_views_cover_only_valid_rows() -> None:
    store = RingBuffer(10, DO, DT)
    assert store.obs_view().shape == (0, DO)
    assert store.task_id_view().shape == (0,)
    store.add(np.ones((3, DO)), np.ones((3, DT)))
    assert store.obs_view().shape == (3, DO)
    assert store.target_view().shape == (3, DT)
    assert store.step_view().shape == (3,)


def test_views_are_read_only() -> None:
    store = full_store()
    for view in all_views(store):
        with pytest.raises(ValueError):
            view[0] = 1


def test_views_see_later_writes() -> None:
    store = full_store()
    obs, target, task_id, _, step = all_views(store)
    # The ring is full: the next two rows overwrite slots 0 and 1.
    store.add(np.full((2, DO), 1000.0), np.full((2, DT), -1000.0), task_id=42, step=[90, 91])
    assert (obs[:2] == 1000.0).all()
    assert (target[:2] == -1000.0).all()
    assert task_id[:2].tolist() == [42, 42]
    assert step[:2].tolist() == [90, 91]
    np.testing.assert_array_equal(obs[2], np.arange(2 * DO, 3 * DO, dtype=np.float32))


def test_views_share_memory_between_calls() -> None:
    store = full_store()
    first, second = all_views(store), all_views(store)
    for a, b in zip(first, second, strict=True):
        assert np.shares_memory(a, b)
        assert a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    assert not np.shares_memory(first[0], first[1])  # obs and target are separate columns


def test_view_keeps_store_alive() -> None:
    store = full_store()
    obs, target, task_id = store.obs_view(), store.target_view(), store.task_id_view()
    expected = [obs.copy(), target.copy(), task_id.copy()]
    assert obs.base is not None
    del store
    gc.collect()
    # Churn the allocator: if the store's memory had been freed this would likely reuse it.
    junk = [np.full((64, DO), -7.0, np.float32) for _ in range(200)]
    for view, want in zip((obs, target, task_id), expected, strict=True):
        np.testing.assert_array_equal(view, want)
    del junk


def test_view_survives_clear() -> None:
    store = full_store()
    obs = store.obs_view()
    store.clear()
    # The old view still points at store-owned memory: reading it is safe.
    assert obs.shape == (8, DO)
    assert np.isfinite(obs).all()


def test_dlpack_is_zero_copy() -> None:
    torch = pytest.importorskip("torch")
    store = full_store()
    for view in all_views(store):
        tensor = torch.from_dlpack(view)
        assert tensor.data_ptr() == view.__array_interface__["data"][0]
        assert tuple(tensor.shape) == view.shape
        np.testing.assert_array_equal(tensor.numpy(), view)
    obs_t = torch.from_dlpack(store.obs_view())
    assert obs_t.dtype == torch.float32
    store.add(np.full(DO, 555.0), np.zeros(DT))  # overwrites slot 0; the tensor sees it
    assert (obs_t[0] == 555.0).all()


def test_dlpack_tensor_keeps_store_alive() -> None:
    torch = pytest.importorskip("torch")
    store = full_store()
    tensor = torch.from_dlpack(store.target_view())
    expected = tensor.clone()
    del store
    gc.collect()
    assert torch.equal(tensor, expected)
