"""The one feed (eaml_ssm.feed): the only caller of the store's samplers, zero-copy on CPU,
deterministic draws, replay through the store, live experience into the store."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import rust_buffer
from eaml_ssm.adaptation import AdaptationConfig, Adapter, ExperienceSource
from eaml_ssm.buffer import ExperienceBuffer
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import LiveWriter, ReplayFeed, StoreLoader, draw_seed
from eaml_ssm.feed.replay import REPLAY_TAG

PACKAGE = Path(__file__).resolve().parents[1] / "eaml_ssm"
STORE_SAMPLERS = {
    "sample",
    "sample_into",
    "sample_tasks",
    "sample_sequences",
    "sample_recent",
    "sample_task_rows",
    "sample_windows",
    "sample_windows_into",
    "gather",
    "windows_at",
}


def _episodes_store(tasks: int = 4, episodes: int = 6, length: int = 20, capacity: int = 10_000):
    """obs = 1000 task + 100 episode + step (so a row names itself), target = -obs."""
    store = rust_buffer.RingBuffer(capacity, 2, 1, seed=0)
    for t in range(tasks):
        for e in range(episodes):
            steps = np.arange(length)
            val = 1000.0 * t + 100.0 * e + steps
            obs = np.stack([val, np.full(length, t)], 1).astype(np.float32)
            store.add(obs, -val[:, None].astype(np.float32), task_id=t,
                      episode_id=100 * t + e, step=steps)  # fmt: skip
    return store


class Spy:
    """Forwards to a store and remembers the arrays its samplers returned or were given."""

    def __init__(self, store):
        self.store = store
        self.calls: list[tuple[str, tuple, object]] = []

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if name not in STORE_SAMPLERS:
            return attr

        def call(*args, **kwargs):
            out = attr(*args, **kwargs)
            self.calls.append((name, args, out))
            return out

        call.__text_signature__ = getattr(attr, "__text_signature__", None)
        return call

    def __len__(self):
        return len(self.store)


def _ptr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


# --- architecture ------------------------------------------------------------------------------


def test_only_the_feed_calls_the_store_samplers():
    """No module outside eaml_ssm/feed calls a store sampler (sample*, gather, windows_at)."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "feed":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            if name not in STORE_SAMPLERS:
                continue
            # a task-parameter distribution draws with a generator: p.sample(rng, split)
            first = node.args[0] if node.args else None
            if name == "sample" and isinstance(first, ast.Name) and first.id == "rng":
                continue
            offenders.append(f"{rel}:{node.lineno} .{name}(...)")
    assert offenders == []


def test_the_architecture_check_catches_a_direct_sampler_call(tmp_path):
    """The scan above would fail on a direct call (the check can fail)."""
    code = "def f(store):\n    return store.sample_sequences(4, 8)\n"
    calls = [
        n.func.attr
        for n in ast.walk(ast.parse(code))
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
    ]
    assert set(calls) & STORE_SAMPLERS == {"sample_sequences"}


# --- zero copy on CPU --------------------------------------------------------------------------


def test_every_loader_batch_kind_wraps_the_stores_arrays_without_a_copy():
    spy = Spy(_episodes_store())
    norm = Normalizer.from_store(spy.store, state_dim=1)
    loader = StoreLoader(spy, "cpu", norm, seed=5)
    x, y = loader.batch(16)
    _, _, (obs, tgt) = spy.calls[-1]
    assert x.data_ptr() == _ptr(obs) and y.data_ptr() == _ptr(tgt)
    sx, sy, qx, qy, ids = loader.tasks(3, 4, 4, contiguous=True)
    so, st, qo, qt, tid = spy.calls[-1][2]
    for t, a in zip((sx, sy, qx, qy, ids), (so, st, qo, qt, tid), strict=True):
        assert t.data_ptr() == _ptr(a)
    xs, ys, ids = loader.sequences(5, 6)
    for t, a in zip((xs, ys, ids), spy.calls[-1][2], strict=True):
        assert t.data_ptr() == _ptr(a)
    sx, sy, qx, qy, ids = loader.task_windows(lambda k: [2, 0], 4, 3, max_tasks=4)
    name, args, _ = spy.calls[-2]  # the store wrote task 2's window into row 0 of the batch
    assert name == "sample_windows_into" and sx.data_ptr() == _ptr(args[0])
    assert sx.shape == (2, 4, 2) and qy.shape == (2, 3, 1) and ids.tolist() == [2, 0]


