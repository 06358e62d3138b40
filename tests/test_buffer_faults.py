"""The store under faults (issue 15), one regression test per numbered item at least.

1. save racing clear; 2. a stopped writer (timeout naming its pid, Ctrl-C, reclaim once
dead); 3. truncation of the shared file by another process; 4. save/load destinations
(symlinks, FIFOs, devices, live shared stores); 5. the finite-rows promise (read-only views and
DLPack, NaN in crafted files); 6. forged counters; 7. sampler retries; 8. step wrap, huge
capacities, None in object arrays, task_id=None.

Multi-process tests use real processes with timeouts (never a hang); stopped writers are real
processes that forge a busy stamp under their own process-table entry and SIGSTOP themselves,
so the timing is deterministic. Longer soak runs: `python benchmarks/soak_store.py`.

Shape glossary: n rows, do obs_dim (4), dt target_dim (2).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import textwrap
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest

from rust_buffer import RingBuffer

DO = 4
DT = 2
# File-backed store layout (docs/persistence.md): counters, process table, stamps.
COUNTERS_AT = 128
TABLE_AT = 256
STAMPS_AT = 4096
TAG_SHIFT = 56
# Snapshot layout: 128-byte header (cursor at 56, CRC of bytes 0..124 at 124), body, 8-byte trailer.
HEADER_LEN = 128
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROC_TIMEOUT = 20


def rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Self-checking rows: obs (n, do) = id * 10 + j, target (n, dt) = -(id * 10 + j)."""
    ids = np.asarray(ids, dtype=np.float32)[:, None]  # (n, 1)
    return ids * 10 + np.arange(DO, dtype=np.float32), -(ids * 10 + np.arange(DT))


def filled(capacity: int = 16, n: int = 10) -> RingBuffer:
    store = RingBuffer(capacity, DO, DT, seed=1)
    store.add(*rows(np.arange(n)), episode_id=0, step=np.arange(n))
    return store


def run_child(src: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(src), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def reseal(data: bytearray) -> bytearray:
    """Recompute a snapshot's header CRC and body CRC after editing it."""
    data[124:128] = zlib.crc32(bytes(data[:124])).to_bytes(4, "little")
    body_end = len(data) - 8
    data[body_end : body_end + 4] = zlib.crc32(bytes(data[HEADER_LEN:body_end])).to_bytes(
        4, "little"
    )
    return data


# A child that opens the store, forges a busy stamp for `row` in `slot` under its own table
# entry (as if it were frozen inside add), reports its pid, and stops itself.
STOPPED_WRITER = """
    import os, signal, sys
    import numpy as np
    from rust_buffer import RingBuffer
    path, slot, row = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = RingBuffer.open(path)
    table = np.memmap(path, np.uint64, "r+", offset=256, shape=(64,))
    entry = int(np.flatnonzero(table == os.getpid())[0])
    stamps = np.memmap(path, np.uint64, "r+", offset=4096, shape=(store.capacity,))
    stamps[slot] = (2 * row + 1) | (entry << 56)
    stamps.flush()
    print(os.getpid(), flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)
"""


def stopped_writer(path: Path, slot: int, row: int) -> subprocess.Popen[str]:
    """Start a writer process that holds `slot` (busy with `row`) and is stopped (SIGSTOP)."""
    child = run_child(STOPPED_WRITER, str(path), str(slot), str(row))
    assert child.stdout is not None
    line = child.stdout.readline()
    assert line.strip() == str(child.pid), child.stderr.read() if child.stderr else ""
    # Wait (bounded) until it is really stopped: /proc/<pid>/stat state 'T'.
    for _ in range(2000):
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        if stat[stat.rfind(")") + 2] == "T":
            break
        threading.Event().wait(0.005)
    return child


needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").exists(), reason="stopped/dead writers are told apart via /proc"
)


def kill(child: subprocess.Popen[str]) -> None:
    child.kill()
    child.wait(timeout=PROC_TIMEOUT)


# ---- 1. save racing clear -------------------------------------------------------------------


