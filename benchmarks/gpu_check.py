"""The GPU check: every CUDA test and the GPU figures of the data path, in one command.

    python benchmarks/gpu_check.py dist/rust_buffer-*.whl --out gpu-check    (or gpu_check.sh)

Takes a prebuilt abi3 wheel of the store, installs it with ``pip install --no-deps``, and
writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Sections (each timed, each
its own entry; the check fails when any fails):

1. ``cuda_tests``: ``pytest -m gpu``; fails when CUDA is missing, when a CUDA test fails, or
   when one is skipped;
2. ``meta_train``: meta-training steps/s with the one feed (pinned, overlapped) vs a naive
   feed (``from_numpy`` + blocking ``.to``), at the default and at 4x meta-batch size, and
   the share of a meta-step the GPU waits for its batch (CUDA events around the batch);
3. ``adapt``: adaptation-step latency (``update_step`` with replay) through the feed vs a
   naive replay, at the default and 4x replay batch;
4. ``h2d``: pinned host-to-device GB/s of the feed's copies vs torch's own pinned copy;
5. ``loader_stress``: rows that encode their own index, checked in every batch under a
   concurrent matmul on another stream, for ``cuda:0`` and ``pinned=False``;
6. ``torchrun``: ``torchrun --nproc_per_node=1`` meta-training with NCCL;
7. ``resume``: ``--resume`` from a CPU checkpoint on CUDA and from a CUDA one on CPU;
8. ``control``: ``eaml_ssm.control.control_timings(device)`` when that module exists.

``--dry-run`` runs the same logic on the CPU with tiny sizes and no install (the test suite
does, so the script cannot rot); it proves nothing about a GPU. Budget: <= 8 minutes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
Result = dict[str, Any]
SECTIONS = ("cuda_tests", "meta_train", "adapt", "h2d", "loader_stress", "torchrun", "resume",
            "control")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("wheel", nargs="?", help="prebuilt abi3 wheel of rust_buffer to install")
    p.add_argument("--out", default="gpu-check", help="folder for gpu_check.json and .md")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no install")
    p.add_argument("--skip", nargs="*", default=[], help="sections to leave out (by name)")
    args = p.parse_args(argv)
    unknown = sorted(set(args.skip) - set(SECTIONS))
    if unknown:
        p.error(f"unknown sections {unknown}; expected some of {list(SECTIONS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Result] = {}
    if args.dry_run:
        device = torch.device("cpu")
    else:
        if not args.wheel:
            p.error("give the wheel to install (or --dry-run)")
        if not torch.cuda.is_available():  # a GPU check without a GPU fails, never skips
            report["cuda"] = {"ok": False, "error": "CUDA is not available to torch"}
            return _finish(out, report, dry=False)
        report["install"] = _section(lambda: _install(args.wheel))
        if not report["install"]["ok"]:
            return _finish(out, report, dry=False)
        device = torch.device("cuda", torch.cuda.current_device())
    small = args.dry_run
    report["environment"] = _section(lambda: _environment(device))
    data = _data(small)
    sections: dict[str, Callable[[], Result]] = {
        "cuda_tests": lambda: _cuda_tests(out, collect_only=small),
        "meta_train": lambda: _meta_train(data, device, small),
        "adapt": lambda: _adapt(data, device, small),
        "h2d": lambda: _h2d(device, small),
        "loader_stress": lambda: _loader_stress(device, small),
        "torchrun": lambda: _torchrun(out, device, small),
        "resume": lambda: _resume(out, device, small),
        "control": lambda: _control(device),
    }
    for name, fn in sections.items():
        if name not in args.skip:
            report[name] = _section(fn)
    return _finish(out, report, dry=small)


# --- plumbing ---------------------------------------------------------------------------------


def _section(fn: Callable[[], Result]) -> Result:
    t0 = time.perf_counter()
    try:
        res = fn()
        res.setdefault("ok", True)
    except Exception as exc:  # a failed section is reported, the others still run
        res = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    res["seconds"] = round(time.perf_counter() - t0, 2)
    return res


def _finish(out: Path, report: dict[str, Result], *, dry: bool) -> int:
    ok = all(r.get("ok", False) for r in report.values())
    payload = {"ok": ok, "dry_run": dry, "sections": report}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    lines = [f"# GPU check ({'dry run on CPU' if dry else 'CUDA'}): {'PASS' if ok else 'FAIL'}", ""]
    for name, res in report.items():
        status = "ok" if res.get("ok") else "FAIL"
        body = {k: v for k, v in res.items() if k not in ("ok",)}
        lines.append(
            f"## {name}: {status}\n\n```\n{json.dumps(body, indent=1, default=str)}\n```\n"
        )
    (out / "gpu_check.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if ok else 1


def _run(
    cmd: list[str], timeout: float, env: dict[str, str] | None = None, cwd: Path = ROOT
) -> str:
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    res = subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if res.returncode != 0:
        tail = (res.stdout + res.stderr)[-2000:]
        raise RuntimeError(f"{' '.join(cmd)} exited {res.returncode}:\n{tail}")
    return res.stdout


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _install(wheel: str) -> Result:
    """pip install --no-deps the wheel, and make its extension the one this checkout uses.

    Commands run from the repository root, where the source package ``rust_buffer/`` (Python
    files only: the built extension is not committed) shadows the installed one; the wheel's
    compiled ``_rust_buffer`` is copied next to it, so tests and runs use the wheel's binary.
    """
    wheel_path = str(Path(wheel).resolve())
    with tempfile.TemporaryDirectory() as tmp:  # away from the checkout's rust_buffer/
        cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall"]
        _run([*cmd, wheel_path], 180, cwd=Path(tmp))
        where = "import rust_buffer._rust_buffer as m; print(m.__file__)"
        origin = Path(_run([sys.executable, "-c", where], 60, cwd=Path(tmp)).strip())
    shutil.copy2(origin, ROOT / "rust_buffer" / origin.name)
    sys.path.insert(0, str(ROOT))  # eaml_ssm from this checkout, for this process too
    import rust_buffer

    return {"wheel": wheel_path, "extension": origin.name, "rust_buffer": rust_buffer.__version__}


def _environment(device: torch.device) -> Result:
    env: Result = {"torch": torch.__version__, "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


# --- 1. CUDA tests ----------------------------------------------------------------------------


def _cuda_tests(out: Path, *, collect_only: bool) -> Result:
    junit = out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rs", f"--junitxml={junit}"]
    if collect_only:
        listing = _run([sys.executable, "-m", "pytest", "-m", "gpu", "--collect-only", "-q"], 120)
        names = [line for line in listing.splitlines() if "::" in line]
        return {"collected": len(names), "note": "dry run: collected only"}
    try:
        _run(cmd, 240)
    finally:
        counts = _junit_counts(junit) if junit.exists() else {}
    res: Result = dict(counts)
    if counts.get("tests", 0) == 0:
        return {**res, "ok": False, "error": "no CUDA test ran"}
    if counts.get("skipped", 0):
        return {**res, "ok": False, "error": "CUDA tests were skipped on a CUDA machine"}
    return res


def _junit_counts(path: Path) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    assert suite is not None
    return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}


# --- shared data ------------------------------------------------------------------------------


class _Data:
    def __init__(self, cfg: Any, store: Any, normalizer: Any, family: Any) -> None:
        self.cfg, self.store, self.normalizer, self.family = cfg, store, normalizer, family


def _data(small: bool) -> _Data:
    from eaml_ssm.collect import build_store
    from eaml_ssm.config import RunConfig
    from eaml_ssm.features import Normalizer
    from eaml_ssm.tasks import draw_tasks, get_family

    # the default run's sizes, with enough tasks for the 4x meta-batch
    cfg = RunConfig(num_tasks=8 if small else 32, steps_per_task=200 if small else 1000)
    if small:
        cfg = dataclasses.replace(cfg, meta_batch_size=2)
    tasks = draw_tasks(cfg.env_name, cfg.num_tasks, seed=0, split="train")
    store, _ = build_store(tasks, cfg.steps_per_task, store_seed=0, seed=0, progress=False)
    return _Data(cfg, store, Normalizer.from_store(store), get_family(cfg.env_name))


def _naive_tasks(data: _Data, device: torch.device, t: int, k: int) -> Any:
    """The feed before this project had one: sample, from_numpy, blocking .to."""
    from eaml_ssm.feed import draw_seed
    from eaml_ssm.maml import TaskBatch

    cfg, norm = data.cfg, data.normalizer
    so, st, qo, qt, _ = data.store.sample_tasks(
        t, cfg.support_len, cfg.query_len, contiguous=True, seed=draw_seed(0, k)
    )

    def seq(a: np.ndarray, target: bool) -> torch.Tensor:
        x = torch.from_numpy(a)
        x = norm.normalize_targets(x) if target else norm.normalize_inputs(x)
        return x.unsqueeze(1).to(device)

    return TaskBatch(seq(so, False), seq(st, True), seq(qo, False), seq(qt, True))


# --- 2. meta-training -------------------------------------------------------------------------


def _meta_train(data: _Data, device: torch.device, small: bool) -> Result:
    from eaml_ssm.feed import StoreLoader
    from eaml_ssm.hooks import meta_batch
    from eaml_ssm.models import build_maml, build_model

    steps = 3 if small else 30
    res: Result = {}
    for scale in (1, 4):
        cfg = dataclasses.replace(data.cfg, meta_batch_size=data.cfg.meta_batch_size * scale)
        t = cfg.meta_batch_size
        for kind in ("feed", "naive"):
            torch.manual_seed(0)
            model = build_model(cfg, data.family, device)
            maml = build_maml(cfg, model)
            loader = StoreLoader(data.store, device, data.normalizer, seed=0)
            waits, totals = [], []
            t0 = time.perf_counter()
            for k in range(steps + 2):  # two warm-up steps
                if k == 2:
                    _sync(device)
                    t0 = time.perf_counter()
                marks = _marks(device)
                marks.start()
                if kind == "feed":
                    batch = meta_batch(cfg, loader)
                else:
                    batch = _naive_tasks(data, device, t, k)
                marks.mid()
                maml.meta_update(batch)
                marks.end()
                if k >= 2:
                    w, tot = marks.read()
                    waits.append(w)
                    totals.append(tot)
            _sync(device)
            seconds = time.perf_counter() - t0
            loader.close()
            res[f"{kind} x{scale}"] = {
                "meta_batch_size": t,
                "steps_per_s": round(steps / seconds, 2),
                "data_wait_share": round(float(np.sum(waits) / np.sum(totals)), 4),
            }
    for scale in (1, 4):
        feed, naive = res[f"feed x{scale}"], res[f"naive x{scale}"]
        res[f"speedup x{scale}"] = round(feed["steps_per_s"] / naive["steps_per_s"], 3)
    res["target_wait_under_5pct"] = res["feed x1"]["data_wait_share"] < 0.05
    return res


class _marks:
    """Start / batch-ready / step-end marks: CUDA events on the compute stream, else clocks."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.t: list[Any] = []

    def _mark(self) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.t.append(ev)
        else:
            self.t.append(time.perf_counter())

    start = mid = end = _mark

    def read(self) -> tuple[float, float]:
        a, b, c = self.t
        if self.cuda:
            c.synchronize()
            return a.elapsed_time(b), a.elapsed_time(c)
        return b - a, c - a


