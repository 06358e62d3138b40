"""The store's window samplers: sample_windows (uniform, task-weighted, recent, seeded),
sample_windows_into, windows_at, gather, window_counts and sample_tasks(tasks=, seed=).

Rows carry their identity (``obs[j] = r * 100 + j``, see test_buffer), and a brute-force
oracle over the column views says which windows are valid, so every sampled window is
checked against it.

Shape glossary: b batch, l window length, k anchors/rows, do obs_dim, dt target_dim.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_buffer import DO, DT, make_rows, row_ids

from rust_buffer import RingBuffer


def episodes_store(
    lengths: list[int], capacity: int = 512, n_tasks: int = 3, retention: str = "fifo"
) -> RingBuffer:
    """Episodes of the given lengths (cycled over tasks 0..n_tasks-1), added in order."""
    store = RingBuffer(capacity, DO, DT, seed=0, retention=retention)  # type: ignore[arg-type]
    first = 0
    for ep, n in enumerate(lengths):
        obs, target = make_rows(range(first, first + n))
        store.add(obs, target, task_id=ep % n_tasks, episode_id=ep, step=np.arange(n))
        first += n
    return store


def oracle_starts(store: RingBuffer, length: int) -> dict[int, int]:
    """Valid window starts (slot -> task) by brute force over the column views."""
    ids = row_ids(store.obs_view(), store.target_view())  # (n,) global row ids
    task, ep, step = store.task_id_view(), store.episode_id_view(), store.step_view()
    n, full = len(store), len(store) == store.capacity
    starts = {}
    for s in range(n if full else n - length + 1):
        sl = [(s + i) % n for i in range(length)]
        ok = (
            step[s] >= 0
            and all(ids[j] == ids[s] + i for i, j in enumerate(sl))
            and all(task[j] == task[s] and ep[j] == ep[s] for j in sl)
            and all(step[j] == step[s] + i for i, j in enumerate(sl))
        )
        if ok:
            starts[s] = int(task[s])
    return starts


LENGTHS = [3, 9, 1, 13, 5, 40, 2, 7, 13, 21] * 3


def test_windows_are_valid_and_cover_every_start() -> None:
    store = episodes_store(LENGTHS, capacity=200)  # wraps: 327 rows into 200 slots
    want = oracle_starts(store, 6)
    counts: dict[int, int] = {}
    for t in want.values():
        counts[t] = counts.get(t, 0) + 1
    assert store.window_counts(6) == counts
    obs, target, task_ids = store.sample_windows(4000, 6, seed=1)  # (b, l, do), (b, l, dt), (b,)
    assert obs.shape == (4000, 6, DO) and target.shape == (4000, 6, DT)
    ids = row_ids(obs, target)  # (b, l)
    np.testing.assert_array_equal(np.diff(ids, axis=1), 1)
    slot_of = {int(r): s for s, r in enumerate(row_ids(store.obs_view(), store.target_view()))}
    first_slots = [slot_of[int(r)] for r in ids[:, 0]]
    assert set(first_slots) == set(want)  # every valid start drawn, nothing else
    assert [want[s] for s in first_slots] == task_ids.tolist()


def test_task_weights_recent_and_seed() -> None:
    store = episodes_store(LENGTHS, capacity=400)
    _, _, tasks = store.sample_windows(3000, 4, task_weights={0: 3.0, 1: 1.0, 2: 0.0}, seed=5)
    assert set(tasks.tolist()) == {0, 1}
    assert abs(np.mean(tasks == 0) - 0.75) < 0.04
    obs, target, _ = store.sample_windows(500, 4, recent=60, seed=5)
    newest = store.total_added - 60
    assert row_ids(obs, target).min() >= newest
    a = store.sample_windows(64, 5, seed=9)
    b = store.sample_windows(64, 5, seed=9)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_seeded_draws_leave_the_shared_generator_alone() -> None:
    s1, s2 = episodes_store(LENGTHS), episodes_store(LENGTHS)
    s1.sample_windows(8, 4, seed=123)
    for x, y in zip(s1.sample_windows(16, 4), s2.sample_windows(16, 4), strict=True):
        np.testing.assert_array_equal(x, y)


def test_sample_windows_into_matches_sample_windows() -> None:
    store = episodes_store(LENGTHS)
    obs_out = np.empty((32, 5, DO), np.float32)
    target_out = np.empty((32, 5, DT), np.float32)
    ids = store.sample_windows_into(obs_out, target_out, 5, task_weights={1: 1.0}, seed=4)
    obs, target, ids2 = store.sample_windows(32, 5, task_weights={1: 1.0}, seed=4)
    np.testing.assert_array_equal(obs_out, obs)
    np.testing.assert_array_equal(target_out, target)
    np.testing.assert_array_equal(ids, ids2)
    assert ids.dtype == np.int64 and set(ids.tolist()) == {1}


@pytest.mark.parametrize("retention", ["fifo", "reservoir"])
def test_windows_at_and_gather_match_the_oracle(retention: str) -> None:
    store = episodes_store(LENGTHS * 3, capacity=150, retention=retention)
    n, length = len(store), 5
    starts = oracle_starts(store, length)
    view_ids = row_ids(store.obs_view(), store.target_view())  # (n,)
    anchors = np.arange(n, dtype=np.int64)
    obs, target, valid = store.windows_at(anchors, length)  # (k, l, do), (k, l, dt), (k,)
    assert valid.dtype == np.bool_
    for a in range(n):
        end = (a + 1 - length) % n if (a + 1 >= length or n == store.capacity) else None
        want = end if end in starts else (a if a in starts else None)
        assert valid[a] == (want is not None), a
        if want is None:
            assert not obs[a].any() and not target[a].any()
        else:
            np.testing.assert_array_equal(
                row_ids(obs[a], target[a]), view_ids[want] + np.arange(length)
            )
    rows = np.array([0, n - 1, 7, 7], dtype=np.int64)
    g_obs, g_target = store.gather(rows)  # (k, do), (k, dt)
    np.testing.assert_array_equal(row_ids(g_obs, g_target), view_ids[rows])


def test_sample_tasks_subset_and_seed() -> None:
    store = episodes_store([40, 13] * 30, capacity=2000, n_tasks=10)
    for seed in range(5):
        a = store.sample_tasks(3, 8, 8, contiguous=True, tasks=[0, 2, 4, 6], seed=seed)
        b = store.sample_tasks(3, 8, 8, contiguous=True, tasks=np.array([0, 2, 4, 6]), seed=seed)
        assert set(a[4].tolist()) <= {0, 2, 4, 6}
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        rows = store.sample_tasks(2, 4, 4, tasks=[1, 3], seed=seed)
        assert set(rows[4].tolist()) == {1, 3}
    with pytest.raises(ValueError, match="only 0 of the"):
        store.sample_tasks(1, 16, 16, contiguous=True, tasks=[1, 3])  # 13-row episodes only
    with pytest.raises(TypeError, match="tasks"):
        store.sample_tasks(1, 2, 2, tasks=[0.5])


def test_no_valid_window_is_exact() -> None:
    store = episodes_store([3, 4, 2])
    assert store.window_counts(4) == {1: 1}
    with pytest.raises(ValueError, match="no episode in the store has 5 consecutive steps"):
        store.sample_windows(1, 5)
    with pytest.raises(ValueError, match="no valid window of 4 consecutive steps"):
        store.sample_windows(1, 4, task_weights={0: 1.0, 2: 1.0})
    with pytest.raises(ValueError, match="newest 3 rows"):
        store.sample_windows(1, 4, recent=3)


def test_bad_inputs_are_clear_errors() -> None:
    store = episodes_store(LENGTHS)
    obs, target, ids = store.sample_windows(0, 3)
    assert obs.shape == (0, 3, DO) and target.shape == (0, 3, DT) and ids.shape == (0,)
    with pytest.raises(ValueError, match="length must be a positive int"):
        store.sample_windows(2, 0)
    with pytest.raises(ValueError, match="batch_size must be a non-negative int"):
        store.sample_windows(-1, 3)
    with pytest.raises(ValueError, match="task 99 has no rows"):
        store.sample_windows(2, 3, task_weights={99: 1.0})
    for w in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="weights must be finite and >= 0"):
            store.sample_windows(2, 3, task_weights={0: w})
    with pytest.raises(ValueError, match="no task a positive weight"):
        store.sample_windows(2, 3, task_weights={0: 0.0, 1: 0.0})
    with pytest.raises(ValueError, match="no task a positive weight"):
        store.sample_windows(2, 3, task_weights={})
    with pytest.raises(TypeError, match="task_weights must be a dict"):
        store.sample_windows(2, 3, task_weights=[(0, 1.0)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="real number"):
        store.sample_windows(2, 3, task_weights={0: "1"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="recent must be a positive int"):
        store.sample_windows(2, 3, recent=0)
    with pytest.raises(ValueError, match="seed must be"):
        store.sample_windows(2, 3, seed=-1)
    n = len(store)
    for bad in ([n], [-1], [0, n + 5]):
        with pytest.raises(ValueError, match="out of range"):
            store.windows_at(bad, 3)
        with pytest.raises(ValueError, match="out of range"):
            store.gather(bad)
    with pytest.raises(TypeError, match="anchors must be a 1-D sequence"):
        store.windows_at([0.5], 3)
    with pytest.raises(ValueError, match="anchors must be 1-D"):
        store.windows_at(np.zeros((2, 2), np.int64), 3)
    with pytest.raises(ValueError, match="length must be a positive int"):
        store.windows_at([0], 0)


def test_sample_windows_into_rejects_bad_outputs() -> None:
    store = episodes_store(LENGTHS)
    good_o, good_t = np.empty((4, 3, DO), np.float32), np.empty((4, 3, DT), np.float32)
    cases: list[tuple[object, object, type[Exception], str]] = [
        (good_o.astype(np.float64), good_t, TypeError, "dtype float64, expected float32"),
        (good_o, [[0.0]], TypeError, "numpy.ndarray"),
        (
            np.empty((4, 3, DO + 1), np.float32),
            good_t,
            ValueError,
            "expected \\(batch_size, length",
        ),
        (np.empty((4, DO), np.float32), good_t, ValueError, "expected \\(batch_size, length"),
        (np.empty((4, 3, DO * 2), np.float32)[:, :, ::2], good_t, ValueError, "C-contiguous"),
        (good_o, np.empty((5, 3, DT), np.float32), ValueError, "must be \\(batch_size"),
        (
            np.empty((4, 2, DO), np.float32),
            np.empty((4, 2, DT), np.float32),
            ValueError,
            "length=3",
        ),
    ]
    for o, t, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            store.sample_windows_into(o, t, 3)  # type: ignore[arg-type]
    ro = np.empty((4, 3, DO), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        store.sample_windows_into(ro, good_t, 3)
    both = np.empty((4, 3, DO), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        store.sample_windows_into(both, both.reshape(-1)[: 4 * 3 * DT].reshape(4, 3, DT), 3)


def test_saved_and_loaded_stores_draw_the_same_windows(tmp_path: Path) -> None:
    store = episodes_store(LENGTHS, capacity=150)
    store.sample_windows(8, 3)  # the index now reflects this history
    obs, target = make_rows(range(1000, 1020))
    store.add(obs, target, task_id=1, episode_id=999, step=np.arange(20))
    store.sample_windows(8, 3)
    store.save(tmp_path / "s.rbuf")
    loaded = RingBuffer.load(tmp_path / "s.rbuf")
    for a, b in zip(store.sample_windows(64, 3), loaded.sample_windows(64, 3), strict=True):
        np.testing.assert_array_equal(a, b)
    store.reseed(3)
    loaded.reseed(3)
    a5 = store.sample_tasks(2, 2, 2, contiguous=True)
    b5 = loaded.sample_tasks(2, 2, 2, contiguous=True)
    for a, b in zip(a5, b5, strict=True):
        np.testing.assert_array_equal(a, b)
