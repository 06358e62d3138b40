"""Python threads writing and sampling one RingBuffer at once: no torn or half-written rows.

Every row is derived from its id ``r`` (unique across writers): ``obs = r + k / 4`` and
``target = -r - k / 4`` for column k, task_id = writer, episode_id and step from ``r``. A row
made of halves of two writes, or read before its write finished (zeros), fails the check.

Shape glossary: b batch, l window length, do obs_dim, dt target_dim.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from rust_buffer import RingBuffer

DO = 64
DT = 64
CAPACITY = 256  # small, so writers overwrite slots that samplers are reading
EP_LEN = 16  # batch writers add one whole episode per call
WRITERS = 4
BATCHES_PER_WRITER = 2000  # batch writers: 2000 x 16 rows each
SINGLES = 20_000  # the single-row writer
SEQ_LEN = 6
ID_BLOCK = 2**19  # row ids of writer w: (w + 1) * ID_BLOCK + k


def rows_for(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r = ids.astype(np.float64)[:, None]  # (b, 1)
    obs = (r + np.arange(DO) / 4).astype(np.float32)  # (b, do)
    target = (-r - np.arange(DT) / 4).astype(np.float32)  # (b, dt)
    return obs, target


def check_rows(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Raise if any row (any leading shape) is not the pure function of its id; return ids."""
    ids = np.round(obs[..., 0]).astype(np.int64)  # (...)
    want_obs, want_target = rows_for(ids.reshape(-1))
    np.testing.assert_array_equal(obs.reshape(-1, DO), want_obs)
    np.testing.assert_array_equal(target.reshape(-1, DT), want_target)
    return ids


def row_id(writer: int, k: int) -> int:
    # Never 0 (a zeroed, unwritten slot fails the check); < 2**22 keeps r + k / 4 exact.
    return (writer + 1) * ID_BLOCK + k


def episode_of(r: int) -> int:
    return r // EP_LEN


def batch_writer(store: RingBuffer, writer: int) -> int:
    for b in range(BATCHES_PER_WRITER):
        ids = np.array([row_id(writer, b * EP_LEN + s) for s in range(EP_LEN)])
        obs, target = rows_for(ids)
        store.add(obs, target, task_id=writer, episode_id=ids // EP_LEN, step=ids % EP_LEN)
    return BATCHES_PER_WRITER * EP_LEN


def single_writer(store: RingBuffer, writer: int) -> int:
    for k in range(SINGLES):
        r = row_id(writer, k * EP_LEN)  # each row is its own one-step episode
        obs, target = rows_for(np.array([r]))
        store.add(obs[0], target[0], task_id=writer, episode_id=r // EP_LEN, step=r % EP_LEN)
    return SINGLES


def check_meta(ids: np.ndarray, task: np.ndarray, episode: np.ndarray, step: np.ndarray) -> None:
    np.testing.assert_array_equal(task, ids // ID_BLOCK - 1)
    np.testing.assert_array_equal(episode, ids // EP_LEN)
    np.testing.assert_array_equal(step, ids % EP_LEN)


def sample_checks(store: RingBuffer) -> list[Callable[[], int]]:
    """Sampling calls that each verify what they got and return the rows checked."""
    obs_out = np.empty((32, DO), np.float32)
    target_out = np.empty((32, DT), np.float32)
    rng = np.random.default_rng(0)

    def flat() -> int:
        obs, target, task, episode, step = store.sample(64, with_meta=True)
        check_meta(check_rows(obs, target), task, episode, step)
        return 64

    def into() -> int:
        obs_out.fill(0.0)
        store.sample_into(obs_out, target_out)
        check_rows(obs_out, target_out)
        return 32

    def recent() -> int:
        obs, target, task, episode, step = store.sample_recent(16, 64, with_meta=True)
        check_meta(check_rows(obs, target), task, episode, step)
        return 16

    def sequences() -> int:
        obs, target, task_ids = store.sample_sequences(8, SEQ_LEN)  # (b, l, d)
        ids = check_rows(obs, target)  # (b, l)
        np.testing.assert_array_equal(np.diff(ids, axis=1), 1)  # consecutive steps
        assert (ids // EP_LEN == ids[:, :1] // EP_LEN).all()  # one episode
        np.testing.assert_array_equal(task_ids, ids[:, 0] // ID_BLOCK - 1)
        return 8 * SEQ_LEN

    def tasks() -> int:
        contiguous = bool(rng.integers(2))
        s_obs, s_target, q_obs, q_target, task_ids = store.sample_tasks(
            2, 3, 3, contiguous=contiguous
        )  # (t, s, d), (t, q, d), (t,)
        support, query = check_rows(s_obs, s_target), check_rows(q_obs, q_target)  # (t, s)
        window = np.concatenate([support, query], axis=1)  # (t, s + q)
        np.testing.assert_array_equal(window // ID_BLOCK - 1, np.repeat(task_ids[:, None], 6, 1))
        if contiguous:
            np.testing.assert_array_equal(np.diff(window, axis=1), 1)
        return 12

    def views() -> int:
        # A racing write may tear a row in a *view* (documented); only check shapes here.
        assert store.obs_view().shape[1] == DO
        return 0

    return [flat, into, recent, sequences, tasks, views]


def test_concurrent_writers_and_samplers_never_see_torn_rows() -> None:
    store = RingBuffer(CAPACITY, DO, DT, seed=0)
    # Fill the ring with whole episodes first, so every sampler has enough rows from the start.
    first = np.array([row_id(5, k) for k in range(CAPACITY)])  # a sixth "writer", id 5
    store.add(*rows_for(first), task_id=5, episode_id=first // EP_LEN, step=first % EP_LEN)

    done = threading.Event()
    errors: list[BaseException] = []
    added = [0] * (WRITERS + 1)
    checked = [0, 0]  # rows verified per sampler
    calls = [0, 0]  # calls per sampler
    start = threading.Barrier(WRITERS + 3)  # everyone starts together

    def write(index: int) -> None:
        try:
            start.wait(timeout=30)
            fn = single_writer if index == WRITERS else batch_writer
            added[index] = fn(store, index)
        except BaseException as exc:  # reported in the main thread
            errors.append(exc)

    def sample(index: int) -> None:
        checks = sample_checks(store)
        k = index
        try:
            start.wait(timeout=30)
            while not done.is_set():
                calls[index] += 1
                try:
                    checked[index] += checks[k % len(checks)]()
                except ValueError as exc:  # only "no window / task with enough rows" is fine
                    text = str(exc).lower()
                    assert any(w in text for w in ("seq", "episode", "task")), exc
                k += 1
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(i,)) for i in range(WRITERS + 1)]
    samplers = [threading.Thread(target=sample, args=(i,)) for i in range(2)]
    for t in samplers + writers:
        t.start()
    for t in writers:
        t.join(timeout=60)
    done.set()
    for t in samplers:
        t.join(timeout=60)
    assert not errors, errors[:3]

    total = CAPACITY + sum(added)
    assert added == [BATCHES_PER_WRITER * EP_LEN] * WRITERS + [SINGLES]
    assert store.total_added == total
    assert len(store) == CAPACITY
    assert sum(store.task_counts().values()) == CAPACITY
    assert min(calls) >= 10, calls  # both samplers really ran alongside the writers
    assert sum(checked) > 0
    # After the dust settles every held row is intact, in views too.
    ids = check_rows(store.obs_view(), store.target_view())
    check_meta(ids, store.task_id_view(), store.episode_id_view(), store.step_view())
    assert len(set(ids.tolist())) == CAPACITY
