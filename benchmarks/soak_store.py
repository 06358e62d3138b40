"""Soak the store under faults for minutes (the CI fault suite, tests/test_buffer_faults.py,
stays under a minute; this is the long run).

A file-backed store is shared by `--writers` writer processes adding self-checking rows
(obs = id * 10 + j, target = -(id * 10 + j), ids below 2**20 so exact in float32), while this
process samples every sampler and checks that no row is torn, and a saver thread repeatedly
clears, saves and loads snapshots (every file ever at the snapshot path must load). A chaos
loop SIGSTOPs a random writer for a while (others that lap onto its slots must time out with
TimeoutError, never hang) and now and then SIGKILLs one mid-run and starts a replacement (its
slots must be reclaimed). Any torn row, unloadable snapshot, hung call or unexpected
exception fails the run (exit status 1).

    .venv/bin/python benchmarks/soak_store.py                      # 120 s, 3 writers
    .venv/bin/python benchmarks/soak_store.py --seconds 600 --writers 4 --capacity 4096

Shape glossary: n rows, do obs_dim (4), dt target_dim (2).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

from rust_buffer import RingBuffer

log = logging.getLogger("soak_store")

DO, DT = 4, 2

WRITER = """
    import sys
    import numpy as np
    from rust_buffer import RingBuffer
    store, w, k = RingBuffer.open(sys.argv[1]), int(sys.argv[2]), 0
    store.wait_timeout = float(sys.argv[3])
    rng = np.random.default_rng(w)
    while True:
        n = int(rng.integers(1, 300))
        ids = (np.arange(k, k + n) + w * 100_003) % 1_000_000
        obs = ids[:, None].astype(np.float32) * 10 + np.arange(4, dtype=np.float32)
        target = -(ids[:, None].astype(np.float32) * 10 + np.arange(2, dtype=np.float32))
        try:
            store.add(obs, target, episode_id=w, step=np.arange(k, k + n))
        except TimeoutError as e:  # lapped onto a stopped writer's slot: the documented policy
            print("timeout:", e, flush=True)
        k += n
"""


# The errors a sampler may rightly raise right after a concurrent clear.
AFTER_CLEAR = ("empty", "consecutive", "holds only", "larger than the")


def check(obs: np.ndarray, target: np.ndarray) -> None:
    """Raise if any row of obs (n, do) / target (n, dt) is torn (all-zero rows are the empty
    slots of a loaded snapshot; no valid row is all zero)."""
    full = (obs != 0).any(-1) | (target != 0).any(-1)
    obs, target = obs[full], target[full]
    ids = np.round(obs[..., :1] / 10)
    if (
        not (obs == ids * 10 + np.arange(DO)).all()
        or not (target == -(ids * 10 + np.arange(DT))).all()
    ):
        raise AssertionError("torn row")


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--writers", type=int, default=3)
    ap.add_argument("--capacity", type=int, default=4096)
    ap.add_argument("--wait-timeout", type=float, default=0.5, help="writers' wait_timeout (s)")
    ap.add_argument("--dir", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tmp = Path(tempfile.mkdtemp(dir=args.dir, prefix="soak-"))
    path, snap = tmp / "store.rbs", tmp / "snap.rbuf"
    store = RingBuffer.create(path, args.capacity, DO, DT, seed=0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def spawn(w: int) -> subprocess.Popen[str]:
        argv = [
            sys.executable,
            "-c",
            textwrap.dedent(WRITER),
            str(path),
            str(w),
            str(args.wait_timeout),
        ]
        return subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )

    writers = {w: spawn(w) for w in range(args.writers)}
    stats = dict(samples=0, saves=0, save_refused=0, loads=0, stops=0, kills=0)
    failures: list[str] = []
    stop = threading.Event()

    def saver() -> None:
        while not stop.is_set():
            try:
                if random.random() < 0.3:
                    store.clear()
                store.save(snap)
                stats["saves"] += 1
            except RuntimeError as e:  # every copy overlapped a clear: nothing replaced
                stats["save_refused"] += 1
                if "cleared" not in str(e):
                    failures.append(f"save: {e}")
            except Exception as e:  # any other failure is a finding
                failures.append(f"save: {e!r}")
            if snap.exists():
                try:
                    loaded = RingBuffer.load(snap)
                    check(loaded.obs_view(), loaded.target_view())
                    stats["loads"] += 1
                except Exception as e:
                    failures.append(f"load of a saved snapshot: {e!r}")

    def chaos() -> None:
        rng = random.Random(1)
        while not stop.wait(rng.uniform(0.5, 2.0)):
            if rng.random() < 0.5:
                store.clear()  # concurrently with the saver's copies
            w = rng.randrange(args.writers)
            child = writers[w]
            if rng.random() < 0.3:
                child.kill()
                child.wait()
                writers[w] = spawn(w + 100 * (stats["kills"] + 1))
                stats["kills"] += 1
            else:
                child.send_signal(signal.SIGSTOP)
                stop.wait(rng.uniform(0.2, 3 * args.wait_timeout))
                child.send_signal(signal.SIGCONT)
                stats["stops"] += 1

    threads = [threading.Thread(target=saver), threading.Thread(target=chaos)]
    for t in threads:
        t.start()
    end = time.monotonic() + args.seconds
    try:
        while time.monotonic() < end and not failures:
            if len(store) < 64:
                time.sleep(0.01)
                continue
            try:
                check(*store.sample(64))
                check(*store.sample_recent(32, 64))
                o, t, _ = store.sample_sequences(4, 8)
                check(o, t)
                stats["samples"] += 3
            except ValueError as e:
                # A concurrent clear left fewer rows than asked for (or no window yet).
                if not any(m in str(e) for m in AFTER_CLEAR):
                    failures.append(f"sample: {e}")
            except Exception as e:
                failures.append(f"sample: {e!r}")
            for w, child in writers.items():
                if child.poll() not in (None, -signal.SIGKILL):
                    err = child.stderr.read() if child.stderr else ""
                    failures.append(f"writer {w} died: {child.returncode}: {err}")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
            if t.is_alive():
                failures.append(f"{t.name} hung")
        for child in writers.values():
            child.send_signal(signal.SIGCONT)
            child.kill()
            child.wait()
    timeouts = sum(
        (c.stdout.read() if c.stdout else "").count("timeout:") for c in writers.values()
    )
    log.info(
        "soak %.0f s, %d writers, capacity %d: %s, writer timeouts (alive writers only) %d",
        args.seconds,
        args.writers,
        args.capacity,
        stats,
        timeouts,
    )
    for f in failures:
        log.error("FAIL %s", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
