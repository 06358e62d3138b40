"""How a worker's segments reach the store: the three collection backends.

* ``"thread"``: worker threads step their envs and all call ``store.add`` at once;
* ``"process"``: worker processes step their envs and stream segments back to their own
  writer thread in the parent (env stepping runs in parallel, the writes still arrive from
  several threads at once; the processes are forked where the platform allows, which pays off
  only for long or expensive collections);
* ``"shared"``: worker processes open the memory-mapped file of a file-backed store
  (``RingBuffer.open``) and add their own rows; only counts travel back to the parent.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import threading
from typing import Any, NamedTuple

import numpy as np

from eaml_ssm.collect.steps import Job, Segment, run_job

BACKENDS = ("thread", "process", "shared")


class _Written(NamedTuple):
    """What a worker process that writes into the shared store reports of one segment."""

    rows: int
    episode_done: bool

    @classmethod
    def of(cls, seg: Segment) -> _Written:
        return cls(int(seg.obs.shape[0]), seg.episode_done)


class Counter:
    def __init__(self, bar: Any) -> None:
        self.lock = threading.Lock()
        self.bar = bar
        self.rows = self.episodes = self.segments = 0

    def segment(self, done: _Written) -> None:
        with self.lock:
            self.rows += done.rows
            self.segments += 1
            self.episodes += int(done.episode_done)

    def progress(self, k: int) -> None:
        if self.bar is not None:
            with self.lock:
                self.bar.update(k)


def _write(store: Any, seg: Segment) -> _Written:
    n = seg.obs.shape[0]
    store.add(
        seg.obs,
        seg.target,
        task_id=seg.task_id,
        episode_id=seg.episode_id,
        step=np.arange(seg.first_step, seg.first_step + n, dtype=np.int64),
    )
    return _Written.of(seg)


def _consume(store: Any, item: Segment | _Written | int, counter: Counter) -> None:
    """Count one item of a worker's stream; a segment is written into `store` first."""
    if isinstance(item, int):
        counter.progress(item)
    else:
        counter.segment(_write(store, item) if isinstance(item, Segment) else item)


def _thread_worker(store: Any, job: Job, counter: Counter, errors: list[BaseException]) -> None:
    try:
        for item in run_job(job):
            _consume(store, item, counter)
    except BaseException as exc:  # re-raised in the caller's thread
        errors.append(exc)


def _process_main(job: Job, out: Any, shared_path: str | None) -> None:
    """A worker process: stream segments to the parent, or, given `shared_path`, write them
    into that file-backed store itself and send only their sizes (and progress)."""
    try:
        store = None if shared_path is None else _open_shared(shared_path)
        for item in run_job(job):
            out.put(
                _write(store, item) if store is not None and isinstance(item, Segment) else item
            )
        out.put(None)
    except BaseException as exc:
        out.put(RuntimeError(f"collection worker failed: {exc!r}"))


def _open_shared(path: str) -> Any:
    """Map the file-backed store at `path` in this process (`RingBuffer.open`)."""
    import rust_buffer

    return rust_buffer.RingBuffer.open(path)


def _process_receiver(
    store: Any, out: Any, proc: Any, counter: Counter, errors: list[BaseException]
) -> None:
    try:
        while True:
            try:
                item = out.get(timeout=1.0)
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(
                        f"collection worker process {proc.pid} died (exit code {proc.exitcode})"
                    ) from None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            _consume(store, item, counter)
    except BaseException as exc:
        errors.append(exc)


def shared_file(store: Any, backend: str) -> str | None:
    """The file of a file-backed store for ``backend="shared"``; None for other backends."""
    if backend != "shared":
        return None
    path = getattr(store, "path", None)
    if path is None:
        raise ValueError(
            "backend='shared' needs a file-backed store made by "
            "rust_buffer.RingBuffer.create(path, ...) (or build_store(..., path=...)); "
            "got an in-memory store"
        )
    return str(path)


def run_threads(store: Any, jobs: list[Job], counter: Counter, errors: list) -> None:
    if len(jobs) == 1:
        _thread_worker(store, jobs[0], counter, errors)
        return
    threads = [
        threading.Thread(target=_thread_worker, args=(store, j, counter, errors), daemon=True)
        for j in jobs
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()


def run_processes(
    store: Any,
    jobs: list[Job],
    counter: Counter,
    errors: list,
    shared_path: str | None = None,
) -> None:
    """One process per job; a receiver thread per process writes its segments into `store`,
    or, with `shared_path`, only counts what the process wrote into the shared file itself."""
    # fork (as torch's DataLoader does on Linux): the children start at once and only step
    # gymnasium envs; spawn would re-import the caller's __main__ (often torch) in each one.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx: Any = mp.get_context(method)
    outs = [ctx.Queue(maxsize=256) for _ in jobs]
    procs = [
        ctx.Process(target=_process_main, args=(j, q, shared_path), daemon=True)
        for j, q in zip(jobs, outs, strict=True)
    ]
    receivers = [
        threading.Thread(target=_process_receiver, args=(store, q, p, counter, errors), daemon=True)
        for q, p in zip(outs, procs, strict=True)
    ]
    for p in procs:
        p.start()
    for r in receivers:
        r.start()
    for r in receivers:
        r.join()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():
            p.terminate()