# --- 3. adaptation latency --------------------------------------------------------------------


class _NaiveReplay:
    """Replay before the feed: the store's windows, from_numpy, blocking .to, normalize."""

    def __init__(self, store: Any, norm: Any, device: torch.device) -> None:
        self.store, self.norm, self.device, self.k = store, norm, device, 0

    def __len__(self) -> int:
        return len(self.store)

    def windows(self, strategy: str, b: int, length: int, query: Any = None, **_: Any) -> Any:
        from eaml_ssm.feed import draw_seed

        self.k += 1
        obs, tgt, _ = self.store.sample_windows(b, length, seed=draw_seed(1, self.k))
        x = self.norm.normalize_inputs(torch.from_numpy(obs)).to(self.device)
        y = self.norm.normalize_targets(torch.from_numpy(tgt)).to(self.device)
        return x, y


def _adapt(data: _Data, device: torch.device, small: bool) -> Result:
    from eaml_ssm.adaptation import Adapter
    from eaml_ssm.models import build_maml, build_model

    cfg = data.cfg
    torch.manual_seed(0)
    model = build_model(cfg, data.family, device)
    maml = build_maml(cfg, model)
    repeats = 3 if small else 30
    x = torch.randn(1, cfg.adapt_every, data.family.input_dim, device=device)
    y = torch.randn(1, cfg.adapt_every, data.family.target_dim, device=device)
    res: Result = {}
    for scale in (1, 4):
        for kind in ("feed", "naive"):
            adapter = Adapter.from_maml(
                maml,
                data.store,
                device,
                transform=data.normalizer,
                experience_batch_size=cfg.experience_batch_size * scale,
                sequence_length=cfg.support_len + cfg.query_len,
                burn_in=cfg.support_len,
                seed=0,
            )
            if kind == "naive":
                adapter.experience = _NaiveReplay(data.store, data.normalizer, device)  # type: ignore[assignment]
            for _ in range(2):
                adapter.update_step(x, y)
            _sync(device)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                adapter.update_step(x, y)
                _sync(device)
                times.append(time.perf_counter() - t0)
            res[f"{kind} x{scale}"] = {
                "replay_batch": cfg.experience_batch_size * scale,
                "update_step_ms": round(1e3 * float(np.median(times)), 3),
            }
    return res