def test_save_racing_clear_and_add_leaves_only_loadable_snapshots(tmp_path: Path) -> None:
    store = RingBuffer(1024, DO, DT, seed=0)
    path = tmp_path / "snap.rbuf"
    stop = threading.Event()

    def churn() -> None:
        k = 0
        while not stop.is_set():
            store.clear()
            store.add(*rows(np.arange(k, k + 500) % 100_000))
            k += 500

    thread = threading.Thread(target=churn)
    thread.start()
    saved = 0
    try:
        for _ in range(100):
            try:
                store.save(path)
                saved += 1
            except RuntimeError as e:  # every copy overlapped a clear: nothing replaced
                assert "cleared" in str(e)
            if path.exists():
                loaded = RingBuffer.load(path)  # every file ever at `path` loads
                obs, target = loaded.obs_view(), loaded.target_view()
                full = (obs != 0).any(1)  # empty slots are saved as zeros
                obs, target = obs[full], target[full]
                ids = obs[:, 0] / 10
                np.testing.assert_array_equal(obs, rows(ids)[0])
                np.testing.assert_array_equal(target, rows(ids)[1])
    finally:
        stop.set()
        thread.join(timeout=PROC_TIMEOUT)
    assert saved > 0


# ---- 2. a stopped writer ------------------------------------------------------------------


@needs_proc
def test_a_stopped_writer_times_out_naming_its_pid_and_is_reclaimed_once_dead(
    tmp_path: Path,
) -> None:
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 8, DO, DT, seed=0)
    store.add(*rows(np.arange(8)))
    child = stopped_writer(path, slot=3, row=11)
    try:
        store.wait_timeout = 0.3
        with pytest.raises(TimeoutError, match=rf"slot 3 .* process {child.pid}\b"):
            store.add(*rows(np.arange(8, 16)))  # row 11 laps onto slot 3
        # The other rows landed; the stopped writer's slot stays busy (it may resume).
        seen = {i for _ in range(50) for i in store.sample(8)[0][:, 0] / 10}
        assert seen == {8, 9, 10, 12, 13, 14, 15}
    finally:
        kill(child)
    # Dead now: the next lap reclaims its slot and writes.
    store.add(*rows(np.arange(16, 24)))
    np.testing.assert_array_equal(store.obs_view()[:, 0] / 10, np.arange(16, 24))


@needs_proc
def test_ctrl_c_interrupts_an_add_waiting_on_a_stopped_writer(tmp_path: Path) -> None:
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 8, DO, DT, seed=0)
    store.add(*rows(np.arange(8)))
    holder = stopped_writer(path, slot=0, row=8)
    waiter_src = """
        import sys, time
        import numpy as np
        from rust_buffer import RingBuffer
        store = RingBuffer.open(sys.argv[1])
        store.wait_timeout = 60  # only Ctrl-C can end the wait in time
        print("adding", flush=True)
        start = time.monotonic()
        try:
            store.add(np.ones((1, 4)), np.ones((1, 2)))
        except KeyboardInterrupt:
            print("interrupted in add after %.1f s" % (time.monotonic() - start), flush=True)
    """
    waiter = run_child(waiter_src, str(path))
    try:
        assert waiter.stdout is not None
        assert waiter.stdout.readline().strip() == "adding"
        threading.Event().wait(0.5)
        waiter.send_signal(signal.SIGINT)
        out, err = waiter.communicate(timeout=PROC_TIMEOUT)
        assert "interrupted in add" in out, err
        assert waiter.returncode == 0
    finally:
        if waiter.poll() is None:
            kill(waiter)
        kill(holder)


@needs_proc
def test_a_gil_holding_add_never_starves_a_waiting_gil_free_add(tmp_path: Path) -> None:
    """A big add (GIL released) holds slots 0..39 and waits on slot 40, held by a stopped
    writer; a small add (GIL held) then waits on slot 0. The big add's interrupt check needs
    the GIL, so the waiting small add must let it go: the big add times out on slot 40 and
    publishes the rest, and the small add then succeeds (no spurious TimeoutError)."""
    wide = 64  # rows of 64 + 2 floats: a 64-row add is above the GIL-release threshold
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 64, wide, DT, seed=0)
    store.add(np.zeros((64, wide)), np.zeros((64, DT)))
    holder = stopped_writer(path, slot=40, row=40)
    big, small = RingBuffer.open(path), RingBuffer.open(path)
    big.wait_timeout, small.wait_timeout = 0.3, 10.0
    errors: list[BaseException] = []

    def big_add() -> None:
        try:
            big.add(np.ones((64, wide)), np.ones((64, DT)))
        except TimeoutError as e:
            errors.append(e)

    thread = threading.Thread(target=big_add)
    try:
        thread.start()
        threading.Event().wait(0.1)  # the big add now holds slots 0..39 and waits on 40
        small.add(np.full(wide, 2.0), np.full(DT, 2.0))  # row 128: slot 0
        thread.join(timeout=PROC_TIMEOUT)
    finally:
        kill(holder)
    assert len(errors) == 1 and f"process {holder.pid}" in str(errors[0])
    assert store.obs_view()[0, 0] == 2.0  # the small add's row landed after the big one's


