"""Task families: parameter regions, reproducibility, physics really applied, bad ids."""

from __future__ import annotations

import numpy as np
import pytest

from eaml_ssm.tasks import (
    FAMILIES,
    SPLITS,
    ParamSpec,
    default_task,
    draw_task,
    draw_tasks,
    get_family,
    make_task,
)

CLASSIC = ["CartPole-v1", "Pendulum-v1", "Acrobot-v1", "MountainCarContinuous-v0"]


def _has_mujoco() -> bool:
    import gymnasium as gym

    try:
        import gymnasium.envs.mujoco  # needs mujoco and imageio
    except (ImportError, gym.error.DependencyNotInstalled):
        return False
    return True


HAS_MUJOCO = _has_mujoco()
needs_mujoco = pytest.mark.skipif(not HAS_MUJOCO, reason="mujoco not installed (extra [mujoco])")


def _trajectory(task, actions, seed=0):
    env = task.make_env()
    obs, _ = env.reset(seed=seed)
    out = [obs]
    for a in actions:
        obs, _, term, trunc, _ = env.step(a)
        out.append(obs)
        if term or trunc:
            break
    env.close()
    return np.array(out)


def _actions(env_id, n, seed=0):
    space = get_family(env_id).action_space
    space.seed(seed)
    return [space.sample() for _ in range(n)]


@pytest.mark.parametrize("env_id", CLASSIC)
def test_same_seed_same_physics_and_splits_differ(env_id):
    a = draw_task(env_id, 7)
    b = draw_task(env_id, 7)
    assert a.params == b.params and a.params  # reproducible and randomized
    assert draw_task(env_id, 8).params != a.params
    assert draw_task(env_id, 7, "heldout").params != a.params
    assert draw_task(env_id, 7, "ood").params != a.params


@pytest.mark.parametrize("env_id", CLASSIC)
@pytest.mark.parametrize("split", SPLITS)
def test_parameters_fall_in_their_split(env_id, split):
    fam = get_family(env_id)
    for task in draw_tasks(env_id, 40, seed=100, split=split):
        for spec in fam.params:
            v = task.params[spec.name]
            lo, hi = spec.train
            assert spec.contains(v, split)
            in_band = any(a <= v <= b for a, b in spec.heldout)
            if split == "train":
                assert lo <= v <= hi and not in_band
            elif split == "heldout":
                assert lo < v < hi and in_band  # inside the training range, never trained on
            else:
                assert v < lo or v > hi


@pytest.mark.parametrize("env_id", CLASSIC)
def test_different_tasks_behave_differently(env_id):
    t1, t2 = draw_task(env_id, 1), draw_task(env_id, 2)
    acts = _actions(env_id, 30)
    a, b = _trajectory(t1, acts), _trajectory(t2, acts)
    again = _trajectory(draw_task(env_id, 1), acts)
    np.testing.assert_array_equal(a, again)  # same task, same start, same actions
    n = min(len(a), len(b))
    assert n > 5
    np.testing.assert_array_equal(a[0], b[0])  # the start state does not depend on physics
    assert np.abs(a[1:n] - b[1:n]).max() > 1e-3


def test_cartpole_parameters_and_derived_quantities_are_applied():
    task = make_task(
        "CartPole-v1", {"length": 0.7, "masspole": 0.2, "masscart": 1.3, "force_mag": 12.0}
    )
    env = task.make_env().unwrapped
    assert (env.length, env.masspole, env.masscart, env.force_mag) == (0.7, 0.2, 1.3, 12.0)
    assert env.total_mass == pytest.approx(1.5)
    assert env.polemass_length == pytest.approx(0.14)


def test_pendulum_and_mountaincar_parameters_are_applied():
    env = make_task("Pendulum-v1", {"m": 1.2, "l": 0.8, "g": 9.0}).make_env().unwrapped
    assert (env.m, env.l, env.g) == (1.2, 0.8, 9.0)
    env = make_task("MountainCarContinuous-v0", {"power": 0.002}).make_env().unwrapped
    assert env.power == 0.002


def test_acrobot_second_link_length_changes_dynamics():
    # gymnasium's Acrobot reads only the COM position of link 2: it must be recomputed.
    base = {"LINK_LENGTH_1": 1.0, "LINK_LENGTH_2": 1.0, "LINK_MASS_1": 1.0, "LINK_MASS_2": 1.0}
    longer = dict(base, LINK_LENGTH_2=1.4)
    env = make_task("Acrobot-v1", longer).make_env().unwrapped
    assert pytest.approx(0.7) == env.LINK_COM_POS_2
    acts = [2] * 20
    a = _trajectory(make_task("Acrobot-v1", base), acts)
    b = _trajectory(make_task("Acrobot-v1", longer), acts)
    assert np.abs(a - b).max() > 1e-3


