"""Benchmark RingBuffer.save / RingBuffer.load against np.save / np.load of the same columns.

A store of about `--gb` GB (rows of 64 + 64 float32 plus three int64 metadata columns, 536
bytes a row) is filled once; then, alternating, `store.save(path)` (temp file, fsync,
rename) and `np.save` of the five zero-copy column views (without and with an fsync, for a
like-for-like comparison), and `RingBuffer.load` against `np.load` of the five files. Each
cell is the median of `--repeat` runs (wall time). Loads read files that were just written,
so they come from the page cache for both.

Peak memory: a fresh subprocess builds the store, resets its peak-RSS mark
(/proc/self/clear_refs) and saves; VmHWM minus the RSS before is what the save itself needed
(the format streams the columns; nothing is copied whole). Another subprocess does the same
around a load. Linux only.

    .venv/bin/python benchmarks/bench_persistence.py                 # 1 GB, 3 repeats
    .venv/bin/python benchmarks/bench_persistence.py --gb 0.25 --repeat 5 --dir /some/disk

Shape glossary: n rows, do obs_dim (64), dt target_dim (64).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from rust_buffer import RingBuffer

log = logging.getLogger("bench_persistence")

OBS_DIM = 64
TARGET_DIM = 64
ROW_BYTES = (OBS_DIM + TARGET_DIM) * 4 + 3 * 8  # 536 bytes per row
CHUNK = 65_536  # rows per fill call
COLUMNS = ["obs", "target", "task_id", "episode_id", "step"]


def rows_for(gb: float) -> int:
    return int(gb * 1e9 / ROW_BYTES)


def filled_store(n: int) -> RingBuffer:
    """A full store of n rows (random floats, episodes of 1000 steps)."""
    store = RingBuffer(n, OBS_DIM, TARGET_DIM, seed=0)
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((CHUNK, OBS_DIM), dtype=np.float32)  # (CHUNK, do)
    target = rng.standard_normal((CHUNK, TARGET_DIM), dtype=np.float32)  # (CHUNK, dt)
    for start in range(0, n, CHUNK):
        k = min(CHUNK, n - start)
        idx = np.arange(start, start + k)
        store.add(
            obs[:k], target[:k], task_id=idx // 50_000, episode_id=idx // 1000, step=idx % 1000
        )
    return store


def views(store: RingBuffer) -> dict[str, np.ndarray]:
    return {
        "obs": store.obs_view(),  # (n, do)
        "target": store.target_view(),  # (n, dt)
        "task_id": store.task_id_view(),  # (n,)
        "episode_id": store.episode_id_view(),  # (n,)
        "step": store.step_view(),  # (n,)
    }


def np_save(cols: dict[str, np.ndarray], folder: Path, fsync: bool) -> None:
    for name, a in cols.items():
        path = folder / f"{name}.npy"
        with open(path, "wb") as fh:
            np.save(fh, a)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())


def np_load(folder: Path) -> list[np.ndarray]:
    return [np.load(folder / f"{name}.npy") for name in COLUMNS]


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    del out
    return dt


def time_all(
    store: RingBuffer, cols: dict[str, np.ndarray], folder: Path, path: Path, repeat: int
) -> dict[str, list[float]]:
    """Seconds per call of each operation, interleaved, `repeat` times."""
    ops: dict[str, Callable[[], object]] = {
        "save": lambda: store.save(path),
        "np.save": lambda: np_save(cols, folder, fsync=False),
        "np.save+fsync": lambda: np_save(cols, folder, fsync=True),
        "load": lambda: RingBuffer.load(path),
        "np.load": lambda: np_load(folder),
    }
    times: dict[str, list[float]] = {k: [] for k in ops}
    for r in range(repeat):
        log.info("repeat %d/%d", r + 1, repeat)
        for name, fn in ops.items():
            times[name].append(timed(fn))
    return times


def status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / 1e6  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so it measures only what follows."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_probe(mode: str, gb: float, path: str) -> None:
    """Child process: print RSS before, peak RSS during one save or load, and the store's
    size (MB)."""
    n = rows_for(gb)
    store = filled_store(n) if mode == "save" else None
    before = status_mb("VmRSS")
    reset_peak_rss()
    if store is not None:
        store.save(path)
    else:
        store = RingBuffer.load(path)
    after = status_mb("VmHWM")
    print(f"{before:.1f} {after:.1f} {n * ROW_BYTES / 1e6:.1f}")


def probe(mode: str, gb: float, path: Path) -> tuple[float, float, float]:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import bench_persistence as b;"
        "b.memory_probe(sys.argv[2], float(sys.argv[3]), sys.argv[4])"
    )
    here = str(Path(__file__).resolve().parent)
    out = subprocess.run(
        [sys.executable, "-c", code, here, mode, str(gb), str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    before, after, size = map(float, out)
    return before, after, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gb", type=float, default=1.0, help="store size in GB (1e9 bytes)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    n = rows_for(args.gb)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        path = folder / "store.rbuf"
        log.info("filling a store of %d rows (%.2f GB)...", n, n * ROW_BYTES / 1e9)
        store = filled_store(n)
        cols = views(store)
        times = time_all(store, cols, folder, path, args.repeat)
        # Round trip check on the last file (cheap relative to the timings).
        loaded = RingBuffer.load(path)
        for name, view in views(loaded).items():
            assert np.array_equal(view, cols[name]), name
        del loaded
        file_mb = path.stat().st_size / 1e6
        npy_mb = sum((folder / f"{c}.npy").stat().st_size for c in COLUMNS) / 1e6
        del cols, store
        save_mem = probe("save", args.gb, path)
        load_mem = probe("load", args.gb, path)

    med = {k: statistics.median(v) for k, v in times.items()}
    gbs = n * ROW_BYTES / 1e9
    print(f"\nstore: {n} rows x ({OBS_DIM} + {TARGET_DIM} float32 + 3 int64) = {gbs:.2f} GB;")
    print(f"snapshot file {file_mb:.0f} MB, .npy files {npy_mb:.0f} MB; median of {args.repeat}\n")
    print("| operation | rust_buffer | NumPy | ratio (rust_buffer / NumPy) |")
    print("|---|---|---|---|")
    for ours, theirs in [("save", "np.save"), ("save", "np.save+fsync"), ("load", "np.load")]:
        a, b = med[ours], med[theirs]
        print(
            f"| {ours} vs {theirs} | {a:.2f} s ({gbs / a:.2f} GB/s) | "
            f"{b:.2f} s ({gbs / b:.2f} GB/s) | {a / b:.2f} |"
        )
    sb, sa, size = save_mem
    lb, la, _ = load_mem
    print(
        f"\nRSS during save: {sb:.0f} MB before, peak {sa:.0f} MB "
        f"(+{sa - sb:.0f} MB for a {size:.0f} MB store; a full copy would add {size:.0f})"
    )
    print(
        f"RSS during load: {lb:.0f} MB before, peak {la:.0f} MB (+{la - lb:.0f} MB for a "
        f"{size:.0f} MB store)"
    )


if __name__ == "__main__":
    main()
