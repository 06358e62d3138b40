"""Regression: episode windows of reservoir stores filled past capacity.

Once a reservoir store is full, each kept row lands in a random slot, so a window's two ends
can survive while a slot inside it was replaced. `sample_sequences` (and `sample_tasks` with
``contiguous=True``) used to list such windows as valid in their exact fallback and then
raise "rows were overwritten faster than they could be read" with no concurrent writer.
They must return only intact windows (consecutive steps of one episode, uniformly), or raise
the "no valid window" ValueError when none is held.

Row ``r`` (its global insertion index) has ``obs = [r, ...]`` and ``target = [-r]``; episodes
of ``EP`` steps are added one after another, so ``r // EP`` is its episode and ``r % EP`` its
step.

Shape glossary: n rows, b batch, l sequence length, t tasks, s support rows, q query rows,
do obs_dim (2), dt target_dim (1).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

from rust_buffer import RingBuffer

EP = 20  # steps per episode
N_TASKS = 3  # task id = episode % N_TASKS
CAPACITY = 200
EPISODES = 40  # 800 rows into 200 slots: about 1 in 4 first-fill rows survive


def reservoir_store(seed: int) -> RingBuffer:
    """A reservoir store filled with EPISODES episodes, one `add` call per episode."""
    store = RingBuffer(CAPACITY, 2, 1, seed=seed, retention="reservoir")
    for episode in range(EPISODES):
        rows = np.arange(episode * EP, (episode + 1) * EP, dtype=np.float32)  # (n,)
        obs = np.stack([rows, rows + 0.5], axis=1)  # (n, do)
        target = -rows[:, None]  # (n, dt)
        steps = np.arange(EP, dtype=np.int64)  # (n,)
        store.add(obs, target, task_id=episode % N_TASKS, episode_id=episode, step=steps)
    assert len(store) == CAPACITY
    return store


def intact_windows(store: RingBuffer, seq_len: int) -> set[int]:
    """First row ids of every intact window in the full store (windows may wrap)."""
    ids = store.obs_view()[:, 0].astype(np.int64)  # (n,)
    intact = set()
    for start in range(len(ids)):
        window = ids[(start + np.arange(seq_len)) % len(ids)]  # (l,)
        consecutive = bool(np.all(np.diff(window) == 1))
        if consecutive and window[0] // EP == window[-1] // EP:
            intact.add(int(window[0]))
    return intact


def check_windows(obs: np.ndarray, target: np.ndarray, task_ids: np.ndarray) -> list[int]:
    """Assert each window is consecutive steps of one episode; return the first row ids."""
    ids = obs[..., 0].astype(np.int64)  # (b, l)
    np.testing.assert_array_equal(obs[..., 1], obs[..., 0] + 0.5)
    np.testing.assert_array_equal(target[..., 0], -obs[..., 0])
    assert np.all(np.diff(ids, axis=1) == 1), ids
    assert np.all(ids[:, 0] // EP == ids[:, -1] // EP), ids
    np.testing.assert_array_equal(task_ids, (ids[:, 0] // EP) % N_TASKS)
    return ids[:, 0].tolist()


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_sequences_are_intact_windows_drawn_uniformly(seed: int) -> None:
    seq_len = 3
    store = reservoir_store(seed)
    intact = intact_windows(store, seq_len)
    assert intact, "the fixture should hold a few intact windows"
    counts: collections.Counter[int] = collections.Counter()
    for _ in range(20):
        obs, target, task_ids = store.sample_sequences(200, seq_len)  # (b, l, do), (b, l, dt)
        assert obs.shape == (200, seq_len, 2) and target.shape == (200, seq_len, 1)
        counts.update(check_windows(obs, target, task_ids))
    assert set(counts) == intact
    expected = 4000 / len(intact)
    ratios = np.array(list(counts.values())) / expected
    assert np.all((ratios > 0.8) & (ratios < 1.2)), counts


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_intact_window_raises_value_error(seed: int) -> None:
    store = reservoir_store(seed)
    assert not intact_windows(store, 8)
    with pytest.raises(ValueError, match="no episode in the store has 8 consecutive steps"):
        store.sample_sequences(4, 8)


@pytest.mark.parametrize("seed", [0, 1])
def test_contiguous_tasks_are_intact_windows(seed: int) -> None:
    n_support, n_query = 2, 1
    store = reservoir_store(seed)
    intact = intact_windows(store, n_support + n_query)
    n_tasks = len({(first // EP) % N_TASKS for first in intact})
    for _ in range(20):
        s_obs, s_tgt, q_obs, q_tgt, task_ids = store.sample_tasks(
            n_tasks, n_support, n_query, contiguous=True
        )  # (t, s, do), (t, s, dt), (t, q, do), (t, q, dt), (t,)
        obs = np.concatenate([s_obs, q_obs], axis=1)  # (t, s + q, do)
        target = np.concatenate([s_tgt, q_tgt], axis=1)  # (t, s + q, dt)
        assert set(check_windows(obs, target, task_ids)) <= intact


def test_collected_reservoir_store_samples_or_reports_no_window() -> None:
    """The reported reproduction: a collected Pendulum reservoir store filled twice over."""
    from eaml_ssm.collect import build_store
    from eaml_ssm.tasks import draw_tasks

    tasks = draw_tasks("Pendulum-v1", 20, seed=0)
    store, _ = build_store(tasks, 400, capacity=4000, retention="reservoir", store_seed=0)
    episode = store.episode_id_view()  # (n,)
    step = store.step_view()  # (n,)
    task = store.task_id_view()  # (n,)
    held = store.obs_view()  # (n, do)
    for seq_len in (2, 4, 32):
        idx = (np.arange(len(store))[:, None] + np.arange(seq_len)) % len(store)  # (n, l)
        # An upper bound on the intact windows (insertion order is not exposed): same
        # episode and task, consecutive steps.
        possible = (
            np.all(episode[idx] == episode[idx[:, :1]], axis=1)
            & np.all(task[idx] == task[idx[:, :1]], axis=1)
            & np.all(step[idx] == step[idx[:, :1]] + np.arange(seq_len), axis=1)
        )  # (n,)
        if seq_len == 32:
            # Half the first fill was replaced: no 32-step run of one episode is left.
            assert not possible.any()
            with pytest.raises(ValueError, match="no episode in the store has 32 consecutive"):
                store.sample_sequences(32, seq_len)
            continue
        obs, target, task_ids = store.sample_sequences(32, seq_len)  # (b, l, do), (b, l, dt)
        assert obs.shape[:2] == (32, seq_len) and target.shape[:2] == (32, seq_len)
        for window, window_task in zip(obs, task_ids, strict=True):  # (l, do), ()
            # Locate the window by its first row, then check it against the store's rows.
            starts = np.flatnonzero(np.all(held == window[0], axis=1))  # (k,)
            assert any(
                possible[s] and task[s] == window_task and np.array_equal(held[idx[s]], window)
                for s in starts
            )
