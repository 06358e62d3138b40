"""File-backed shared stores (RingBuffer.create / RingBuffer.open): several processes write
and sample one memory-mapped store at once; a writer killed mid-write loses at most the rows
it was writing.

Every row is self-checking: obs = (writer, seq, f(writer, seq, 2), ..., f(writer, seq, do-1)),
target[j] = -f(writer, seq, j), with f an integer hash below 2**20 (exact in float32). A torn
row (halves of two writes) fails the check.

Shape glossary: n rows, b batch, do obs_dim (8), dt target_dim (4).
"""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from rust_buffer import RingBuffer

DO = 8
DT = 4


def f(writer: object, seq: object, j: object) -> np.ndarray:
    """The checksum value of column j of row seq of writer (an integer below 2**20)."""
    w, q, c = np.asarray(writer), np.asarray(seq), np.asarray(j)
    return ((w * 1_000_003 + q * 7919 + c * 104_729) % 1_048_573).astype(np.float32)


def make_rows(writer: int, seqs: object) -> tuple[np.ndarray, np.ndarray]:
    """Rows seqs of writer: obs (n, do), target (n, dt)."""
    q = np.asarray(list(seqs), dtype=np.int64)[:, None]  # type: ignore[call-overload]  # (n, 1)
    obs = np.empty((len(q), DO), np.float32)  # (n, do)
    obs[:, :1] = writer
    obs[:, 1:2] = q
    obs[:, 2:] = f(writer, q, np.arange(2, DO))
    target = -f(writer, q, np.arange(DT))  # (n, dt)
    return obs, target