@pytest.mark.parametrize("kind", ["rows", "windows"])
def test_replay_batches_wrap_the_stores_arrays_without_a_copy(kind: str):
    spy = Spy(_episodes_store())
    norm = Normalizer.from_store(spy.store, state_dim=1)
    feed = ReplayFeed(spy, "cpu", transform=norm, seed=0)
    for strategy in ("uniform", "task_balanced", "recent"):
        before = len(spy.calls)
        if kind == "rows":
            x, y = feed.rows(strategy, 8)
        else:
            x, y = feed.windows(strategy, 4, 5)
        name, args, out = spy.calls[before]
        if name == "sample_windows_into":  # the store wrote into the batch (per task: slices)
            obs, tgt = args[0], args[1]
        else:  # the store's own fresh arrays
            obs, tgt = out[0], out[1]
        assert x.data_ptr() == _ptr(obs) and y.data_ptr() == _ptr(tgt), strategy


# --- deterministic draws -----------------------------------------------------------------------


def test_loader_draws_depend_on_seed_and_index_only():
    store = _episodes_store()
    a = StoreLoader(store, seed=7)
    first = [a.tasks(2, 4, 4, contiguous=True)[0].clone() for _ in range(4)]
    store.sample(50)  # another user of the store's shared generator changes nothing
    b = StoreLoader(store, seed=7, start=2)  # a resumed run starts at its step
    assert torch.equal(b.tasks(2, 4, 4, contiguous=True)[0], first[2])
    b.seek(1)
    assert torch.equal(b.tasks(2, 4, 4, contiguous=True)[0], first[1])
    other = StoreLoader(store, seed=8)
    assert not torch.equal(other.tasks(2, 4, 4, contiguous=True)[0], first[0])


def test_meta_batch_k_is_the_stores_draw_with_the_seed_of_step_k():
    """Intended change (docs/data-path.md): step k's batch was reseed(draw_seed(seed, k)) then
    sample_tasks on the store's shared generator; it is now sample_tasks(..., seed=
    draw_seed(seed, k)), a generator of its own, so other users of the store cannot shift it."""
    store = _episodes_store()
    loader = StoreLoader(store, seed=3)
    for k in range(3):
        got = loader.tasks(2, 5, 3, contiguous=True)
        store.sample(7)  # the shared generator moves; the next batches do not
        expect = store.sample_tasks(2, 5, 3, contiguous=True, seed=draw_seed(3, k))
        for g, e in zip(got, expect, strict=True):
            np.testing.assert_array_equal(g.numpy(), e)


def test_task_windows_depend_on_the_task_not_on_the_other_tasks_of_the_draw():
    store = _episodes_store()
    loader = StoreLoader(store, seed=1)
    both = loader.task_windows(lambda k: [0, 3], 4, 4, max_tasks=2)
    loader.seek(0)
    alone = loader.task_windows(lambda k: [3], 4, 4, max_tasks=2)
    assert torch.equal(both[0][1], alone[0][0])  # task 3's window at draw 0
    assert loader.task_windows(lambda k: [], 4, 4, max_tasks=2)[0].shape == (0, 4, 2)
    with pytest.raises(ValueError, match="max_tasks"):
        loader.task_windows(lambda k: [0, 1, 2], 4, 4, max_tasks=2)