# --- 4. pinned host-to-device bandwidth -------------------------------------------------------


def _h2d(device: torch.device, small: bool) -> Result:
    import rust_buffer
    from eaml_ssm.feed import StoreLoader

    rows = 4096 if small else 1 << 18  # 256k rows x (4 + 4) floats x 4 B = 8 MB per batch
    store = rust_buffer.RingBuffer(rows, 4, 4, seed=0)
    store.add(np.ones((rows, 4), np.float32), np.ones((rows, 4), np.float32))
    if device.type != "cuda":
        with StoreLoader(store, device, seed=0) as loader:
            loader.batch(rows)
        return {"note": "dry run: no pinned copies on CPU"}
    with StoreLoader(store, device, seed=0, time_copies=True) as loader:
        for _ in range(12):
            loader.batch(rows)
        _sync(device)
        feed = loader.copy_rates()[2:]
    src = torch.empty(rows * 8, pin_memory=True)
    torch_rates = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        src.to(device, non_blocking=True)
        end.record()
        end.synchronize()
        torch_rates.append(src.numel() * 4 / (start.elapsed_time(end) / 1e3))
    f, t = float(np.median(feed)) / 1e9, float(np.median(torch_rates)) / 1e9
    return {
        "feed_GBps": round(f, 2),
        "torch_pinned_GBps": round(t, 2),
        "ratio": round(f / t, 3),
        "target_at_least_80pct": f / t >= 0.8,
    }