def test_wait_timeout_is_validated() -> None:
    store = RingBuffer(4, DO, DT)
    assert store.wait_timeout == 10.0
    store.wait_timeout = 0.25
    assert store.wait_timeout == 0.25
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="wait_timeout"):
            store.wait_timeout = bad


# ---- 3. truncation ------------------------------------------------------------------------


def test_truncation_by_another_process_is_an_error_not_sigbus(tmp_path: Path) -> None:
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 4096, DO, DT, seed=0)
    store.add(*rows(np.arange(1000)))
    reader_src = """
        import sys
        from rust_buffer import RingBuffer
        store = RingBuffer.open(sys.argv[1])
        store.sample(8)
        print("ready", flush=True)
        sys.stdin.readline()
        for call in (lambda: store.sample(8), lambda: len(store), store.obs_view,
                     lambda: store.sample_sequences(2, 2)):
            try:
                call()
                print("no error", flush=True)
            except OSError as e:
                assert "truncated" in str(e), e
        print("ok", flush=True)
    """
    reader = run_child(reader_src, str(path))
    try:
        assert reader.stdout is not None and reader.stdin is not None
        assert reader.stdout.readline().strip() == "ready"
        truncator = run_child("import os, sys; os.truncate(sys.argv[1], 4096)", str(path))
        assert truncator.wait(timeout=PROC_TIMEOUT) == 0
        reader.stdin.write("go\n")
        reader.stdin.flush()
        out, err = reader.communicate(timeout=PROC_TIMEOUT)
    finally:
        if reader.poll() is None:
            kill(reader)
    assert reader.returncode == 0, f"reader died with {reader.returncode}: {err}"
    assert out.split() == ["ok"]
    for call in (lambda: store.sample(8), lambda: store.add(*rows(np.arange(2))), store.clear):
        with pytest.raises(OSError, match="truncated to 4096 bytes"):
            call()
    with pytest.raises(ValueError, match="truncated"):
        RingBuffer.open(path)


# ---- 4. save and load destinations --------------------------------------------------------


def test_save_refuses_links_fifos_devices_directories_and_shared_stores(tmp_path: Path) -> None:
    store = filled()
    good = tmp_path / "good.rbuf"
    store.save(good)
    link = tmp_path / "link.rbuf"
    link.symlink_to(good)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    shared_path = tmp_path / "shared.rbs"
    shared = RingBuffer.create(shared_path, 8, DO, DT)
    shared.add(*rows(np.arange(3)))
    other = RingBuffer.open(shared_path)
    cases = [
        (store, link, "symbolic link"),
        (store, fifo, "FIFO"),
        (store, Path("/dev/null"), "device"),
        (store, tmp_path, "directory"),
        (store, shared_path, "file-backed store"),
        (shared, shared_path, "own file"),
    ]
    for who, dest, why in cases:
        with pytest.raises(ValueError, match=why):
            who.save(dest)
    assert link.is_symlink() and len(RingBuffer.load(link)) == 10
    # The live shared store is untouched: both handles still share one file.
    other.add(*rows(np.arange(3, 5)))
    assert len(shared) == 5
    assert len(RingBuffer.open(shared_path)) == 5


def test_load_and_open_refuse_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    src = """
        import sys
        from rust_buffer import RingBuffer
        for call in (RingBuffer.load, RingBuffer.open):
            try:
                call(sys.argv[1])
            except ValueError as e:
                print("refused:", e, flush=True)
    """
    child = run_child(src, str(fifo))
    try:
        out, err = child.communicate(timeout=PROC_TIMEOUT)  # a blocked open would time out
    finally:
        if child.poll() is None:
            kill(child)
    assert out.count("refused:") == 2 and "FIFO" in out, err


# ---- 5. the finite-rows promise -----------------------------------------------------------


