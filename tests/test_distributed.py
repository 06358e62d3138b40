"""Distributed meta-training (eaml_ssm.distributed) on CPU with gloo.

Multi-rank tests spawn real processes that join a process group through the same environment
variables torchrun sets (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK). The oracle
for the 2-rank run is plain ``MetaMAML.meta_update`` on the whole meta-batch in one process.

Shapes: see the glossary in eaml_ssm/__init__.py (t tasks per meta-batch, s support steps,
q query steps; here d = 3 input features, o = 2 target features).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing as mp
import os
import socket
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from eaml_ssm import distributed as D
from eaml_ssm.config import RunConfig
from eaml_ssm.features import Normalizer
from eaml_ssm.maml import MetaMAML
from eaml_ssm.ssm import SSM

rust_buffer = pytest.importorskip("rust_buffer")

NUM_TASKS, META_BATCH, SUPPORT, QUERY, STEPS, SEED = 6, 4, 6, 6, 3, 11
OBS_DIM, TARGET_DIM = 3, 2
JOIN_S = 120  # hang guard for spawned ranks (not a timing assertion)


# --- fixtures shared with the spawned ranks (module level, so spawn can import them) ---------


def make_store(task_ids: list[int], *, short: frozenset = frozenset()) -> Any:
    """A store with 2 episodes of 30 steps of linear dynamics for each task in ``task_ids``
    (12 episodes of 5 steps for the tasks in ``short``).

    Rows of a task are the same, written in the same order, whichever store holds it (the
    store's window sampler numbers a task's windows in the order they were written, as one
    collector writes a task's episodes in the pipeline).
    """
    store = rust_buffer.RingBuffer(max(1, 60 * len(task_ids)), OBS_DIM, TARGET_DIM, seed=0)
    episodes = []
    for tid in task_ids:
        rng = np.random.default_rng([SEED, tid])
        a = rng.normal(size=(OBS_DIM, TARGET_DIM))  # (d, o) this task's dynamics
        n_ep, length = (12, 5) if tid in short else (2, 30)
        for ep in range(n_ep):
            x = rng.normal(size=(length, OBS_DIM)).astype(np.float32)  # (len, d)
            y = (x @ a + 0.5 + 0.01 * rng.normal(size=(length, TARGET_DIM))).astype(np.float32)
            episodes.append((x, y, tid, tid * 100 + ep))
    for x, y, tid, eid in episodes:
        steps = np.arange(x.shape[0], dtype=np.int64)
        store.add(x, y, task_id=tid, episode_id=eid, step=steps)
    return store


def shard_samplers(
    world: int, support: int, query: int, short: frozenset = frozenset()
) -> list[D.ShardedTaskSampler]:
    """One sampler per rank without a process group (eligibility merged by hand)."""
    out = []
    for r in range(world):
        store = make_store(D.shard_tasks(NUM_TASKS, r, world), short=short)
        out.append(D.ShardedTaskSampler(store, NUM_TASKS, support, query, SEED, r, world))
    eligible = np.logical_or.reduce([s.local_eligibility() for s in out])
    for s in out:
        s.set_eligible(eligible)
    return out


def make_maml() -> MetaMAML:
    torch.manual_seed(SEED)
    model = SSM(state_dim=4, input_dim=OBS_DIM, output_dim=TARGET_DIM, hidden_dim=8, num_layers=1)
    return MetaMAML(model, inner_lr=0.05, outer_lr=0.01, learn_inner_lr=True, grad_clip_norm=1.0)


def weights(maml: MetaMAML) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone() for k, v in maml.model.state_dict().items()}
    out.update({f"lr.{k}": v.detach().clone() for k, v in maml.inner_lrs.items()})
    return out


def train_ranked(ctx: D.DistributedContext, steps: int = STEPS) -> tuple[Any, list[float]]:
    """This rank's share of the tasks, global normalizer, `steps` distributed meta-steps."""
    store = make_store(D.shard_tasks(NUM_TASKS, ctx.rank, ctx.world_size))
    norm = D.global_normalizer(store, ctx)
    sampler = D.ShardedTaskSampler(store, NUM_TASKS, SUPPORT, QUERY, SEED, ctx.rank, ctx.world_size)
    sampler.share_eligibility(ctx)
    maml = make_maml()
    D.broadcast_parameters([*maml.model.parameters(), *maml.inner_lrs.values()], ctx)
    losses = []
    for step in range(steps):
        if ctx.rank == 1 and os.environ.get("EAML_TEST_DIE_AT") == str(step):
            os._exit(3)  # a rank that dies without a word
        local = sampler.local_tasks(step, META_BATCH)
        batch = sampler.batch(step, local, norm, ctx.device) if local else None
        losses.append(D.distributed_meta_step(maml, batch, len(local), META_BATCH, ctx))
    D.assert_same_across_ranks(maml.meta_parameters(), ctx)
    return maml, losses


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tiny_config(out: Path, **overrides: Any) -> RunConfig:
    """A pipeline config small enough for a test: 4 CartPole tasks, a tiny SSM."""
    base = RunConfig(
        out=str(out), name="run", num_tasks=4, steps_per_task=150, num_epochs=2,
        meta_batch_size=3, support_len=8, query_len=8, state_dim=4, hidden_dim=8,
        num_layers=1, device="cpu", quiet=True,
    )  # fmt: skip
    return dataclasses.replace(base, **overrides)


def _rank_main(rank: int, world: int, port: int, out: str, extra_env: dict[str, str]) -> None:
    """One rank: the synthetic equivalence run, then (unless dying) `train --distributed`."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        **extra_env,
    )
    torch.set_num_threads(1)
    ctx = D.DistributedContext()
    try:
        ctx = D.init_from_env("cpu")
        maml, losses = train_ranked(ctx)
        probe = torch.full((3,), float(rank))  # differs across ranks
        try:
            D.assert_same_across_ranks([probe], ctx, "probe")
            mismatch = ""
        except RuntimeError as exc:
            mismatch = str(exc)
        D.broadcast_parameters([probe], ctx)  # now rank 0's values everywhere
        result = {"weights": weights(maml), "losses": losses, "mismatch": mismatch, "probe": probe}
        torch.save(result, Path(out) / f"rank{rank}.pt")
        D.run("train", tiny_config(Path(out)))  # the CLI's entry point; leaves the group
    except BaseException as exc:
        msg = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        (Path(out) / f"rank{rank}.err").write_text(msg)
        raise SystemExit(1) from exc
    finally:
        D.shutdown(ctx)


def spawn_ranks(world: int, out: Path, extra_env: dict[str, str] | None = None) -> list[int]:
    """Run `world` ranks to completion; returns their exit codes (fails the test on a hang)."""
    spawn = mp.get_context("spawn")
    port = _free_port()
    procs = [
        spawn.Process(target=_rank_main, args=(r, world, port, str(out), extra_env or {}))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(JOIN_S)
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} did not finish (hang)"
    return [int(p.exitcode or 0) for p in procs]


# --- multi-process tests ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Spawn 2 ranks once; both tests below read what they wrote."""
    out = tmp_path_factory.mktemp("two_ranks")
    codes = spawn_ranks(2, out)
    errors = [f.read_text() for f in sorted(out.glob("*.err"))]
    assert codes == [0, 0], errors
    return out


def test_two_ranks_match_one_rank_and_each_other(two_rank_run: Path) -> None:
    r0, r1 = (torch.load(two_rank_run / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for name in r0["weights"]:  # identical across ranks, bit for bit
        assert torch.equal(r0["weights"][name], r1["weights"][name]), name
    assert r0["losses"] == r1["losses"]
    for r in (r0, r1):  # the consistency check catches a difference; broadcast removes it
        assert "the probe differ across ranks (max spread 1)" in r["mismatch"]
        assert torch.equal(r["probe"], torch.zeros(3))

    # Oracle: one process, the whole store, plain MetaMAML.meta_update on the global batch.
    store = make_store(list(range(NUM_TASKS)))
    norm = Normalizer.from_store(store)
    sampler = D.ShardedTaskSampler(store, NUM_TASKS, SUPPORT, QUERY, SEED)
    maml = make_maml()
    ref_losses = []
    for step in range(STEPS):
        tasks = sampler.local_tasks(step, META_BATCH)
        assert len(tasks) == META_BATCH
        ref_losses.append(maml.meta_update(sampler.batch(step, tasks, norm, torch.device("cpu"))))
    np.testing.assert_allclose(r0["losses"], ref_losses, rtol=1e-5)
    start = weights(make_maml())
    moved = 0.0
    for name, value in weights(maml).items():
        torch.testing.assert_close(r0["weights"][name], value, rtol=1e-5, atol=1e-5)
        moved = max(moved, float((value - start[name]).abs().max()))
    assert moved > 1e-3  # the steps really changed the weights


def test_train_on_two_ranks_resumes_on_one(two_rank_run: Path, clean_env: Any) -> None:
    run = two_rank_run / "run"
    # rank 0 alone wrote the run folder: one collect row, one row per meta-step
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint.pt", "config.json", "distributed.json", "metrics.jsonl"} <= names
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["collect", "train", "train"]
    assert rows[0]["world_size"] == 2
    assert json.loads((run / "distributed.json").read_text())["world_size"] == 2

    # continue the 2-rank run on 1 rank to step 4 == 4 uninterrupted steps on 1 rank
    cfg = tiny_config(two_rank_run, num_epochs=4)
    assert D.run("train", cfg, resume=True) == 0
    assert D.run("train", dataclasses.replace(cfg, name="ref")) == 0
    got = torch.load(run / "checkpoint.pt", weights_only=True)
    ref = torch.load(two_rank_run / "ref" / "checkpoint.pt", weights_only=True)
    assert got["step"] == ref["step"] == 4
    np.testing.assert_allclose(got["losses"], ref["losses"], rtol=1e-5)
    for name, value in ref["model"].items():
        torch.testing.assert_close(got["model"][name], value, rtol=1e-5, atol=1e-5)
    for name, value in ref["normalizer"].items():
        torch.testing.assert_close(got["normalizer"][name], value)
    steps = [r["step"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
             if r["kind"] == "train"]  # fmt: skip
    assert steps == [0, 1, 2, 3]


def test_dying_rank_gives_clear_error(tmp_path: Path) -> None:
    codes = spawn_ranks(2, tmp_path, {"EAML_TEST_DIE_AT": "1", D.TIMEOUT_ENV: "20"})
    assert codes[1] == 3
    assert codes[0] == 1
    msg = (tmp_path / "rank0.err").read_text()
    assert msg.startswith("RankFailure:"), msg
    assert "rank 0/2" in msg and "another rank has probably died" in msg


# --- single-process tests -----------------------------------------------------------------------


def test_single_process_step_equals_meta_update() -> None:
    store = make_store(list(range(NUM_TASKS)))
    norm = Normalizer.from_store(store)
    sampler = D.ShardedTaskSampler(store, NUM_TASKS, SUPPORT, QUERY, SEED)
    a, b = make_maml(), make_maml()
    ctx = D.DistributedContext()
    for step in range(2):
        tasks = sampler.local_tasks(step, META_BATCH)
        batch = sampler.batch(step, tasks, norm, torch.device("cpu"))
        la = a.meta_update(batch)
        lb = D.distributed_meta_step(b, batch, len(tasks), META_BATCH, ctx)
        assert la == pytest.approx(lb, rel=1e-6)
    for name, value in weights(a).items():
        assert torch.equal(value, weights(b)[name]), name


def test_sampler_batches_do_not_depend_on_world_size() -> None:
    full = D.ShardedTaskSampler(make_store(list(range(NUM_TASKS))), NUM_TASKS, 5, 4, SEED)
    shards = shard_samplers(3, 5, 4)
    for step in range(4):
        glob = [int(t) for t in full.global_tasks(step, META_BATCH)]
        assert len(set(glob)) == META_BATCH
        assert full.local_tasks(step, META_BATCH) == glob
        union = sorted(t for s in shards for t in s.local_tasks(step, META_BATCH))
        assert union == sorted(glob)
        for s in shards:
            tasks = s.local_tasks(step, META_BATCH)
            if not tasks:
                continue
            mine = s.arrays(step, tasks)
            ref = full.arrays(step, tasks)
            for got, want in zip(mine, ref, strict=True):
                np.testing.assert_array_equal(got, want)
    # the world size divides t: every rank serves exactly t / world size tasks of every batch
    halves = shard_samplers(2, 5, 4)
    for step in range(10):
        assert [len(h.local_tasks(step, META_BATCH)) for h in halves] == [2, 2]
        assert halves[0].load(META_BATCH, [step]) == 1.0
    # stratified: slot i draws from {i, i + t, ...}; every task comes up
    eight = D.ShardedTaskSampler(make_store(list(range(8))), 8, 5, 4, SEED)
    drawn = np.stack([eight.global_tasks(k, 4) for k in range(40)])  # (40, t)
    assert np.all(drawn % 4 == np.arange(4))
    assert sorted(set(drawn.ravel().tolist())) == list(range(8))
    # a window is consecutive steps of one episode: support (5) then query (4)
    store = make_store([0])
    so, st, qo, qt = D.ShardedTaskSampler(store, 1, 5, 4, SEED).arrays(2, [0])
    window = np.concatenate([so[0], qo[0]])  # (9, d) rows of the store, in order
    slots = [int(np.flatnonzero((store.obs_view() == row).all(1))[0]) for row in window]
    assert len(set(store.episode_id_view()[slots].tolist())) == 1
    assert np.all(np.diff(store.step_view()[slots]) == 1)
    np.testing.assert_array_equal(np.concatenate([st[0], qt[0]]), store.target_view()[slots])


def test_tasks_without_a_window_are_never_drawn() -> None:
    short = frozenset({1, 5})  # class 1 mod 4 = {1, 5}: empty, its slot draws elsewhere
    full = D.ShardedTaskSampler(
        make_store(list(range(NUM_TASKS)), short=short), NUM_TASKS, 5, 4, SEED
    )
    assert full.eligible is not None
    assert full.eligible.tolist() == [True, False, True, True, True, False]
    shards = shard_samplers(2, 5, 4, short)
    for step in range(20):
        glob = full.global_tasks(step, META_BATCH).tolist()
        assert len(set(glob)) == META_BATCH and not short & set(glob)
        union = sorted(t for s in shards for t in s.local_tasks(step, META_BATCH))
        assert union == sorted(glob)
    with pytest.raises(ValueError, match=r"must be in \[1, 4\]: 4 of 6 tasks have 9"):
        full.global_tasks(0, 5)
    with pytest.raises(ValueError, match="has no 9-step window"):
        shards[1].arrays(0, [1])
    unshared = D.ShardedTaskSampler(make_store([0, 2, 4]), NUM_TASKS, 5, 4, SEED, 0, 2)
    with pytest.raises(ValueError, match="share_eligibility"):
        unshared.global_tasks(0, 2)
    with pytest.raises(ValueError, match="disagrees with rank 0's own tasks"):
        unshared.set_eligible(np.zeros(NUM_TASKS, dtype=bool))
    with pytest.raises(ValueError, match=r"shape \(6,\)"):
        unshared.set_eligible(np.ones(3, dtype=bool))


def test_global_normalizer_merges_shards_exactly() -> None:
    full = make_store(list(range(NUM_TASKS)))
    ctx = D.DistributedContext()
    one = D.global_normalizer(full, ctx)
    ref = Normalizer.from_store(full)
    for k, v in ref.state_dict().items():
        assert torch.equal(one.state_dict()[k], v), k
    rows = torch.stack([D._moments(make_store(D.shard_tasks(NUM_TASKS, r, 2))) for r in (0, 1)])
    merged = D._merge_moments(rows, OBS_DIM, TARGET_DIM)
    in_mean, in_std = full.obs_view().mean(0, dtype=np.float64), full.obs_view().std(0)
    t_mean, t_std = full.target_view().mean(0, dtype=np.float64), full.target_view().std(0)
    for got, want in zip(merged, (in_mean, in_std, t_mean, t_std), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_shard_tasks_and_owner() -> None:
    assert D.shard_tasks(7, 0, 3) == [0, 3, 6]
    assert D.shard_tasks(7, 2, 3) == [2, 5]
    assert all(D.owner_of(t, 3) == r for r in range(3) for t in D.shard_tasks(7, r, 3))
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        D.shard_tasks(7, 3, 3)
    with pytest.raises(ValueError, match="num_tasks must be >= 0"):
        D.shard_tasks(-1, 0, 1)


_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in (*_TORCHRUN_VARS, D.TIMEOUT_ENV):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_init_without_torchrun_is_a_single_rank(clean_env: pytest.MonkeyPatch) -> None:
    ctx = D.init_from_env("cpu")
    assert (ctx.rank, ctx.world_size, ctx.active, ctx.is_main) == (0, 1, False, True)
    assert ctx.timeout_s == D.DEFAULT_TIMEOUT_S


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"RANK": "0", "WORLD_SIZE": "2"}, r"incomplete: \['MASTER_ADDR', 'MASTER_PORT'\]"),
        (
            {"RANK": "x", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "RANK must be an integer, got 'x'",
        ),
        (
            {"RANK": "2", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"},
            "need 0 <= RANK < WORLD_SIZE",
        ),
        (
            {"RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "h", "MASTER_PORT": "p"},
            "MASTER_PORT must be an integer",
        ),
        ({D.TIMEOUT_ENV: "-3"}, "must be > 0 seconds"),
        ({D.TIMEOUT_ENV: "soon"}, "must be a number of seconds"),
    ],
)
def test_init_rejects_bad_environment(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], match: str
) -> None:
    for k, v in env.items():
        clean_env.setenv(k, v)
    with pytest.raises(ValueError, match=match):
        D.init_from_env("cpu")


def test_bad_arguments() -> None:
    ctx = D.DistributedContext()
    maml = make_maml()
    with pytest.raises(ValueError, match="n_local <= n_total"):
        D.distributed_meta_step(maml, None, 3, 2, ctx)
    with pytest.raises(ValueError, match="None exactly when n_local == 0"):
        D.distributed_meta_step(maml, None, 1, 2, ctx)
    with pytest.raises(ValueError, match="device must be auto, cpu or cuda"):
        D.init_from_env("tpu")
    store = make_store([0, 1])
    with pytest.raises(ValueError, match=r"must be in \[1, 0\]: 0 of 2 tasks have 61"):
        D.ShardedTaskSampler(store, 2, 31, 30, SEED).global_tasks(0, 1)
    with pytest.raises(ValueError, match="holds no rows of task 2"):
        D.ShardedTaskSampler(store, 3, 4, 4, SEED)
    sampler = D.ShardedTaskSampler(store, 2, 4, 4, SEED)
    with pytest.raises(ValueError, match=r"meta_batch_size must be in \[1, 2\]"):
        sampler.global_tasks(0, 3)
    with pytest.raises(ValueError, match="does not hold task 5"):
        sampler.arrays(0, [5])
    with pytest.raises(ValueError, match="at least one parameter"):
        D.all_reduce_gradients([], ctx)


def test_gradients_of_a_rank_without_tasks_are_zero() -> None:
    maml = make_maml()
    before = weights(maml)
    loss = D.distributed_meta_step(maml, None, 0, 4, D.DistributedContext())
    assert loss == 0.0
    # zero gradients: Adam's first step moves nothing
    for name, value in weights(maml).items():
        assert torch.equal(value, before[name]), name


def test_dataclass_context_is_frozen() -> None:
    ctx = D.DistributedContext()
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.rank = 1  # type: ignore[misc]


def test_train_rejects_bad_splits(tmp_path: Path) -> None:
    two = D.DistributedContext(rank=0, world_size=2)  # validation happens before any collective
    with pytest.raises(ValueError, match=r"--num_tasks \(1\) must be >= the number of ranks"):
        D.collect_shard(tiny_config(tmp_path, num_tasks=1, meta_batch_size=1), two, None)
    with pytest.raises(ValueError, match=r"--meta_batch_size \(1\) must be >= the number of"):
        D.collect_shard(tiny_config(tmp_path, meta_batch_size=1), two, None)
    with pytest.raises(ValueError, match="applies to `train` and `run`"):
        D.run("collect", tiny_config(tmp_path))
