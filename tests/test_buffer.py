"""Behaviour of rust_buffer.RingBuffer: adds, ring order, the samplers and the extras.

Every row carries its own identity: row ``r`` has ``obs[j] = r * 100 + j`` and
``target[j] = -(r * 100 + j)`` (exact in float32 for r < 160_000), so any sampled row can be
checked against a reference model (a ``collections.deque`` or a dict of row ids).

Shape glossary: b batch, l sequence length, t tasks, s support rows, q query rows,
do obs_dim, dt target_dim.
"""

from __future__ import annotations

import collections
import gc
from collections.abc import Iterable

import numpy as np
import pytest

import rust_buffer
from rust_buffer import RingBuffer

DO = 4  # obs_dim used throughout
DT = 3  # target_dim used throughout


def make_rows(ids: Iterable[int]) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose content encodes their id: obs (n, DO), target (n, DT)."""
    r = np.asarray(list(ids), dtype=np.float64)[:, None]  # (n, 1)
    obs = (r * 100 + np.arange(DO)).astype(np.float32)  # (n, DO)
    target = -(r * 100 + np.arange(DT)).astype(np.float32)  # (n, DT)
    return obs, target


def row_ids(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Recover row ids from rows (any leading shape) and check each row is self-consistent."""
    ids = np.round(obs[..., 0] / 100).astype(np.int64)  # (...)
    expect_obs = ids[..., None] * 100.0 + np.arange(obs.shape[-1])
    expect_target = -(ids[..., None] * 100.0 + np.arange(target.shape[-1]))
    np.testing.assert_array_equal(obs, expect_obs.astype(np.float32))
    np.testing.assert_array_equal(target, expect_target.astype(np.float32))
    return ids


def filled(n: int, capacity: int = 64, seed: int | None = 0, **meta: object) -> RingBuffer:
    store = RingBuffer(capacity, DO, DT, seed=seed)
    obs, target = make_rows(range(n))
    store.add(obs, target, **meta)
    return store


# ----------------------------------------------------------------------------- construction


def test_constructor_properties() -> None:
    store = RingBuffer(10, DO, DT, seed=1)
    assert store.capacity == 10
    assert store.obs_dim == DO
    assert store.target_dim == DT
    assert len(store) == 0
    assert store.total_added == 0


def test_repr_says_what_it_is() -> None:
    store = filled(5, capacity=16)
    text = repr(store)
    assert "RingBuffer" in text
    assert "16" in text  # capacity
    assert "5" in text  # rows held


def test_package_exports() -> None:
    assert rust_buffer.RingBuffer is RingBuffer
    assert isinstance(rust_buffer.__version__, str)


# ------------------------------------------------------------------------------------- add


def test_add_single_row() -> None:
    store = RingBuffer(8, DO, DT)
    obs, target = make_rows([7])
    store.add(obs[0], target[0], task_id=3, episode_id=9, step=2)
    assert len(store) == 1
    assert store.total_added == 1
    np.testing.assert_array_equal(store.obs_view(), obs)
    np.testing.assert_array_equal(store.target_view(), target)
    assert store.task_id_view().tolist() == [3]
    assert store.episode_id_view().tolist() == [9]
    assert store.step_view().tolist() == [2]


def test_add_batch_and_default_metadata() -> None:
    store = RingBuffer(8, DO, DT)
    obs, target = make_rows(range(5))
    store.add(obs, target)
    assert len(store) == 5
    assert store.total_added == 5
    np.testing.assert_array_equal(store.obs_view(), obs)
    np.testing.assert_array_equal(store.target_view(), target)
    assert store.task_id_view().tolist() == [0] * 5
    assert store.episode_id_view().tolist() == [-1] * 5
    assert store.step_view().tolist() == [-1] * 5