class _DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _DLManagedTensorVersioned(ctypes.Structure):
    # The head of DLPack 1.x's DLManagedTensorVersioned (dlpack.h): version, manager_ctx,
    # deleter, flags.
    _fields_ = [
        ("version", _DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", ctypes.c_void_p),
        ("flags", ctypes.c_uint64),
    ]


DLPACK_FLAG_BITMASK_READ_ONLY = 1


def test_views_and_their_dlpack_capsules_are_read_only() -> None:
    store = filled()
    for view in (store.obs_view(), store.target_view(), store.step_view()):
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view.flags.writeable = True
        # Legacy (unversioned) DLPack cannot carry a read-only flag: export is refused.
        with pytest.raises(BufferError):
            view.__dlpack__()
        capsule = view.__dlpack__(max_version=(1, 0))
        get = ctypes.pythonapi.PyCapsule_GetPointer
        get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
        head = _DLManagedTensorVersioned.from_address(get(capsule, b"dltensor_versioned"))
        assert head.version.major >= 1
        assert head.flags & DLPACK_FLAG_BITMASK_READ_ONLY


def test_a_nan_written_through_a_torch_alias_is_caught_by_save_and_open(tmp_path: Path) -> None:
    """torch ignores the read-only flags (documented in the README): the checks catch it."""
    torch = pytest.importorskip("torch")
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 8, DO, DT, seed=0)
    store.add(*rows(np.arange(8)))
    good = tmp_path / "good.rbuf"
    store.save(good)
    alias = torch.from_dlpack(store.obs_view())
    alias[5, 2] = float("nan")
    with pytest.raises(ValueError, match="slot 5 obs column 2 is NaN"):
        store.save(good)
    assert np.isfinite(RingBuffer.load(good).obs_view()).all()  # the old file is intact
    assert not any(p.name.startswith(".good") for p in tmp_path.iterdir())  # no temp left
    with pytest.raises(ValueError, match="slot 5 obs column 2 is NaN"):
        RingBuffer.open(path)


def test_load_rejects_nan_and_inf_with_valid_checksums(tmp_path: Path) -> None:
    store = filled(16, 10)
    path = tmp_path / "s.rbuf"
    store.save(path)
    clean = bytearray(path.read_bytes())
    obs_at = HEADER_LEN + 10 * 8  # after the block's 10 stamps
    for value, row, col in ((np.nan, 3, 1), (np.inf, 9, 0), (-np.inf, 0, 3)):
        data = bytearray(clean)
        at = obs_at + (row * DO + col) * 4
        data[at : at + 4] = np.float32(value).tobytes()
        path.write_bytes(reseal(data))
        with pytest.raises(ValueError, match=f"slot {row} obs column {col}"):
            RingBuffer.load(path)
    path.write_bytes(clean)
    assert len(RingBuffer.load(path)) == 10


# ---- 6. forged counters -------------------------------------------------------------------


def test_load_rejects_forged_counters_and_add_never_wraps(tmp_path: Path) -> None:
    store = filled(16, 10)
    path = tmp_path / "s.rbuf"
    store.save(path)
    clean = bytearray(path.read_bytes())
    for cursor in (2**64 - 1, 2**54, 2**60):
        data = bytearray(clean)
        data[56:64] = cursor.to_bytes(8, "little")
        path.write_bytes(reseal(data))
        with pytest.raises(ValueError, match="limit"):
            RingBuffer.load(path)
    data = bytearray(clean)
    data[56:64] = (2**54 - 1).to_bytes(8, "little")
    path.write_bytes(reseal(data))
    near = RingBuffer.load(path)
    with pytest.raises(ValueError, match="limit"):
        near.add(*rows(np.arange(1)))
    assert near.total_added == 2**54 - 1


def test_open_rejects_forged_shared_counters(tmp_path: Path) -> None:
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 8, DO, DT)
    store.add(*rows(np.arange(4)))
    del store
    counters = np.memmap(path, np.uint64, "r+", offset=COUNTERS_AT, shape=(2,))
    counters[0] = 2**64 - 1
    counters.flush()
    with pytest.raises(ValueError, match="limit"):
        RingBuffer.open(path)
    counters[:] = [4, 5]  # base beyond the cursor
    counters.flush()
    with pytest.raises(ValueError, match="beyond the cursor"):
        RingBuffer.open(path)
    counters[:] = [4, 0]
    counters.flush()
    del counters
    assert len(RingBuffer.open(path)) == 4


# ---- 7. sampler retries -------------------------------------------------------------------


