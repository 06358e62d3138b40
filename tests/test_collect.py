"""Collection into the store: row counts, metadata consistency, physics oracle, streams."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import rust_buffer
from eaml_ssm.collect import (
    EPISODE_STRIDE,
    build_store,
    collect,
    exploration_actions,
    max_rows,
    rollout,
)
from eaml_ssm.features import encode_targets
from eaml_ssm.tasks import draw_task, draw_tasks, get_family


def _rows(store):
    """All rows sorted by (task, episode, step): a canonical form independent of write order."""
    tid, eid, step = store.task_id_view(), store.episode_id_view(), store.step_view()
    order = np.lexsort((step, eid, tid))
    return (
        tid[order].copy(),
        eid[order].copy(),
        step[order].copy(),
        store.obs_view()[order].copy(),
        store.target_view()[order].copy(),
    )


def _episode_lengths(store) -> dict[int, dict[int, int]]:
    """{task_id: {episode_id: length}} after checking ids and steps 0, 1, 2, ... per episode."""
    tid, eid, step, _, _ = _rows(store)
    np.testing.assert_array_equal(eid // EPISODE_STRIDE, tid)  # episode ids encode the task
    out: dict[int, dict[int, int]] = {}
    for e in np.unique(eid):
        steps = step[eid == e]
        np.testing.assert_array_equal(steps, np.arange(len(steps)))  # 0, 1, 2, ... no gaps
        out.setdefault(int(e) // EPISODE_STRIDE, {})[int(e)] = len(steps)
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_collect_writes_every_step_with_consistent_metadata(workers):
    tasks = draw_tasks("CartPole-v1", 6, seed=0)
    store, stats = build_store(tasks, 300, num_workers=workers, seed=3, task_ids=range(10, 16))
    assert len(store) == stats.transitions == 6 * 300
    assert store.task_counts() == {t: 300 for t in range(10, 16)}
    assert stats.episodes > 6 * 5  # CartPole episodes are short under random actions
    _episode_lengths(store)  # episode ids encode the task, steps 0, 1, 2, ... without gaps
    obs = _rows(store)[3]
    # obs of the next step in an episode is the previous obs + stored delta
    x_all, y_all = store.obs_view(), store.target_view()
    slot_eid, slot_step = store.episode_id_view(), store.step_view()
    same = (slot_eid[1:] == slot_eid[:-1]) & (slot_step[1:] == slot_step[:-1] + 1)
    assert same.mean() > 0.9  # episodes are written as contiguous segments even with 2 writers
    np.testing.assert_allclose(x_all[1:, :4][same], (x_all[:-1, :4] + y_all[:-1])[same], atol=1e-5)
    one_hot = obs[:, 4:]
    np.testing.assert_array_equal(one_hot.sum(1), 1)


def test_rows_match_the_physics_of_their_task():
    # Oracle: put a task's env in the stored state, apply the stored action, compare the delta.
    tasks = draw_tasks("CartPole-v1", 4, seed=1)
    store, _ = build_store(tasks, 100, num_workers=2, seed=0)
    obs, tgt, tid, _, _ = store.sample(64, with_meta=True)
    fam = get_family("CartPole-v1")
    for x, y, t in zip(obs, tgt, tid, strict=True):
        env = tasks[int(t)].make_env()
        env.reset(seed=0)
        env.unwrapped.state = x[:4].astype(np.float64)
        nxt, *_ = env.step(int(np.argmax(x[4:])))
        np.testing.assert_allclose(encode_targets(fam, x[None, :4], nxt[None])[0], y, atol=2e-5)


def test_collect_is_reproducible_and_independent_of_worker_count():
    tasks = draw_tasks("Pendulum-v1", 4, seed=0)
    a, _ = build_store(tasks, 250, num_workers=1, seed=5)
    b, _ = build_store(tasks, 250, num_workers=2, seed=5)
    c, _ = build_store(tasks, 250, num_workers=1, seed=6)
    for u, v in zip(_rows(a), _rows(b), strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(_rows(a)[3], _rows(c)[3])


def test_sequence_windows_stay_inside_episodes():
    tasks = draw_tasks("Pendulum-v1", 3, seed=0)
    store, _ = build_store(tasks, 400, num_workers=2, seed=0)
    obs, tgt, _ = store.sample_sequences(32, 16)
    # within a window each next state is the previous state + the stored change
    np.testing.assert_allclose(obs[:, 1:, :3], obs[:, :-1, :3] + tgt[:, :-1], atol=1e-5)


def test_box_action_rows_are_scaled_and_other_families_collect():
    tasks = draw_tasks("MountainCarContinuous-v0", 2, seed=0)
    store, _ = build_store(tasks, 200, policy="ou", seed=0)
    act = store.obs_view()[:, 2]
    assert act.min() >= -1 and act.max() <= 1 and act.std() > 0.1
    store, stats = build_store(draw_tasks("Acrobot-v1", 2, seed=0), 100)
    assert len(store) == 200 and stats.segments >= 2


def test_process_backend_writes_the_same_rows():
    tasks = draw_tasks("CartPole-v1", 2, seed=0)
    a, _ = build_store(tasks, 150, num_workers=2, seed=1)
    b, _ = build_store(tasks, 150, num_workers=2, seed=1, backend="process")
    for u, v in zip(_rows(a), _rows(b), strict=True):
        np.testing.assert_array_equal(u, v)


def test_exploration_schedules():
    rng = np.random.default_rng(0)
    space = get_family("CartPole-v1").action_space
    acts = exploration_actions(space, 2000, rng, kind="repeat", max_repeat=4)
    assert acts.shape == (2000,) and set(np.unique(acts)) == {0, 1}
    # runs of equal actions are longer than i.i.d. ones (held 1..4 steps)
    changes = np.count_nonzero(np.diff(acts))
    iid = exploration_actions(space, 2000, np.random.default_rng(0), kind="uniform")
    assert changes < 0.7 * np.count_nonzero(np.diff(iid))
    box = get_family("Pendulum-v1").action_space
    ou = exploration_actions(box, 2000, rng, kind="ou")
    assert ou.shape == (2000, 1) and ou.min() >= -2 and ou.max() <= 2
    assert np.corrcoef(ou[1:, 0], ou[:-1, 0])[0, 1] > 0.5  # temporally correlated
    with pytest.raises(ValueError, match="needs a Box"):
        exploration_actions(space, 10, rng, kind="ou")
    with pytest.raises(ValueError, match="policy must be one of"):
        exploration_actions(space, 10, rng, kind="greedy")


def test_collect_bad_inputs():
    cp = draw_tasks("CartPole-v1", 2)
    store = rust_buffer.RingBuffer(100, 6, 4)
    with pytest.raises(ValueError, match="one environment id"):
        collect([cp[0], draw_task("Pendulum-v1", 0)], store, 10)
    with pytest.raises(ValueError, match="obs_dim 4"):
        collect(draw_tasks("Pendulum-v1", 1), store, 10)
    with pytest.raises(ValueError, match="distinct task ids"):
        collect(cp, store, 10, task_ids=[1, 1])
    with pytest.raises(ValueError, match="steps_per_task"):
        collect(cp, store, 0)
    with pytest.raises(ValueError, match="backend"):
        collect(cp, store, 10, backend="mpi")
    with pytest.raises(ValueError, match="at least one task"):
        collect([], store, 10)
    assert len(store) == 0


def test_rollout_stream():
    task = draw_task("CartPole-v1", 0)
    s = rollout(task, 200, seed=3)
    assert len(s) == 200 and s.actions.shape == (200,)
    assert s.starts[0] and s.starts.sum() > 3  # CartPole resets several times in 200 steps
    cont = ~s.starts[1:]
    np.testing.assert_array_equal(s.states[1:][cont], s.next_states[:-1][cont])
    again = rollout(task, 200, seed=3)
    np.testing.assert_array_equal(again.states, s.states)
    x, y = s.transitions()
    assert x.shape == (200, 6) and y.shape == (200, 4)
    # a callable policy: always push right
    right = rollout(task, 20, policy=lambda obs: 1)
    assert np.all(right.actions == 1)
    p = rollout(draw_task("Pendulum-v1", 0), 50, policy="ou")
    assert p.actions.shape == (50, 1) and p.starts.sum() == 1
    with pytest.raises(ValueError, match="n_steps"):
        rollout(task, 0)
    with pytest.raises(TypeError, match="callable"):
        rollout(task, 5, policy=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["thread", "process", "shared"])
def test_worker_errors_reach_the_caller(backend, tmp_path):
    from eaml_ssm.tasks import Task

    broken = [Task("CartPole-v1", params={}), Task("CartPole-v1", params={})]  # no physics
    if backend == "shared":
        store = rust_buffer.RingBuffer.create(tmp_path / "s.rbuf", 100, 6, 4)
    else:
        store = rust_buffer.RingBuffer(100, 6, 4)
    with pytest.raises((KeyError, RuntimeError), match="length"):
        collect(broken, store, 10, num_workers=2, backend=backend)


@pytest.mark.parametrize(("workers", "backend"), [(1, "thread"), (2, "thread"), (2, "process")])
def test_episodes_per_task_writes_exactly_that_many_complete_episodes(workers, backend):
    tasks = draw_tasks("CartPole-v1", 5, seed=0)
    store, stats = build_store(
        tasks, episodes_per_task=7, num_workers=workers, backend=backend, seed=2, chunk_rows=8
    )
    assert store.capacity == max_rows(tasks, episodes_per_task=7) == 5 * 7 * 500
    lengths = _episode_lengths(store)
    assert sorted(lengths) == list(range(5))
    for t, eps in lengths.items():
        assert sorted(eps) == [t * EPISODE_STRIDE + k for k in range(7)]  # exactly 7 per task
    assert stats.episodes == 5 * 7 and stats.transitions == len(store)
    assert store.task_counts() == {t: sum(eps.values()) for t, eps in lengths.items()}
    # every episode is complete: its last transition leaves CartPole's bounds
    _, eid, step, obs, tgt = _rows(store)
    last = np.r_[eid[1:] != eid[:-1], True]  # (rows,) the final row of each episode
    final = obs[last, :4] + tgt[last]  # (episodes, 4) the terminal states
    out = (np.abs(final[:, 0]) > 2.4) | (np.abs(final[:, 2]) > 12 * 2 * np.pi / 360)
    assert (out | (step[last] == 499)).all()  # terminated, or truncated at 500
    assert out.sum() > 30


def test_episodes_per_task_is_reproducible_across_workers_and_backends():
    tasks = draw_tasks("Pendulum-v1", 3, seed=0)  # 200-step episodes, no termination
    a, sa = build_store(tasks, episodes_per_task=2, num_workers=1, seed=4, policy="ou")
    b, _ = build_store(tasks, episodes_per_task=2, num_workers=2, seed=4, policy="ou")
    c, _ = build_store(
        tasks, episodes_per_task=2, num_workers=2, seed=4, policy="ou", backend="process"
    )
    assert a.task_counts() == {t: 400 for t in range(3)} and sa.episodes == 6
    for u, v, w in zip(_rows(a), _rows(b), _rows(c), strict=True):
        np.testing.assert_array_equal(u, v)
        np.testing.assert_array_equal(u, w)
    # the first episode of a task equals a steps-mode collection of the same length
    d, _ = build_store(tasks, 200, num_workers=1, seed=4, policy="ou")
    first = _rows(a)[1] % EPISODE_STRIDE == 0
    np.testing.assert_array_equal(_rows(a)[3][first], _rows(d)[3])


def test_episodes_per_task_bad_values():
    tasks = draw_tasks("CartPole-v1", 2)
    store = rust_buffer.RingBuffer(100, 6, 4)
    for bad in (0, -3):
        with pytest.raises(ValueError, match="episodes_per_task must be >= 1"):
            collect(tasks, store, episodes_per_task=bad)
    with pytest.raises(TypeError, match="episodes_per_task must be an int"):
        collect(tasks, store, episodes_per_task=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        collect(tasks, store, 100, episodes_per_task=3)
    with pytest.raises(ValueError, match="steps_per_task must be >= 1"):
        collect(tasks, store)  # neither
    with pytest.raises(ValueError, match="not both"):
        build_store(tasks, 100, episodes_per_task=3)
    gym.register(
        "EamlNoLimitPendulum-v0",
        entry_point="gymnasium.envs.classic_control.pendulum:PendulumEnv",
        max_episode_steps=None,
    )
    try:
        with pytest.raises(ValueError, match="no max_episode_steps"):
            build_store([draw_task("EamlNoLimitPendulum-v0", 0)], episodes_per_task=1)
    finally:
        del gym.envs.registry["EamlNoLimitPendulum-v0"]
    assert len(store) == 0


# --- backend="shared": worker processes write straight into a file-backed store -------------


def test_shared_backend_workers_write_into_the_file(tmp_path, monkeypatch):
    import eaml_ssm.collect.writers as writers

    received = []
    consume = writers._consume

    def spy(store, item, counter):  # the parent only receives counts, never rows
        received.append(type(item).__name__)
        consume(store, item, counter)

    monkeypatch.setattr(writers, "_consume", spy)
    tasks = draw_tasks("Pendulum-v1", 4, seed=0)
    path = tmp_path / "store.rbuf"
    store, stats = build_store(
        tasks, episodes_per_task=2, path=path, num_workers=2, backend="shared", seed=3
    )
    assert "Segment" not in received and "_Written" in received
    assert store.path == path and stats.episodes == 8
    assert len(store) == stats.transitions == store.total_added == 4 * 400
    assert store.task_counts() == {t: 400 for t in range(4)}
    ref, _ = build_store(tasks, episodes_per_task=2, num_workers=1, seed=3)
    for u, v in zip(_rows(store), _rows(ref), strict=True):  # rows and metadata as in memory
        np.testing.assert_array_equal(u, v)
    other = rust_buffer.RingBuffer.open(path)  # another handle sees the same file
    assert len(other) == len(store) and other.task_counts() == store.task_counts()
    obs, tgt, _ = other.sample_sequences(32, 16)  # windows stay inside intact episodes
    np.testing.assert_allclose(obs[:, 1:, :3], obs[:, :-1, :3] + tgt[:, :-1], atol=1e-5)


class _SigkillEnv(gym.Wrapper):
    """Kills its own process with SIGKILL at the 60th step (a worker dying mid-run)."""

    def __init__(self, env):
        super().__init__(env)
        self.steps = 0

    def step(self, action):
        import os
        import signal

        self.steps += 1
        if self.steps == 60:
            os.kill(os.getpid(), signal.SIGKILL)
        return self.env.step(action)


def test_shared_backend_reports_a_dead_worker_and_keeps_the_store_usable(tmp_path):
    from dataclasses import dataclass

    from eaml_ssm.tasks import Task

    @dataclass(frozen=True)
    class DyingTask(Task):
        def make_env(self, **kwargs):
            return _SigkillEnv(super().make_env(**kwargs))

    good = draw_tasks("CartPole-v1", 1, seed=0)[0]
    tasks = [good, DyingTask("CartPole-v1", params=dict(good.params))]
    store = rust_buffer.RingBuffer.create(tmp_path / "s.rbuf", 1000, 6, 4)
    with pytest.raises(RuntimeError, match=r"worker process \d+ died \(exit code -9\)"):
        collect(tasks, store, 200, num_workers=2, backend="shared", chunk_rows=16)
    counts = store.task_counts()
    assert counts[0] == 200 and 0 < counts.get(1, 0) < 60  # finished segments of the dead one
    reopened = rust_buffer.RingBuffer.open(tmp_path / "s.rbuf")
    assert len(reopened) == len(store)
    _episode_lengths(reopened)  # ids and steps still consistent
    obs, tgt = reopened.sample(64)
    assert np.isfinite(obs).all() and np.isfinite(tgt).all()


def test_shared_backend_needs_a_file_backed_store():
    tasks = draw_tasks("CartPole-v1", 2)
    with pytest.raises(ValueError, match="file-backed store"):
        collect(tasks, rust_buffer.RingBuffer(100, 6, 4), 10, backend="shared")