def test_add_batch_metadata_scalar_or_per_row() -> None:
    store = RingBuffer(8, DO, DT)
    obs, target = make_rows(range(4))
    store.add(obs, target, task_id=2, episode_id=np.array([5, 5, 6, 6]), step=[0, 1, 0, 1])
    assert store.task_id_view().tolist() == [2, 2, 2, 2]
    assert store.episode_id_view().tolist() == [5, 5, 6, 6]
    assert store.step_view().tolist() == [0, 1, 0, 1]


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda a: a.tolist(), id="nested-lists"),
        pytest.param(lambda a: a.astype(np.float64), id="float64"),
        pytest.param(lambda a: a.astype(np.float16), id="float16"),
        pytest.param(lambda a: a.astype(np.int64), id="int64"),
        pytest.param(lambda a: np.asfortranarray(a), id="fortran-order"),
        pytest.param(lambda a: np.repeat(a, 2, axis=1)[:, ::2], id="strided-columns"),
        pytest.param(lambda a: np.repeat(a, 2, axis=0)[::2], id="strided-rows"),
        pytest.param(lambda a: a[::-1][::-1], id="negative-strides"),
    ],
)
def test_add_converts_to_float32(convert) -> None:  # type: ignore[no-untyped-def]
    store = RingBuffer(8, DO, DT)
    obs, target = make_rows(range(3))
    store.add(convert(obs), convert(target))
    np.testing.assert_array_equal(store.obs_view(), obs)
    np.testing.assert_array_equal(store.target_view(), target)
    assert store.obs_view().dtype == np.float32


def test_add_single_row_from_lists_and_integers() -> None:
    store = RingBuffer(4, 2, 1)
    store.add([1, 2], [3])
    store.add(np.array([4.5, 5.5]), np.array([6.5], dtype=np.float64))
    np.testing.assert_array_equal(store.obs_view(), [[1, 2], [4.5, 5.5]])
    np.testing.assert_array_equal(store.target_view(), [[3], [6.5]])


def test_add_does_not_keep_reference_to_input() -> None:
    store = RingBuffer(4, DO, DT)
    obs, target = make_rows([1])
    store.add(obs, target)
    obs[:] = 0
    row_ids(store.obs_view(), store.target_view())


# ------------------------------------------------------------------------- ring wraparound


def slot_model(capacity: int, total: int) -> list[int]:
    """Row ids per slot after `total` sequential inserts: slot k holds the newest id = k mod cap."""
    held = min(total, capacity)
    return [max(g for g in range(total) if g % capacity == k) for k in range(held)]


def test_wraparound_matches_deque_model() -> None:
    capacity = 7
    store = RingBuffer(capacity, DO, DT, seed=3)
    ref: collections.deque[int] = collections.deque(maxlen=capacity)
    rng = np.random.default_rng(0)
    next_id = 0
    for _ in range(40):
        n = int(rng.integers(1, 6))
        ids = list(range(next_id, next_id + n))
        next_id += n
        obs, target = make_rows(ids)
        if n == 1 and rng.random() < 0.5:
            store.add(obs[0], target[0], task_id=ids[0] % 3)
        else:
            store.add(obs, target, task_id=[i % 3 for i in ids])
        ref.extend(ids)
        assert len(store) == len(ref)
        assert store.total_added == next_id
        held = row_ids(store.obs_view(), store.target_view())
        # Same rows as the deque, in slot order (slot = global index mod capacity).
        assert sorted(held.tolist()) == sorted(ref)
        assert held.tolist() == slot_model(capacity, next_id)
        assert store.task_id_view().tolist() == [i % 3 for i in held.tolist()]


def test_batch_larger_than_capacity_keeps_newest_rows() -> None:
    store = RingBuffer(5, DO, DT)
    obs, target = make_rows(range(12))
    try:
        store.add(obs, target)
    except ValueError:  # rejecting is acceptable, but then nothing may be inserted
        assert len(store) == 0
        assert store.total_added == 0
        return
    assert len(store) == 5
    assert store.total_added == 12
    held = row_ids(store.obs_view(), store.target_view())
    assert sorted(held.tolist()) == list(range(7, 12))
    assert held.tolist() == slot_model(5, 12)


def test_sample_never_returns_overwritten_rows() -> None:
    store = RingBuffer(10, DO, DT, seed=5)
    for start in range(0, 95, 5):
        store.add(*make_rows(range(start, start + 5)))
    obs, target = store.sample(10)
    ids = row_ids(obs, target)
    assert ids.min() >= 85
    assert ids.max() < 95


# ------------------------------------------------------------------------------- sample