def test_replay_windows_stay_in_one_episode_and_restart_replays_the_same_draws():
    store = _episodes_store()
    feed = ReplayFeed(store, seed=4)
    draws = []
    for strategy in ("uniform", "task_balanced", "recent", "nearest"):
        x, _ = feed.windows(strategy, 6, 5, torch.tensor([[2305.0, 2.0]]), recent=40)
        vals = x[..., 0].numpy()
        assert (np.diff(vals, axis=1) == 1).all()  # consecutive steps
        assert (vals // 100 == vals[:, :1] // 100).all()  # one episode per window
        draws.append(vals)
    assert (draws[2] >= 3400).all()  # recent: the newest 40 rows are task 3's last 2 episodes
    assert (np.abs(draws[3] - 2305) < 20).any(axis=1).all()  # nearest: around the query
    assert feed.draws == 4
    feed.restart()
    again = feed.windows("uniform", 6, 5)
    assert np.array_equal(again[0][..., 0].numpy(), draws[0])


def test_replay_seeds_are_per_draw():
    assert draw_seed(0, 1, REPLAY_TAG) != draw_seed(0, 2, REPLAY_TAG)
    assert draw_seed(0, 1) == int(np.random.SeedSequence([0, 1]).generate_state(1)[0])


# --- replay of rows when the store has no episodes (issue 16) ----------------------------------


def test_window_replay_falls_back_to_rows_once_logged(caplog):
    buf = ExperienceBuffer(500, seed=0)
    buf.add(np.random.default_rng(0).normal(size=(200, 3)), np.zeros((200, 2)))
    source = ExperienceSource(buf, seed=0)
    with caplog.at_level(logging.WARNING, logger="eaml_ssm.feed.replay"):
        for _ in range(3):
            x, y = source.windows("uniform", 8, 16)
            assert x.shape == (8, 3) and y.shape == (8, 2)  # rows instead of windows
    said = [r for r in caplog.records if "replaying rows instead" in r.getMessage()]
    assert len(said) == 1


def test_uniform_row_replay_is_capped_at_the_rows_held():
    buf = ExperienceBuffer(100, seed=0)
    buf.add(np.arange(10.0).reshape(5, 2), np.zeros((5, 1)))
    x, _ = ExperienceSource(buf, seed=0).rows("uniform", 32)
    assert x.shape == (5, 2)


def test_default_sequence_replay_of_an_experience_buffer_adapts():
    from eaml_ssm.ssm import SSM

    model = SSM(state_dim=4, input_dim=3, output_dim=2, hidden_dim=8)
    buf = ExperienceBuffer(500, seed=0)
    buf.add(np.random.default_rng(0).normal(size=(100, 3)), np.zeros((100, 2)))
    adapter = Adapter(model, AdaptationConfig(seed=0), buf)
    loss, steps = adapter.update_step(torch.zeros(1, 8, 3), torch.ones(1, 8, 2))
    assert steps == adapter.config.num_steps and np.isfinite(loss)


# --- live experience ---------------------------------------------------------------------------


def test_live_rows_appear_with_their_task_episode_and_step_ids():
    store = rust_buffer.RingBuffer(100, 2, 1)
    writer = LiveWriter(store, task_id=42)
    writer.add(np.array([1.0, 2.0]), np.array([3.0]))
    writer.add(np.array([1.5, 2.0]), np.array([3.5]))
    writer.add(np.array([9.0, 9.0]), np.array([9.0]), episode_start=True)
    writer.add_rows(np.ones((3, 2)), np.ones((3, 1)), [False, True, False])
    assert len(store) == 6 and store.task_counts() == {42: 6}
    np.testing.assert_array_equal(store.task_id_view(), [42] * 6)
    np.testing.assert_array_equal(store.step_view(), [0, 1, 0, 1, 0, 1])
    ep = store.episode_id_view()
    assert ep[0] == ep[1] and ep[2] == ep[3] and ep[4] == ep[5]
    assert len({ep[0], ep[2], ep[4]}) == 3
    np.testing.assert_array_equal(store.obs_view()[:3], [[1, 2], [1.5, 2], [9, 9]])
    other = LiveWriter(store, task_id=42)
    other.add(np.zeros(2), np.zeros(1))
    assert store.episode_id_view()[6] not in set(ep.tolist())  # writers never share episodes
    with pytest.raises(ValueError, match="shape"):
        writer.add_rows(np.ones((2, 2)), np.ones((2, 1)), [True])
    with pytest.raises(ValueError, match="rows"):
        writer.add_rows(np.ones((2, 2)), np.ones((3, 1)))


def test_live_writer_denormalizes_model_space_rows():
    store = rust_buffer.RingBuffer(10, 2, 1)
    norm = Normalizer.from_arrays(
        np.array([[0.0, 0.0], [2.0, 4.0]], np.float32), np.array([[0.0], [2.0]], np.float32)
    )
    LiveWriter(store, 0, normalizer=norm).add(torch.zeros(2), torch.zeros(1))
    np.testing.assert_allclose(store.obs_view()[0], [1.0, 0.0])  # state mean; action column raw
    np.testing.assert_allclose(store.target_view()[0], [1.0])


def test_a_long_live_stream_keeps_the_store_at_its_capacity():
    store = _episodes_store(tasks=2, episodes=2, length=25, capacity=200)  # 100 old rows
    writer = LiveWriter(store, task_id=7)
    rng = np.random.default_rng(0)
    for t in range(5000):  # 25x the capacity, one transition at a time
        writer.add(rng.normal(size=2), rng.normal(size=1), episode_start=t % 50 == 0)
    assert len(store) == store.capacity == 200 and store.total_added == 5100
    assert store.task_counts() == {7: 200}  # FIFO: the oldest rows went first
    x, _ = ReplayFeed(store, seed=0).windows("uniform", 4, 10)
    assert x.shape == (4, 10, 2)  # the live stream is replayable as episodes


def test_replay_live_false_replays_only_the_tasks_held_when_the_adapter_was_built():
    store = _episodes_store(tasks=2)
    model = torch.nn.Linear(2, 1)
    old_only = Adapter(model, AdaptationConfig(seed=0, replay="rows"), store)
    with_live = Adapter(model, AdaptationConfig(seed=0, replay="rows", replay_live=True), store)
    writer = LiveWriter(store, task_id=9)
    writer.add_rows(np.full((300, 2), 9.0), np.zeros((300, 1)))
    for strategy in ("uniform", "task_balanced", "recent"):
        rows = old_only.experience.rows(strategy, 64)  # type: ignore[arg-type]
        if strategy == "recent":  # the newest rows are all live: nothing old among them
            assert rows is None or (rows[0][:, 1] != 9).all()
            continue
        assert rows is not None and (rows[0][:, 1] != 9).all(), strategy
    x, _ = with_live.experience.windows("uniform", 64, 4)  # type: ignore[misc]
    assert (x[..., 1] == 9).any()  # 300 of 780 rows are live
    assert old_only.fork().experience.feed.old_tasks == frozenset({0, 1})


# --- CUDA defects fixed without a GPU ----------------------------------------------------------


def test_cuda_rng_restore_keeps_the_states_of_the_visible_devices(monkeypatch):
    from eaml_ssm import artifacts

    restored: list[tuple[int, object]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((i, s)))
    assert artifacts.restore_cuda_rng(["s0", "s1", "s2"], visible=1) == 1
    assert restored == [(0, "s0")]
    restored.clear()
    assert artifacts.restore_cuda_rng(["s0"], visible=2) == 1 and restored == [(0, "s0")]


@pytest.mark.gpu
def test_bare_cuda_resolves_to_an_index_and_unpinned_cuda_batches_are_on_the_device():
    from eaml_ssm.feed import indexed_device

    assert indexed_device("cuda").index == torch.cuda.current_device()
    store = _episodes_store()
    loader = StoreLoader(store, "cuda", pinned=False, seed=0)
    x, y = loader.batch(8)
    sx, *_ = loader.tasks(2, 4, 4, contiguous=True)
    xs, _, ids = loader.sequences(2, 4)
    tw = loader.task_windows(lambda k: [1], 2, 2, max_tasks=1)
    for t in (x, y, sx, xs, ids, *tw):
        assert t.is_cuda


@pytest.mark.gpu
def test_pinned_cuda_batches_equal_the_cpu_batches_of_the_same_seed():
    store = _episodes_store()
    norm = Normalizer.from_store(store, state_dim=1)
    cpu = StoreLoader(store, "cpu", norm, seed=2)
    with StoreLoader(store, "cuda:0", norm, seed=2) as gpu:
        for _ in range(4):
            for a, b in zip(
                cpu.tasks(3, 4, 4, contiguous=True), gpu.tasks(3, 4, 4, contiguous=True),
                strict=True,
            ):  # fmt: skip
                torch.testing.assert_close(b.cpu(), a)
            for a, b in zip(
                cpu.task_windows(lambda k: [k % 4], 3, 3, 2),
                gpu.task_windows(lambda k: [k % 4], 3, 3, 2),
                strict=True,
            ):
                torch.testing.assert_close(b.cpu(), a)


@pytest.mark.gpu
@pytest.mark.parametrize("pinned", [True, False])
def test_cuda_batches_are_intact_under_a_concurrent_matmul(pinned: bool):
    """Rows name themselves: a slot refilled mid-copy would show up as a torn row."""
    n = 50_000
    idx = np.arange(n, dtype=np.float32)
    store = rust_buffer.RingBuffer(n, 4, 2, seed=0)
    store.add(np.repeat(idx[:, None], 4, 1), np.stack([idx, -idx], 1))
    side = torch.cuda.Stream()
    big = torch.randn(2048, 2048, device="cuda")
    with StoreLoader(store, "cuda:0", pinned=pinned, seed=0) as loader:
        for _ in range(100):
            with torch.cuda.stream(side):
                big @ big
            x, y = loader.batch(2048)
            assert x.device == torch.device("cuda", 0)
            assert bool((x == x[:, :1]).all() & (y[:, 0] == x[:, 0]) & (y[:, 1] == -x[:, 0]))


@pytest.mark.gpu
def test_nccl_collectives_wait_through_the_timeout_path(tmp_path, monkeypatch):
    import torch.distributed as dist

    from eaml_ssm import distributed as D

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29531")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    ctx = D.init_from_env("cuda", timeout_s=30)
    try:
        assert ctx.backend == "nccl"
        t = torch.ones(3, device=ctx.device)
        assert D.all_reduce_sum(t, ctx).tolist() == [1.0, 1.0, 1.0]
    finally:
        dist.destroy_process_group()


def test_a_collective_that_does_not_finish_in_time_is_a_rank_failure():
    from eaml_ssm import distributed as D

    class Stuck:
        def wait(self, timeout):
            return False  # what Work.wait says when the timeout passed

    ctx = D.DistributedContext(rank=1, world_size=2, backend="nccl", timeout_s=0.5)
    with pytest.raises(D.RankFailure, match=r"within 0\.5 s"), D._collective(ctx, "all-reduce"):
        D._wait(ctx, Stuck())


def test_an_online_adapter_writes_each_observed_transition_live():
    from eaml_ssm.adaptation import OnlineAdapter

    store = _episodes_store(tasks=1, episodes=2)
    adapter = Adapter(torch.nn.Linear(2, 1), AdaptationConfig(seed=0, replay_live=True), store)
    online = OnlineAdapter(adapter, window=4, live=LiveWriter(store, task_id=5))
    xs = torch.arange(20.0).reshape(10, 1, 2)
    for t in range(10):
        online.step(xs[t], -xs[t, :, :1], reset=torch.tensor([t == 6]))
    assert store.task_counts()[5] == 10
    live = store.task_id_view() == 5
    np.testing.assert_array_equal(store.obs_view()[live], xs[:, 0].numpy())
    np.testing.assert_array_equal(store.step_view()[live], [0, 1, 2, 3, 4, 5, 0, 1, 2, 3])
    with pytest.raises(ValueError, match="one stream"):
        online.step(torch.zeros(2, 2), torch.zeros(2, 1))
