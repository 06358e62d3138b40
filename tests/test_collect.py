"""Collection into the store: row counts, metadata consistency, physics oracle, streams."""

from __future__ import annotations

import numpy as np
import pytest

import rust_buffer
from eaml_ssm.collect import (
    EPISODE_STRIDE,
    build_store,
    collect,
    exploration_actions,
    rollout,
)
from eaml_ssm.features import encode_targets
from eaml_ssm.tasks import get_family, sample_task, sample_tasks


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


@pytest.mark.parametrize("workers", [1, 2])
def test_collect_writes_every_step_with_consistent_metadata(workers):
    tasks = sample_tasks("CartPole-v1", 6, seed=0)
    store, stats = build_store(tasks, 300, num_workers=workers, seed=3, task_ids=range(10, 16))
    assert len(store) == stats.transitions == 6 * 300
    assert store.task_counts() == {t: 300 for t in range(10, 16)}
    assert stats.episodes > 6 * 5  # CartPole episodes are short under random actions
    tid, eid, step, obs, _ = _rows(store)
    np.testing.assert_array_equal(eid // EPISODE_STRIDE, tid)  # episode ids encode the task
    for e in np.unique(eid):
        steps = step[eid == e]
        np.testing.assert_array_equal(steps, np.arange(len(steps)))  # 0, 1, 2, ... no gaps
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
    tasks = sample_tasks("CartPole-v1", 4, seed=1)
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
    tasks = sample_tasks("Pendulum-v1", 4, seed=0)
    a, _ = build_store(tasks, 250, num_workers=1, seed=5)
    b, _ = build_store(tasks, 250, num_workers=2, seed=5)
    c, _ = build_store(tasks, 250, num_workers=1, seed=6)
    for u, v in zip(_rows(a), _rows(b), strict=True):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(_rows(a)[3], _rows(c)[3])


def test_sequence_windows_stay_inside_episodes():
    tasks = sample_tasks("Pendulum-v1", 3, seed=0)
    store, _ = build_store(tasks, 400, num_workers=2, seed=0)
    obs, tgt, _ = store.sample_sequences(32, 16)
    # within a window each next state is the previous state + the stored change
    np.testing.assert_allclose(obs[:, 1:, :3], obs[:, :-1, :3] + tgt[:, :-1], atol=1e-5)


def test_box_action_rows_are_scaled_and_other_families_collect():
    tasks = sample_tasks("MountainCarContinuous-v0", 2, seed=0)
    store, _ = build_store(tasks, 200, policy="ou", seed=0)
    act = store.obs_view()[:, 2]
    assert act.min() >= -1 and act.max() <= 1 and act.std() > 0.1
    store, stats = build_store(sample_tasks("Acrobot-v1", 2, seed=0), 100)
    assert len(store) == 200 and stats.segments >= 2


def test_process_backend_writes_the_same_rows():
    tasks = sample_tasks("CartPole-v1", 2, seed=0)
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
    cp = sample_tasks("CartPole-v1", 2)
    store = rust_buffer.RingBuffer(100, 6, 4)
    with pytest.raises(ValueError, match="one environment id"):
        collect([cp[0], sample_task("Pendulum-v1", 0)], store, 10)
    with pytest.raises(ValueError, match="obs_dim 4"):
        collect(sample_tasks("Pendulum-v1", 1), store, 10)
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
    task = sample_task("CartPole-v1", 0)
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
    p = rollout(sample_task("Pendulum-v1", 0), 50, policy="ou")
    assert p.actions.shape == (50, 1) and p.starts.sum() == 1
    with pytest.raises(ValueError, match="n_steps"):
        rollout(task, 0)
    with pytest.raises(TypeError, match="callable"):
        rollout(task, 5, policy=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_worker_errors_reach_the_caller(backend):
    from eaml_ssm.tasks import Task

    broken = [Task("CartPole-v1", params={}), Task("CartPole-v1", params={})]  # no physics
    store = rust_buffer.RingBuffer(100, 6, 4)
    with pytest.raises((KeyError, RuntimeError), match="length"):
        collect(broken, store, 10, num_workers=2, backend=backend)