def test_default_task_matches_gymnasium():
    import gymnasium as gym

    acts = _actions("Pendulum-v1", 20)
    ref = gym.make("Pendulum-v1")
    obs, _ = ref.reset(seed=0)
    traj = [obs] + [ref.step(a)[0] for a in acts]
    np.testing.assert_allclose(_trajectory(default_task("Pendulum-v1"), acts), np.array(traj))


def test_dims_of_families():
    cp = get_family("CartPole-v1")
    assert (cp.state_dim, cp.action_dim, cp.input_dim, cp.target_dim) == (4, 2, 6, 4)
    assert cp.discrete_actions and cp.angle_dims == (2,)
    pd = get_family("Pendulum-v1")
    assert (pd.state_dim, pd.action_dim, pd.input_dim) == (3, 1, 4)
    assert get_family("Acrobot-v1").action_dim == 3


def test_other_box_env_is_a_single_task_family():
    fam = get_family("MountainCar-v0")  # Box observations, Discrete actions, not randomized
    assert not fam.randomized and fam.params == ()
    for split in SPLITS:
        task = draw_task("MountainCar-v0", 3, split)
        assert task.params == {}
    env = draw_task("MountainCar-v0", 0).make_env()
    assert env.observation_space.shape == (2,)


@pytest.mark.parametrize(
    ("env_id", "needle"),
    [
        ("NoSuchEnv-v0", "unknown environment id"),
        ("CartPole-v0x", "unknown environment id"),
        ("FrozenLake-v1", "observation space Discrete"),
        ("Blackjack-v1", "observation space Tuple"),
    ],
)
def test_unsupported_ids_raise_and_list_what_is_supported(env_id, needle):
    with pytest.raises(ValueError, match=needle) as info:
        draw_task(env_id, 0)
    for fam in FAMILIES:
        assert fam in str(info.value)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split must be one of"):
        draw_task("CartPole-v1", 0, "test")
    with pytest.raises(ValueError, match="non-negative int"):
        draw_task("CartPole-v1", -1)
    with pytest.raises(TypeError, match="must be a str"):
        get_family(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="takes parameters"):
        make_task("Pendulum-v1", {"m": 1.0, "l": 1.0})
    with pytest.raises(ValueError, match="finite and > 0"):
        make_task("Pendulum-v1", {"m": -1.0, "l": 1.0, "g": 10.0})
    with pytest.raises(ValueError, match="overlaps"):
        ParamSpec("x", 1.0, (0.5, 1.5), (), ((1.0, 2.0),))
    with pytest.raises(ValueError, match="not inside"):
        ParamSpec("x", 1.0, (0.5, 1.5), ((1.4, 1.6),), ())


@needs_mujoco
def test_mujoco_family_scales_masses_and_damping():
    base = make_task("HalfCheetah-v5", {"body_mass_scale": 1.0, "joint_damping_scale": 1.0})
    heavy = make_task("HalfCheetah-v5", {"body_mass_scale": 1.5, "joint_damping_scale": 0.5})
    m0, m1 = base.make_env().unwrapped.model, heavy.make_env().unwrapped.model
    np.testing.assert_allclose(m1.body_mass, 1.5 * m0.body_mass)
    np.testing.assert_allclose(m1.dof_damping, 0.5 * m0.dof_damping)
    acts = [np.full(6, 0.5, dtype=np.float32)] * 20
    assert np.abs(_trajectory(base, acts) - _trajectory(heavy, acts)).max() > 1e-3


@needs_mujoco
def test_mujoco_family_splits():
    fam = get_family("HalfCheetah-v5")
    assert (fam.state_dim, fam.action_dim) == (17, 6)
    t = draw_task("HalfCheetah-v5", 4, "ood")
    assert all(v < 0.5 or v > 1.5 for v in t.params.values())
    assert draw_task("HalfCheetah-v5", 4, "ood") == t


def test_fixed_parameters_pin_some_and_draw_the_rest_as_before():
    free = draw_task("Pendulum-v1", 5, "ood")
    pinned = draw_task("Pendulum-v1", 5, "ood", fixed={"g": 10.0})
    assert pinned.params["g"] == 10.0
    assert (pinned.params["m"], pinned.params["l"]) == (free.params["m"], free.params["l"])
    assert pinned.make_env().unwrapped.g == 10.0
    with pytest.raises(ValueError, match="has no parameters"):
        draw_task("Pendulum-v1", 5, fixed={"gravity": 10.0})
