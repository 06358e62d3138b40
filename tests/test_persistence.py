"""RingBuffer.save / RingBuffer.load and reseed: bit-exact round trips, atomic replacement,
and clear errors for damaged files.

Shape glossary: n rows, do obs_dim, dt target_dim, b batch.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from rust_buffer import RingBuffer

DO = 5
DT = 2
HEADER = 128


def make_store(
    capacity: int = 300, n: int = 1000, *, retention: str = "fifo", seed: int = 7
) -> RingBuffer:
    rng = np.random.default_rng(seed)
    store = RingBuffer(capacity, DO, DT, seed=seed, retention=retention)  # type: ignore[arg-type]
    for ep in range(n // 50):
        obs = rng.standard_normal((50, DO)).astype(np.float32)  # (50, do)
        target = rng.standard_normal((50, DT)).astype(np.float32)  # (50, dt)
        store.add(obs, target, task_id=ep % 4, episode_id=ep, step=np.arange(50))
    return store


def assert_same(a: RingBuffer, b: RingBuffer) -> None:
    assert (len(a), a.capacity, a.total_added, a.retention, a.seed) == (
        len(b),
        b.capacity,
        b.total_added,
        b.retention,
        b.seed,
    )
    for view in ["obs_view", "target_view", "task_id_view", "episode_id_view", "step_view"]:
        np.testing.assert_array_equal(getattr(a, view)(), getattr(b, view)(), err_msg=view)
    assert a.task_counts() == b.task_counts()
    for x, y in zip(a.sample(64, with_meta=True), b.sample(64, with_meta=True), strict=True):
        np.testing.assert_array_equal(x, y)
    contiguous = a.retention == "fifo"  # reservoir stores hold few episode windows
    if contiguous:
        for x, y in zip(a.sample_sequences(8, 10), b.sample_sequences(8, 10), strict=True):
            np.testing.assert_array_equal(x, y)
    for x, y in zip(
        a.sample_tasks(2, 5, 5, contiguous=contiguous),
        b.sample_tasks(2, 5, 5, contiguous=contiguous),
        strict=True,
    ):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("retention", ["fifo", "reservoir"])
def test_round_trip_is_bit_exact(tmp_path: Path, retention: str) -> None:
    store = make_store(retention=retention)
    store.sample(3)  # the sampler's position is part of the state
    store.save(tmp_path / "s.rbuf")
    loaded = RingBuffer.load(tmp_path / "s.rbuf")
    assert_same(store, loaded)
    assert_same(store, loaded)  # and they keep drawing the same batches


def test_round_trip_after_clear_and_with_str_path(tmp_path: Path) -> None:
    store = make_store(n=500)
    store.clear()
    store.add(np.ones((3, DO)), np.zeros((3, DT)), task_id=9)
    path = str(tmp_path / "c.rbuf")
    store.save(path)
    loaded = RingBuffer.load(path)
    assert len(loaded) == 3 and loaded.total_added == 503
    np.testing.assert_array_equal(loaded.obs_view(), store.obs_view())
    assert loaded.task_counts() == {9: 3}


def test_reseed_restarts_the_sampler() -> None:
    store = make_store()
    store.reseed(42)
    first = store.sample(16)
    store.sample(5)
    store.reseed(42)
    np.testing.assert_array_equal(store.sample(16)[0], first[0])
    assert store.seed == 42
    fresh = RingBuffer(store.capacity, DO, DT, seed=42)
    fresh.add(store.obs_view(), store.target_view())
    np.testing.assert_array_equal(fresh.sample(16)[0], first[0])
    with pytest.raises(ValueError, match="seed must be an int"):
        store.reseed(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        store.reseed("1")  # type: ignore[arg-type]


def test_save_replaces_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "s.rbuf"
    make_store(n=1000).save(path)
    small = make_store(capacity=10, n=50)
    small.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.rbuf"]
    assert len(RingBuffer.load(path)) == 10


def test_save_while_threads_add_keeps_rows_whole(tmp_path: Path) -> None:
    store = RingBuffer(2000, DO, DT, seed=1)
    stop = threading.Event()

    def writer(w: int) -> None:
        i = 0
        while not stop.is_set():
            ids = np.arange(i, i + 20, dtype=np.float32)[:, None] + 1000 * w  # (20, 1)
            store.add(np.repeat(ids, DO, axis=1), np.repeat(-ids, DT, axis=1))
            i += 20

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    try:
        for k in range(5):
            store.save(tmp_path / f"{k}.rbuf")
    finally:
        stop.set()
        for t in threads:
            t.join()
    for k in range(5):
        loaded = RingBuffer.load(tmp_path / f"{k}.rbuf")
        obs, target = loaded.sample(min(len(loaded), 500))
        assert (obs == obs[:, :1]).all(), "torn obs row"
        np.testing.assert_array_equal(target[:, 0], -obs[:, 0])


def _damaged(tmp_path: Path, edit: int | None = None, cut: int | None = None) -> Path:
    path = tmp_path / "s.rbuf"
    if not path.exists():
        make_store().save(path)
    data = bytearray(path.read_bytes())
    if edit is not None:
        data[edit] ^= 0x10
    if cut is not None:
        data = data[:cut]
    out = tmp_path / "bad.rbuf"
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize(
    ("edit", "cut", "match"),
    [
        (0, None, "magic"),
        (9, None, "version"),
        (20, None, "header checksum"),
        (HEADER + 100, None, "checksum"),
        (-3, None, "end marker"),
        (None, 100, "truncated"),
        (None, 5000, "truncated"),
        (None, 0, "truncated"),
    ],
)
def test_damaged_files_raise_value_error(
    tmp_path: Path, edit: int | None, cut: int | None, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        RingBuffer.load(_damaged(tmp_path, edit, cut))


def test_wrong_version_and_foreign_files(tmp_path: Path) -> None:
    path = _damaged(tmp_path)
    data = bytearray(path.read_bytes())
    data[8:12] = struct.pack("<I", 99)
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="version 99 is not supported"):
        RingBuffer.load(path)
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(100))
    with pytest.raises(ValueError, match="magic"):
        RingBuffer.load(npy)
    with pytest.raises(FileNotFoundError):
        RingBuffer.load(tmp_path / "missing.rbuf")
    with pytest.raises(FileNotFoundError):
        make_store().save(tmp_path / "no" / "such" / "dir.rbuf")


def test_load_in_a_fresh_process_draws_the_same_batches(tmp_path: Path) -> None:
    store = make_store()
    store.save(tmp_path / "s.rbuf")
    expected = store.sample(8)[0]
    code = (
        "import sys, numpy as np; from rust_buffer import RingBuffer;"
        "s = RingBuffer.load(sys.argv[1]); np.save(sys.argv[2], s.sample(8)[0])"
    )
    out = tmp_path / "o.npy"
    subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "s.rbuf"), str(out)],
        check=True,
        env={**os.environ},
    )
    np.testing.assert_array_equal(np.load(out), expected)