# --- 5. loader stress -------------------------------------------------------------------------


def _loader_stress(device: torch.device, small: bool) -> Result:
    import rust_buffer
    from eaml_ssm.feed import StoreLoader

    n = 10_000 if small else 200_000
    idx = np.arange(n, dtype=np.float32)
    store = rust_buffer.RingBuffer(n, 4, 2, seed=0)
    store.add(np.repeat(idx[:, None], 4, 1), np.stack([idx, -idx], 1))  # a row names itself
    modes = [("cpu", False)] if device.type != "cuda" else [("cuda:0", True), ("cuda:0", False)]
    res: Result = {}
    batches = 5 if small else 400
    for dev, pinned in modes:
        bad = 0
        stream = torch.cuda.Stream() if device.type == "cuda" else None
        big = torch.randn(4096, 4096, device=device) if device.type == "cuda" else None
        with StoreLoader(store, dev, pinned=pinned, seed=0) as loader:
            for _ in range(batches):
                if stream is not None and big is not None:
                    with torch.cuda.stream(stream):
                        big @ big  # heavy concurrent work on another stream
                x, y = loader.batch(1024)
                ok = (
                    (x == x[:, :1]).all() & (y[:, 0] == x[:, 0]).all() & (y[:, 1] == -x[:, 0]).all()
                )
                bad += int(not bool(ok))
        res[f"{dev} pinned={pinned}"] = {"batches": batches, "bad": bad}
        if bad:
            res["ok"] = False
    return res


# --- 6. torchrun (NCCL) and 7. resume across devices ------------------------------------------


def _train_cmd(out: Path, name: str, device: str, epochs: int, *extra: str) -> list[str]:
    return [
        "-m", "eaml_ssm", "train", "--quiet", "--device", device, "--out", str(out),
        "--name", name, "--num_tasks", "4", "--steps_per_task", "120", "--meta_batch_size", "2",
        "--num_epochs", str(epochs), "--hidden_dim", "16", "--state_dim", "4", *extra,
    ]  # fmt: skip


def _torchrun(out: Path, device: torch.device, small: bool) -> Result:
    if device.type != "cuda":
        return {"note": "dry run: NCCL needs CUDA; not run"}
    runs = out / "runs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1"]
    _run([*cmd, *_train_cmd(runs, "nccl", "cuda", 3, "--distributed")], 180)  # -m eaml_ssm
    info = json.loads((runs / "nccl" / "distributed.json").read_text())
    return {"backend": info["backend"], "device": info["device"], "ok": info["backend"] == "nccl"}


def _resume(out: Path, device: torch.device, small: bool) -> Result:
    other = "cuda" if device.type == "cuda" else "cpu"
    res: Result = {}
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        for first, second in (("cpu", other), (other, "cpu")):
            name = f"{first}-to-{second}"
            _run([sys.executable, *_train_cmd(Path(tmp), name, first, 2)], 180)
            _run([sys.executable, *_train_cmd(Path(tmp), name, second, 4, "--resume")], 180)
            lines = (Path(tmp) / name / "metrics.jsonl").read_text().splitlines()
            rows = [json.loads(x) for x in lines if x.strip()]
            steps = [r["step"] for r in rows if r["kind"] == "train"]
            res[name] = {"train_steps_logged": steps}
            if steps != [0, 1, 2, 3]:
                res["ok"] = False
    return res


# --- 8. control (optional) --------------------------------------------------------------------


def _control(device: torch.device) -> Result:
    try:
        from eaml_ssm.control import control_timings  # type: ignore[attr-defined]
    except ImportError:
        return {"note": "eaml_ssm.control.control_timings not present; skipped"}
    return {"timings": control_timings(device)}


if __name__ == "__main__":
    sys.exit(main())