WRITER = """
    import sys
    import numpy as np
    from rust_buffer import RingBuffer
    store, w, k = RingBuffer.open(sys.argv[1]), int(sys.argv[2]), 0
    print("writing", flush=True)
    while True:
        ids = (np.arange(k, k + 256) + w * 30_000) % 90_000
        obs = ids[:, None].astype(np.float32) * 10 + np.arange(4, dtype=np.float32)
        target = -(ids[:, None].astype(np.float32) * 10 + np.arange(2, dtype=np.float32))
        store.add(obs, target, episode_id=w, step=np.arange(k, k + 256) % 100_000)
        k += 256
"""


def test_samplers_retry_instead_of_raising_under_heavy_writes(tmp_path: Path) -> None:
    """3 writer processes lap a 1024-row store while this one samples the newest rows (the
    ones being written): without the internal retries about 2 % of these calls raised."""
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 1024, DO, DT, seed=0)
    store.add(*rows(np.arange(1024)), episode_id=9, step=np.arange(1024))
    writers = [run_child(WRITER, str(path), str(w)) for w in range(3)]
    try:
        for w in writers:
            assert w.stdout is not None and w.stdout.readline().strip() == "writing"
        for _ in range(1500):
            obs, target = store.sample_recent(64, 64)
            want_obs, want_target = rows(obs[:, 0] / 10)
            np.testing.assert_array_equal(obs, want_obs)  # never torn
            np.testing.assert_array_equal(target, want_target)
        store.sample_sequences(8, 16)
        store.sample(256)
    finally:
        for w in writers:
            kill(w)


def test_the_overwrite_error_says_what_to_change(tmp_path: Path) -> None:
    """Every slot busy with a live (stopped) writer: sampling cannot succeed, even retried."""
    path = tmp_path / "s.rbs"
    store = RingBuffer.create(path, 4, DO, DT)
    store.add(*rows(np.arange(4)))
    table = np.memmap(path, np.uint64, "r+", offset=TABLE_AT, shape=(64,))
    entry = int(np.flatnonzero(table == os.getpid())[0])
    stamps = np.memmap(path, np.uint64, "r+", offset=STAMPS_AT, shape=(4,))
    stamps[:] = (2 * np.arange(4, 8, dtype=np.uint64) + 1) | np.uint64(entry << TAG_SHIFT)
    with pytest.raises(RuntimeError, match=r"larger capacity .*fewer concurrent writers"):
        store.sample(2)
    stamps[:] = 2 * np.arange(4, dtype=np.uint64) + 2  # restore the stable stamps
    assert store.sample(2)[0].shape == (2, DO)


# ---- 8. smaller items ---------------------------------------------------------------------


def test_windows_never_wrap_from_the_largest_step_to_the_smallest() -> None:
    store = RingBuffer(16, DO, DT, seed=0)
    top = np.iinfo(np.int64)
    steps = np.array([top.max - 1, top.max, top.min, top.min + 1], dtype=np.int64)
    store.add(*rows(np.arange(4)), episode_id=1, step=steps)
    for seq_len in (3, 4):
        with pytest.raises(ValueError, match="consecutive steps"):
            store.sample_sequences(2, seq_len)
    obs, _, _ = store.sample_sequences(8, 2)
    assert (obs[:, :, 0] / 10 == [0, 1]).all()


def test_a_huge_capacity_reports_the_overflow() -> None:
    with pytest.raises(ValueError, match="overflows") as err:
        RingBuffer(2**62, 4, 1)
    assert str(2**64 - 1) not in str(err.value)


def test_none_in_object_arrays_is_reported_as_none_not_nan() -> None:
    store = RingBuffer(4, DO, DT)
    with pytest.raises(TypeError, match=r"obs\[1\] is None"):
        store.add([1.0, None, 2.0, 3.0], [0.0, 0.0])
    with pytest.raises(TypeError, match=r"target\[1, 0\] is None"):
        store.add(np.ones((2, DO)), np.array([[1.0, 2.0], [None, 0.0]], dtype=object))
    store.add(np.array([1, 2, 3, 4], dtype=object), [0.5, 0.5])  # numbers in objects are fine
    assert len(store) == 1


def test_none_metadata_is_a_type_error_not_the_default() -> None:
    store = RingBuffer(4, DO, DT)
    for name in ("task_id", "episode_id", "step"):
        with pytest.raises(TypeError, match=f"{name}=None is not allowed"):
            store.add(np.ones(DO), np.ones(DT), **{name: None})
    assert len(store) == 0
    store.add(np.ones(DO), np.ones(DT))  # omitted: the defaults
    _, _, task, episode, step = store.sample(1, with_meta=True)
    assert (task[0], episode[0], step[0]) == (0, -1, -1)