def check_rows(obs: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row (b,): True where obs (b, do) and target (b, dt) are one whole row."""
    writer = obs[:, :1].astype(np.int64)  # (b, 1)
    seqs = obs[:, 1:2].astype(np.int64)  # (b, 1)
    ok = (obs[:, 2:] == f(writer, seqs, np.arange(2, DO))).all(1)
    return ok & (target == -f(writer, seqs, np.arange(DT))).all(1)


# The same helpers, as source for the child processes (`python -c`).
ROWS_SRC = "\n".join(
    [
        "import numpy as np",
        f"DO, DT = {DO}, {DT}",
        *(inspect.getsource(fn) for fn in (f, make_rows, check_rows)),
    ]
)

WRITER = ROWS_SRC + textwrap.dedent(
    """
    import sys
    from rust_buffer import RingBuffer

    path, writer, total = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = RingBuffer.open(path)
    rng = np.random.default_rng(writer)
    seq = 0
    while total < 0 or seq < total:
        n = int(rng.integers(1, 200)) if total >= 0 else 5000
        if total >= 0:
            n = min(n, total - seq)
        obs, target = make_rows(writer, range(seq, seq + n))
        store.add(obs, target, task_id=writer, episode_id=writer, step=np.arange(seq, seq + n))
        seq += n
        if total < 0:
            print(seq, flush=True)
    """
)

SAMPLER = ROWS_SRC + textwrap.dedent(
    """
    import os, sys
    from rust_buffer import RingBuffer

    path, stop = sys.argv[1], sys.argv[2]
    store = RingBuffer.open(path, seed=3)
    batches = rows = 0
    while not os.path.exists(stop) or batches == 0:
        if len(store) < 256:
            continue
        obs, target, task, episode, step = store.sample(256, with_meta=True)
        assert check_rows(obs, target).all(), "torn or unfinished row sampled"
        assert (task == obs[:, 0]).all() and (step == obs[:, 1]).all(), "metadata mismatch"
        batches += 1
        rows += len(obs)
    print(batches, rows)
    """
)


def spawn(src: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", src, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out


def test_two_writers_and_a_sampler_share_one_file(tmp_path: Path) -> None:
    path, stop = tmp_path / "store.rbs", tmp_path / "stop"
    n = 30_000
    RingBuffer.create(path, 2 * n, DO, DT, seed=1)
    sampler = spawn(SAMPLER, path, stop)
    writers = [spawn(WRITER, path, w, n) for w in (1, 2)]
    for w in writers:
        finish(w)
    stop.touch()
    batches, sampled = map(int, finish(sampler).split())
    assert batches >= 1 and sampled == 256 * batches

    store = RingBuffer.open(path)
    assert store.total_added == 2 * n and len(store) == 2 * n
    assert store.task_counts() == {1: n, 2: n}
    obs, target = store.obs_view(), store.target_view()  # (n, do), (n, dt): quiescent now
    assert check_rows(obs, target).all()
    for w in (1, 2):
        seqs = np.sort(obs[obs[:, 0] == w, 1].astype(np.int64))
        np.testing.assert_array_equal(seqs, np.arange(n))  # every row exactly once
    # Episodes written by one process stay sampleable as windows.
    windows, _, tasks = store.sample_sequences(16, 8)
    assert check_rows(windows.reshape(-1, DO), _.reshape(-1, DT)).all()
    assert set(tasks.tolist()) <= {1, 2}


def test_killed_writer_loses_at_most_its_unfinished_rows(tmp_path: Path) -> None:
    path = tmp_path / "store.rbs"
    capacity = 400_000
    parent = RingBuffer.create(path, capacity, DO, DT, seed=2)
    writer = spawn(WRITER, path, 7, -1)  # writes 5000-row batches until killed
    assert writer.stdout is not None
    done = 0
    while done < 40_000:
        done = int(writer.stdout.readline())
    time.sleep(0.01)  # let it get into the middle of another add
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL

    # Slots it left half-written are reset (how many depends on where the kill landed: at most
    # one chunk of a batched add, 1024 rows: see `RingBuffer::write_run`).
    reclaimed = parent.reap_dead_writers()
    assert 0 <= reclaimed <= 1024
    store = RingBuffer.open(path)  # opening works (and sweeps as well)
    reserved = store.total_added  # rows the dead writer had reserved
    assert reserved >= done
    obs, target = store.sample(min(len(store), 20_000))  # (b, do), (b, dt)
    assert check_rows(obs, target).all(), "a sampled row is torn"

    view = store.obs_view()  # (len, do); unfinished slots show zeros or partial data
    whole = check_rows(view, store.target_view()) & (view[:, 0] == 7)
    seqs = np.sort(view[whole, 1].astype(np.int64))
    # Rows of finished adds are all there; only the last add's rows (at most 5000) are lost.
    assert len(seqs) >= reserved - 5000, (len(seqs), reserved, reclaimed)
    np.testing.assert_array_equal(seqs[:done], np.arange(done))

    # A new writer goes on, including a full lap over every slot the dead one left.
    finish(spawn(WRITER, path, 8, capacity), timeout=120)
    assert check_rows(store.obs_view(), store.target_view()).all()
    assert store.task_counts() == {8: capacity}


def test_create_and_open_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 10, 2, 1, retention="reservoir", seed=5)
    assert store.path == path and store.retention == "reservoir" and store.seed == 5
    assert RingBuffer.open(path, seed=9).seed == 9
    with pytest.raises(FileExistsError):
        RingBuffer.create(path, 10, 2, 1)
    with pytest.raises(FileNotFoundError):
        RingBuffer.open(tmp_path / "missing.rbs")
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer.create(tmp_path / "z.rbs", 0, 2, 1)
    with pytest.raises(ValueError, match="retention"):
        RingBuffer.create(tmp_path / "z.rbs", 5, 2, 1, retention="lifo")  # type: ignore[arg-type]
    assert not (tmp_path / "z.rbs").exists()
    data = bytearray(path.read_bytes())
    for edit, match in [(0, "magic"), (20, "checksum")]:
        bad = bytearray(data)
        bad[edit] ^= 1
        (tmp_path / "bad.rbs").write_bytes(bytes(bad))
        with pytest.raises(ValueError, match=match):
            RingBuffer.open(tmp_path / "bad.rbs")
    (tmp_path / "short.rbs").write_bytes(bytes(data[:-4096]))
    with pytest.raises(ValueError, match="truncated"):
        RingBuffer.open(tmp_path / "short.rbs")
    store.save(tmp_path / "snap.rbuf")
    with pytest.raises(ValueError, match=r"use RingBuffer\.load"):
        RingBuffer.open(tmp_path / "snap.rbuf")
    assert RingBuffer(5, 1, 1).path is None


def rss_bytes() -> int:
    """This process's resident set size (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def test_store_larger_than_ram_is_sparse_and_file_backed(tmp_path: Path) -> None:
    path = tmp_path / "big.rbs"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    row_bytes = 4 * (DO + DT) + 4 * 8  # floats + stamp + three int64
    capacity = int(ram * 1.25) // row_bytes  # a file 25% larger than this machine's RAM
    rss0 = rss_bytes()
    store = RingBuffer.create(path, capacity, DO, DT, seed=0)
    obs, target = make_rows(1, range(1000))
    store.add(obs, target, task_id=1)
    size, used = path.stat().st_size, path.stat().st_blocks * 512
    assert size > ram and used < 50e6, (size, used)  # only written pages take disk
    assert check_rows(*store.sample(500)).all()
    assert len(RingBuffer.open(path)) == 1000
    assert rss_bytes() - rss0 < 100e6  # and only touched pages are resident
    del store
    os.remove(path)