def test_sample_shapes_and_dtypes() -> None:
    store = filled(20)
    obs, target = store.sample(6)
    assert obs.shape == (6, DO)
    assert target.shape == (6, DT)
    assert obs.dtype == np.float32
    assert target.dtype == np.float32
    assert obs.flags.c_contiguous
    assert target.flags.c_contiguous
    ids = row_ids(obs, target)
    assert set(ids.tolist()) <= set(range(20))


def test_sample_with_meta_shapes_and_values() -> None:
    store = RingBuffer(32, DO, DT, seed=2)
    ids = np.arange(20)
    store.add(*make_rows(ids), task_id=ids % 4, episode_id=ids // 5, step=ids % 5)
    obs, target, task_id, episode_id, step = store.sample(9, with_meta=True)
    assert obs.shape == (9, DO)
    assert target.shape == (9, DT)
    for column in (task_id, episode_id, step):
        assert column.shape == (9,)
        assert column.dtype == np.int64
    got = row_ids(obs, target)
    np.testing.assert_array_equal(task_id, got % 4)
    np.testing.assert_array_equal(episode_id, got // 5)
    np.testing.assert_array_equal(step, got % 5)


def test_sample_covers_all_rows_roughly_uniformly() -> None:
    store = filled(10, capacity=16, seed=11)
    counts = np.zeros(10, dtype=np.int64)
    for _ in range(100):
        obs, target = store.sample(10)
        np.add.at(counts, row_ids(obs, target), 1)
    assert counts.sum() == 1000
    # 1000 draws over 10 rows: each count ~ Binomial(1000, 0.1), sd ~ 9.5.
    assert counts.min() > 50
    assert counts.max() < 150


def test_sample_returns_copies_not_views() -> None:
    store = filled(8)
    obs, target = store.sample(4)
    obs[:] = -1.0
    target[:] = -1.0
    row_ids(store.obs_view(), store.target_view())  # the store is unchanged


def test_sample_memory_is_not_reused_while_referenced() -> None:
    """A slice of a dropped batch (or a tensor over it) keeps its memory: later samples
    (which may recycle output buffers) never write into it."""
    store = filled(60, capacity=64, seed=8)
    obs, target = store.sample(48)
    part = obs[:5]
    expected = part.copy()
    del obs, target
    gc.collect()
    later = [store.sample(48) for _ in range(6)]
    np.testing.assert_array_equal(part, expected)
    for batch in later:
        assert not any(np.shares_memory(part, a) for a in batch)
    fresh = [store.sample(48)[0] for _ in range(4)]
    for i, a in enumerate(fresh):
        assert not any(np.shares_memory(a, b) for b in fresh[i + 1 :])


def test_same_seed_same_inserts_same_batches() -> None:
    def run(seed: int) -> list[np.ndarray]:
        store = RingBuffer(64, DO, DT, seed=seed)
        ids = np.arange(60)
        store.add(*make_rows(ids), task_id=ids // 10, episode_id=ids // 10, step=ids % 10)
        out: list[np.ndarray] = []
        out.extend(store.sample(16, with_meta=True))
        out.extend(store.sample_tasks(3, 4, 2))
        out.extend(store.sample_tasks(2, 3, 3, contiguous=True))
        out.extend(store.sample_sequences(5, 4))
        out.extend(store.sample_recent(5, 10))
        out.extend(store.sample_task_rows(2, 5))
        obs_out = np.empty((7, DO), np.float32)
        target_out = np.empty((7, DT), np.float32)
        store.sample_into(obs_out, target_out)
        out.extend([obs_out, target_out])
        return out

    first, second, other = run(123), run(123), run(124)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


# --------------------------------------------------------------------------- sample_into


def test_sample_into_numpy_arrays() -> None:
    store = filled(30)
    obs_out = np.full((12, DO), np.nan, np.float32)
    target_out = np.full((12, DT), np.nan, np.float32)
    assert store.sample_into(obs_out, target_out) is None
    ids = row_ids(obs_out, target_out)
    assert set(ids.tolist()) <= set(range(30))


def test_sample_into_torch_backed_arrays() -> None:
    torch = pytest.importorskip("torch")
    store = filled(30)
    obs_t = torch.full((16, DO), float("nan"))
    target_t = torch.full((16, DT), float("nan"))
    store.sample_into(obs_t.numpy(), target_t.numpy())
    ids = row_ids(obs_t.numpy(), target_t.numpy())  # the tensors themselves were written
    assert set(ids.tolist()) <= set(range(30))
    assert not torch.isnan(obs_t).any()


def test_sample_into_row_slice_of_larger_array() -> None:
    store = filled(30)
    obs_big = np.zeros((10, DO), np.float32)
    target_big = np.zeros((10, DT), np.float32)
    store.sample_into(obs_big[2:6], target_big[2:6])  # C-contiguous row slices
    row_ids(obs_big[2:6], target_big[2:6])
    assert not obs_big[:2].any()
    assert not obs_big[6:].any()


# -------------------------------------------------------------------------- sample_tasks


def task_store(seed: int = 0) -> tuple[RingBuffer, dict[int, tuple[int, int, int]]]:
    """5 tasks x 2 episodes x 6 steps, plus a task (99) with only 2 rows; meta per row id."""
    store = RingBuffer(128, DO, DT, seed=seed)
    meta: dict[int, tuple[int, int, int]] = {}
    row = 0
    for task in range(5):
        for ep in range(2):
            ids = list(range(row, row + 6))
            episode = task * 10 + ep
            store.add(*make_rows(ids), task_id=task, episode_id=episode, step=np.arange(6))
            meta.update({r: (task, episode, s) for s, r in enumerate(ids)})
            row += 6
    store.add(*make_rows([row, row + 1]), task_id=99, episode_id=999, step=[0, 1])
    meta.update({row: (99, 999, 0), row + 1: (99, 999, 1)})
    return store, meta


def test_sample_tasks_shapes_and_membership() -> None:
    store, meta = task_store()
    for _ in range(20):
        s_obs, s_target, q_obs, q_target, task_ids = store.sample_tasks(3, 4, 2)
        assert s_obs.shape == (3, 4, DO)
        assert s_target.shape == (3, 4, DT)
        assert q_obs.shape == (3, 2, DO)
        assert q_target.shape == (3, 2, DT)
        assert task_ids.shape == (3,)
        assert task_ids.dtype == np.int64
        assert s_obs.dtype == np.float32
        assert len(set(task_ids.tolist())) == 3  # distinct tasks
        assert 99 not in task_ids.tolist()  # too few rows for 4 + 2
        support, query = row_ids(s_obs, s_target), row_ids(q_obs, q_target)
        for t, task in enumerate(task_ids.tolist()):
            assert all(meta[r][0] == task for r in support[t].tolist() + query[t].tolist())
            assert not set(support[t].tolist()) & set(query[t].tolist())  # disjoint


def test_sample_tasks_uses_every_eligible_task() -> None:
    store, _ = task_store(seed=4)
    seen: set[int] = set()
    for _ in range(30):
        seen.update(store.sample_tasks(2, 3, 3)[4].tolist())
    assert seen == {0, 1, 2, 3, 4}


def test_sample_tasks_contiguous_windows() -> None:
    store, meta = task_store(seed=1)
    for _ in range(20):
        s_obs, s_target, q_obs, q_target, task_ids = store.sample_tasks(4, 3, 2, contiguous=True)
        assert s_obs.shape == (4, 3, DO)
        assert q_obs.shape == (4, 2, DO)
        support, query = row_ids(s_obs, s_target), row_ids(q_obs, q_target)
        window = np.concatenate([support, query], axis=1)  # (t, s + q) support then query
        for t, task in enumerate(task_ids.tolist()):
            rows = [meta[r] for r in window[t].tolist()]
            assert {m[0] for m in rows} == {task}
            assert len({m[1] for m in rows}) == 1  # one episode
            steps = [m[2] for m in rows]
            assert steps == list(range(steps[0], steps[0] + 5))  # consecutive steps


# ---------------------------------------------------------------------- sample_sequences


def check_windows(obs: np.ndarray, target: np.ndarray, meta: dict[int, tuple[int, int, int]]):  # type: ignore[no-untyped-def]
    """Each window: consecutive steps of one episode; returns the row ids (b, l)."""
    ids = row_ids(obs, target)  # (b, l)
    for window in ids.tolist():
        rows = [meta[r] for r in window]
        assert len({m[1] for m in rows}) == 1, rows
        steps = [m[2] for m in rows]
        assert steps == list(range(steps[0], steps[0] + len(steps))), rows
    return ids


def test_sample_sequences_shapes_and_episode_boundaries() -> None:
    store = RingBuffer(200, DO, DT, seed=7)
    meta: dict[int, tuple[int, int, int]] = {}
    row = 0
    # Episodes of lengths 3 (too short for l=5), 9, 5 and 12; each a separate task.
    for ep, length in enumerate([3, 9, 5, 12]):
        ids = list(range(row, row + length))
        store.add(*make_rows(ids), task_id=ep + 10, episode_id=ep, step=np.arange(length))
        meta.update({r: (ep + 10, ep, s) for s, r in enumerate(ids)})
        row += length
    seen_eps: set[int] = set()
    for _ in range(30):
        obs, target, task_ids = store.sample_sequences(8, 5)
        assert obs.shape == (8, 5, DO)
        assert target.shape == (8, 5, DT)
        assert task_ids.shape == (8,)
        assert obs.dtype == np.float32
        assert task_ids.dtype == np.int64
        ids = check_windows(obs, target, meta)
        for b, window in enumerate(ids.tolist()):
            assert meta[window[0]][0] == task_ids[b]
            seen_eps.add(meta[window[0]][1])
    assert seen_eps == {1, 2, 3}  # never the 3-step episode


def test_sample_sequences_single_row_adds() -> None:
    store = RingBuffer(50, DO, DT, seed=3)
    meta: dict[int, tuple[int, int, int]] = {}
    for r in range(40):
        obs, target = make_rows([r])
        store.add(obs[0], target[0], task_id=1, episode_id=r // 10, step=r % 10)
        meta[r] = (1, r // 10, r % 10)
    obs, target, task_ids = store.sample_sequences(4, 10)
    ids = check_windows(obs, target, meta)
    assert all(w[0] % 10 == 0 for w in ids.tolist())  # l = episode length: whole episodes
    assert task_ids.tolist() == [1] * 4


def test_sample_sequences_never_cross_write_cursor() -> None:
    # One long episode written through a small ring: slot order is
    # [steps 50..69 | steps 20..49]; a window across the cursor would join step 69 and 20.
    capacity = 50
    store = RingBuffer(capacity, DO, DT, seed=9)
    meta = {r: (0, 0, r) for r in range(70)}
    for start in range(0, 70, 7):
        ids = np.arange(start, start + 7)
        store.add(*make_rows(ids), task_id=0, episode_id=0, step=ids)
    for _ in range(40):
        obs, target, _ = store.sample_sequences(16, 6)
        ids = check_windows(obs, target, meta)
        assert ids.min() >= 20  # overwritten rows never appear
        np.testing.assert_array_equal(np.diff(ids, axis=1), 1)  # consecutive global rows


def test_sample_sequences_after_wrap_with_many_episodes() -> None:
    capacity = 64
    store = RingBuffer(capacity, DO, DT, seed=2)
    meta: dict[int, tuple[int, int, int]] = {}
    row = 0
    for ep in range(30):
        length = 5 + ep % 4
        ids = list(range(row, row + length))
        store.add(*make_rows(ids), task_id=ep % 3, episode_id=ep, step=np.arange(length))
        meta.update({r: (ep % 3, ep, s) for s, r in enumerate(ids)})
        row += length
    for _ in range(20):
        obs, target, task_ids = store.sample_sequences(10, 5)
        ids = check_windows(obs, target, meta)
        assert ids.min() >= row - capacity
        assert [meta[w[0]][0] for w in ids.tolist()] == task_ids.tolist()


# --------------------------------------------------------------------------------- extras


def test_sample_recent_stays_in_window() -> None:
    store = RingBuffer(32, DO, DT, seed=1)
    for start in range(0, 50, 10):  # wraps: rows 18..49 held
        ids = np.arange(start, start + 10)
        store.add(*make_rows(ids), task_id=ids % 2)
    seen: set[int] = set()
    for _ in range(30):
        obs, target = store.sample_recent(6, 6)
        assert obs.shape == (6, DO)
        ids = row_ids(obs, target)
        assert ids.min() >= 44
        seen.update(ids.tolist())
    assert seen == set(range(44, 50))
    obs, target, task_id, episode_id, step = store.sample_recent(3, 3, with_meta=True)
    ids = row_ids(obs, target)
    np.testing.assert_array_equal(task_id, ids % 2)
    assert task_id.dtype == np.int64
    assert episode_id.shape == step.shape == (3,)


def test_sample_task_rows_only_that_task() -> None:
    store, meta = task_store(seed=5)
    obs, target = store.sample_task_rows(3, 12)
    assert obs.shape == (12, DO)
    assert all(meta[r][0] == 3 for r in row_ids(obs, target).tolist())
    obs, target, task_id, episode_id, step = store.sample_task_rows(99, 2, with_meta=True)
    ids = row_ids(obs, target)
    assert set(ids.tolist()) <= {60, 61}
    assert task_id.tolist() == [99] * 2
    assert episode_id.tolist() == [999] * 2
    assert [meta[r][2] for r in ids.tolist()] == step.tolist()


def test_task_counts_track_ring() -> None:
    capacity = 10
    store = RingBuffer(capacity, DO, DT)
    ref: collections.deque[int] = collections.deque(maxlen=capacity)
    assert store.task_counts() == {}
    for start in range(0, 27, 3):
        tasks = [start % 4, start % 4, 7]
        store.add(*make_rows(range(start, start + 3)), task_id=tasks)
        ref.extend(tasks)
        assert store.task_counts() == dict(collections.Counter(ref))


def test_fifo_is_default_retention() -> None:
    fifo = RingBuffer(5, DO, DT, seed=0, retention="fifo")
    default = RingBuffer(5, DO, DT, seed=0)
    for store in (fifo, default):
        store.add(*make_rows(range(13)))
    np.testing.assert_array_equal(fifo.obs_view(), default.obs_view())
    assert sorted(row_ids(fifo.obs_view(), fifo.target_view()).tolist()) == list(range(8, 13))


def test_reservoir_retention_keeps_uniform_sample_of_stream() -> None:
    capacity, total = 500, 5000
    store = RingBuffer(capacity, DO, DT, seed=42, retention="reservoir")
    store.add(*make_rows(range(capacity)))
    # Until full, a reservoir fills every slot like a ring.
    assert sorted(row_ids(store.obs_view(), store.target_view()).tolist()) == list(range(capacity))
    for start in range(capacity, total, 250):
        store.add(*make_rows(range(start, start + 250)))
    assert len(store) == capacity
    assert store.total_added == total
    held = row_ids(store.obs_view(), store.target_view())
    assert len(set(held.tolist())) == capacity  # no duplicates
    # Each stream row kept with probability 0.1: every tenth of the stream holds ~50 rows
    # (sd ~6.7); FIFO would keep only the last tenth.
    per_tenth = np.bincount(held // (total // 10), minlength=10)
    assert per_tenth.min() >= 20, per_tenth
    assert per_tenth.max() <= 80, per_tenth
    sampled = row_ids(*store.sample(64))
    assert set(sampled.tolist()) <= set(held.tolist())


def test_reservoir_is_deterministic_with_seed() -> None:
    def held(seed: int) -> list[int]:
        store = RingBuffer(20, DO, DT, seed=seed, retention="reservoir")
        for start in range(0, 200, 8):
            store.add(*make_rows(range(start, start + 8)))
        return sorted(row_ids(store.obs_view(), store.target_view()).tolist())

    assert held(1) == held(1)


# ---------------------------------------------------------------------------------- clear


def test_clear_empties_and_store_is_reusable() -> None:
    store = filled(20, capacity=16, task_id=3)
    store.clear()
    assert len(store) == 0
    assert store.task_counts() == {}
    assert store.obs_view().shape == (0, DO)
    with pytest.raises(ValueError):
        store.sample(1)
    store.add(*make_rows([500, 501]), task_id=4)
    assert len(store) == 2
    assert sorted(row_ids(store.obs_view(), store.target_view()).tolist()) == [500, 501]
    assert store.task_counts() == {4: 2}
    assert set(row_ids(*store.sample(2)).tolist()) <= {500, 501}


def test_len_capacity_total_added_through_wrap() -> None:
    store = RingBuffer(6, DO, DT)
    for k in range(1, 11):
        store.add(*make_rows([k]))
        assert len(store) == min(k, 6)
        assert store.total_added == k
        assert store.capacity == 6
