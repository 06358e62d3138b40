"""Model-predictive control: planners, rewards, oracle, fast model, episode loop, the grid."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces

import rust_buffer
from eaml_ssm.control import control_timings
from eaml_ssm.control.loop import LiveIds, run_episode
from eaml_ssm.control.model import FastSSMStep, SSMDynamics
from eaml_ssm.control.oracle import OracleDynamics
from eaml_ssm.control.planners import CEM, ActionCoder, RandomShooting, make_planner
from eaml_ssm.control.rewards import FamilyReward, get_reward
from eaml_ssm.features import Normalizer, encode_inputs, encode_targets
from eaml_ssm.ssm import SSM
from eaml_ssm.tasks import draw_task, get_family, make_task

FAMILIES = ("Pendulum-v1", "CartPole-v1", "MountainCarContinuous-v0")


def _random_action(env: Any, rng: np.random.Generator) -> Any:
    space = env.action_space
    if isinstance(space, spaces.Discrete):
        return int(rng.integers(space.n))
    return rng.uniform(space.low, space.high).astype(np.float32)


def _raw(action: Any) -> torch.Tensor:
    return torch.as_tensor(np.asarray(action, dtype=np.float32).reshape(1, -1))


def _record(env_id: str, steps: int = 60, seed: int = 0) -> list[tuple[Any, ...]]:
    """(s, a, s', r, terminated) of random-action play on a task with non-default physics."""
    task = draw_task(env_id, seed, "ood")
    env = task.make_env()
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    out = []
    for _ in range(steps):
        a = _random_action(env, rng)
        obs2, r, term, trunc, _ = env.step(a)
        out.append((obs, a, obs2, float(r), term, task))
        obs = obs2
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    return out


# --- rewards and oracle against the environments ---------------------------------------------


@pytest.mark.parametrize("env_id", FAMILIES)
def test_rewards_equal_the_environments_rewards(env_id: str) -> None:
    reward = get_reward(env_id)
    for s, a, s2, r, term, _ in _record(env_id):
        got = reward.reward(torch.tensor(s)[None], _raw(a), torch.tensor(s2)[None])
        assert float(got[0]) == pytest.approx(r, abs=1e-4)
        if reward.terminated is not None:
            assert bool(reward.terminated(torch.tensor(s2)[None])[0]) == term


def test_mountaincar_goal_bonus_matches_the_environment() -> None:
    env = make_task("MountainCarContinuous-v0", {"power": 0.0015}).make_env()
    env.reset(seed=0)
    env.unwrapped.state = np.array([0.44, 0.05])
    s = np.array(env.unwrapped.state, dtype=np.float32)
    obs2, r, term, _, _ = env.step(np.array([0.5], dtype=np.float32))
    reward = get_reward("MountainCarContinuous-v0")
    got = reward.reward(torch.tensor(s)[None], _raw([0.5]), torch.tensor(obs2)[None])
    assert term and float(got[0]) == pytest.approx(r, abs=1e-4) and r > 99


@pytest.mark.parametrize("env_id", FAMILIES)
def test_oracle_reproduces_the_environments_step(env_id: str) -> None:
    for s, a, s2, _, _, task in _record(env_id, steps=40, seed=3):
        oracle = OracleDynamics(task)
        pred = oracle.step(torch.tensor(s)[None], _raw(a), _raw(a))
        np.testing.assert_allclose(pred[0].numpy(), s2, atol=2e-4)


def test_unsupported_families_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"no control reward for 'Acrobot-v1'.*Pendulum-v1"):
        get_reward("Acrobot-v1")
    with pytest.raises(ValueError, match="no oracle dynamics"):
        OracleDynamics(draw_task("Acrobot-v1", 0))


# --- the fast step model ---------------------------------------------------------------------


def _model_and_normalizer(seed: int = 0) -> tuple[SSM, Normalizer]:
    torch.manual_seed(seed)
    model = SSM(8, 4, 3, 16, num_layers=2)
    norm = Normalizer(4, 3)
    norm.input_mean = torch.tensor([0.3, -0.2, 1.5, 0.0])
    norm.input_std = torch.tensor([0.7, 0.6, 2.5, 1.0])
    norm.target_mean = torch.tensor([0.01, -0.02, 0.1])
    norm.target_std = torch.tensor([0.1, 0.2, 0.9])
    return model, norm


def _reference(model: SSM, norm: Normalizer, s: torch.Tensor, a: torch.Tensor, steps: int) -> Any:
    h = model.init_hidden(s.shape[0])
    out = []
    with torch.no_grad():
        for _ in range(steps):
            y, h = model(norm.normalize_inputs(torch.cat((s, a), dim=1)), h)
            out.append(norm.denormalize_targets(y))
            s = s + 0.1 * out[-1]
    return out


def test_fast_step_equals_the_model_with_normalization() -> None:
    model, norm = _model_and_normalizer()
    s, a = torch.randn(5, 3), torch.rand(5, 1) * 2 - 1
    ref = _reference(model, norm, s, a, 6)
    fast = FastSSMStep(model, norm)
    h = fast.init_hidden(5)
    for want in ref:
        got, h = fast.step(s, a, h)
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
        s = s + 0.1 * got


def test_fast_step_uses_given_weights_and_leaves_the_model_alone() -> None:
    model, norm = _model_and_normalizer()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    other, _ = _model_and_normalizer(seed=1)
    fast = FastSSMStep(model, norm, weights=dict(other.named_parameters()))
    s, a = torch.randn(4, 3), torch.rand(4, 1)
    got, _ = fast.step(s, a, fast.init_hidden(4))
    torch.testing.assert_close(got, _reference(other, norm, s, a, 1)[0], atol=2e-5, rtol=1e-4)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_predicted_pendulum_states_are_projected_like_real_ones() -> None:
    model, norm = _model_and_normalizer()
    family = get_family("Pendulum-v1")
    dyn = SSMDynamics(model, norm, family)
    dyn.prepare(None)
    dyn.start(64)
    s = torch.tensor([[0.0, 1.0, 7.9]]).expand(64, -1)
    a = torch.rand(64, 1) * 2 - 1
    nxt = dyn.step(s, a, a)
    torch.testing.assert_close(nxt[:, :2].norm(dim=1), torch.ones(64))
    assert float(nxt[:, 2].abs().max()) <= 8.0


# --- planners on a linear-quadratic toy problem ----------------------------------------------

A, B, R_U = 1.0, 0.5, 0.1  # x' = A x + B u, cost x'^2 + R_U u^2, u in [-1, 1]


class _Linear:
    def prepare(self, history: Any, num_candidates: int = 1) -> None:
        pass

    def start(self, n: int) -> None:
        pass

    def step(self, states: torch.Tensor, encoded: torch.Tensor, raw: torch.Tensor) -> Any:
        return A * states + B * raw


LQ_REWARD = FamilyReward(
    "lq",
    reward=lambda s, a, s2: -(s2[:, 0] ** 2 + R_U * a[:, 0] ** 2),
    goal=lambda s2: s2[:, 0].abs() < 0.1,
)
LQ_CODER = ActionCoder(SimpleNamespace(action_space=spaces.Box(-1, 1, (1,)), action_dim=1))  # type: ignore[arg-type]


def _lq_optimum(x0: float, horizon: int) -> tuple[float, float]:
    """(first action, optimal return) by the Riccati recursion (unconstrained)."""
    p, gains = 0.0, []
    for _ in range(horizon):  # backwards: V_t(x) = p_t x^2; stage cost on x_{t+1}
        q = 1.0 + p  # weight on x_{t+1}
        k = q * A * B / (R_U + q * B * B)
        gains.append(k)
        p = q * A * A - (q * A * B) ** 2 / (R_U + q * B * B)
    return -gains[-1] * x0, -p * x0 * x0


def test_mpc_reaches_the_linear_quadratic_optimum() -> None:
    x0, horizon = 0.6, 5
    u_star, best = _lq_optimum(x0, horizon)
    assert abs(u_star) < 1  # the bound is inactive, so the unconstrained optimum is the optimum
    planner = CEM(2000, horizon, seed=0, iterations=8, elite_frac=0.05)
    planner.reset(seed=0)
    res = planner.plan(_Linear(), LQ_CODER, LQ_REWARD, torch.tensor([x0]))
    assert res.predicted_return <= best + 1e-6  # nothing beats the optimum
    assert res.predicted_return == pytest.approx(best, rel=0.01)
    assert float(res.controls[0, 0]) == pytest.approx(u_star, abs=0.03)


def test_cem_beats_random_shooting_at_equal_budget() -> None:
    x0, horizon, budget = 0.8, 10, 500
    wins = 0
    for seed in range(5):
        rs = RandomShooting(budget, horizon, seed=seed)
        cem = CEM(budget, horizon, seed=seed, iterations=5)
        rs.reset(seed=seed)
        cem.reset(seed=seed)
        r_rs = rs.plan(_Linear(), LQ_CODER, LQ_REWARD, torch.tensor([x0])).predicted_return
        r_cem = cem.plan(_Linear(), LQ_CODER, LQ_REWARD, torch.tensor([x0])).predicted_return
        wins += r_cem > r_rs
    assert wins == 5


def test_random_shooting_keeps_the_shifted_previous_plan() -> None:
    planner = RandomShooting(2, 4, seed=0)
    planner.reset(seed=0)
    planner.previous = torch.tensor([[9.0], [-0.5], [-0.5], [-0.5]])  # shifted: -0.5 x 4
    res = planner.plan(_Linear(), LQ_CODER, LQ_REWARD, torch.tensor([1.0]))
    # one random candidate against the shifted plan, which the LQ problem prefers
    assert torch.equal(res.controls, torch.full((4, 1), -0.5)) or res.predicted_return > -1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "mppi"}, "unknown planner"),
        ({"num_candidates": 1}, "num_candidates"),
        ({"horizon": 0}, "horizon"),
        ({"name": "cem", "elite_frac": 0.0}, "elite_frac"),
        ({"name": "cem", "iterations": 0}, "iterations"),
    ],
)
def test_bad_planner_arguments_fail_clearly(kwargs: dict[str, Any], match: str) -> None:
    args = {"name": "rs", "num_candidates": 10, "horizon": 5, **kwargs}
    name, n, h = args.pop("name"), args.pop("num_candidates"), args.pop("horizon")
    with pytest.raises(ValueError, match=match):
        make_planner(name, n, h, **args)


def test_discrete_controls_encode_one_hot() -> None:
    coder = ActionCoder(get_family("CartPole-v1"))
    enc, raw = coder.encode(torch.tensor([[0.2, -0.1], [-0.3, 0.4]]))
    assert torch.equal(enc, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert raw[:, 0].tolist() == [0.0, 1.0]
    np.testing.assert_array_equal(
        enc.numpy(), encode_inputs("CartPole-v1", np.zeros((2, 4)), [0, 1])[:, 4:]
    )


# --- the episode loop and the store ----------------------------------------------------------


def _store(capacity: int) -> Any:
    return rust_buffer.RingBuffer(capacity, 4, 3, seed=0)


def test_the_loop_writes_every_transition_with_its_ids() -> None:
    task = draw_task("Pendulum-v1", 0, "heldout")
    store = _store(1000)
    planner = RandomShooting(50, 5, seed=0)
    res = run_episode(
        task,
        planner=planner,
        dynamics=OracleDynamics(task),
        start_seed=7,
        max_steps=30,
        store=store,
        ids=LiveIds(1_000_003, 5),
    )
    assert res.steps == 30 and len(store) == 30
    assert set(store.task_id_view().tolist()) == {1_000_003}
    assert set(store.episode_id_view().tolist()) == {5}
    assert store.step_view().tolist() == list(range(30))
    obs, tgt = store.obs_view(), store.target_view()
    # each row's next state is the following row's state (same episode, in order)
    np.testing.assert_allclose(obs[:-1, :3] + tgt[:-1], obs[1:, :3], atol=1e-5)
    # and the rows are the training encoding of what happened
    env = task.make_env()
    first, _ = env.reset(seed=7)
    np.testing.assert_allclose(obs[0, :3], first)
    expect = encode_targets("Pendulum-v1", obs[:1, :3], obs[1:2, :3])
    np.testing.assert_allclose(tgt[:1], expect, atol=1e-5)


def test_a_long_run_keeps_the_store_bounded() -> None:
    task = draw_task("Pendulum-v1", 0, "heldout")
    store = _store(50)
    run_episode(
        task,
        planner=None,
        dynamics=None,
        start_seed=1,
        max_steps=200,
        store=store,
        ids=LiveIds(1, 0),
    )
    assert len(store) == 50 and store.total_added == 200
    assert sorted(store.step_view().tolist()) == list(range(150, 200))  # the newest rows kept


def test_loop_rejects_inconsistent_arguments() -> None:
    task = draw_task("Pendulum-v1", 0, "heldout")
    with pytest.raises(ValueError, match="both a planner and its dynamics"):
        run_episode(task, planner=RandomShooting(4, 2), dynamics=None, start_seed=0, max_steps=5)
    with pytest.raises(ValueError, match="needs ids"):
        run_episode(task, planner=None, dynamics=None, start_seed=0, max_steps=5, store=_store(8))
    with pytest.raises(ValueError, match="max_steps"):
        run_episode(task, planner=None, dynamics=None, start_seed=0, max_steps=0)


def test_oracle_mpc_swings_the_pendulum_up_and_random_does_not() -> None:
    task = make_task("Pendulum-v1", {"m": 1.0, "l": 1.0, "g": 10.0})
    mpc = run_episode(
        task,
        planner=RandomShooting(300, 20, seed=0),
        dynamics=OracleDynamics(task),
        start_seed=2,
        max_steps=200,
    )
    rnd = run_episode(task, planner=None, dynamics=None, start_seed=2, max_steps=200)
    assert mpc.final_goal_fraction == 1.0 and rnd.final_goal_fraction == 0.0
    assert mpc.ret > rnd.ret + 500


def test_control_timings_reports_both_budgets() -> None:
    out = control_timings("cpu", sizes=((20, 3), (40, 4)), repeats=1, warmup=0)
    assert out["device"] == "cpu" and out["20x3_ms"] > 0 and out["40x4_ms"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_control_timings_on_cuda() -> None:
    out = control_timings("cuda", repeats=3)
    assert out["device"].startswith("cuda") and math.isfinite(out["500x20_ms"])


# --- the grid end to end on a tiny trained run -----------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from eaml_ssm.cli import main

    out = tmp_path_factory.mktemp("runs")
    args = [
        "train",
        "--env_name",
        "Pendulum-v1",
        "--num_tasks",
        "3",
        "--meta_batch_size",
        "2",
        "--steps_per_task",
        "120",
        "--num_epochs",
        "2",
        "--hidden_dim",
        "8",
        "--state_dim",
        "4",
        "--quiet",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    (folder,) = out.iterdir()
    return folder


def test_tiny_control_run_end_to_end(tiny_run: Path, tmp_path: Path) -> None:
    from eaml_ssm.cli import main
    from eaml_ssm.control.grid import load_trained

    before = {
        k: v.clone()
        for k, v in load_trained(tiny_run, torch.device("cpu")).maml.model.state_dict().items()
    }
    results = tmp_path / "c.json"
    argv = [
        "control",
        "--run",
        str(tiny_run),
        "--tasks",
        "1",
        "--episodes",
        "2",
        "--max_steps",
        "20",
        "--num_candidates",
        "16",
        "--horizon",
        "3",
        "--results",
        str(results),
        "--quiet",
    ]
    assert main(argv) == 0
    summary = json.loads(results.read_text())
    for split in ("heldout", "ood"):
        methods = summary["splits"][split]["methods"]
        assert list(methods) == [
            "no adaptation",
            "GrBAL reset (w=0)",
            "continual (w=0)",
            "hybrid (w=0.1)",
            "hybrid (w=0.1, replay_live=True)",  # replay also draws on the live episode
            "oracle",
            "random",
        ]
        assert methods["oracle"]["normalized_score"] == pytest.approx(1.0)
        assert methods["random"]["normalized_score"] == pytest.approx(0.0)
        assert methods["hybrid (w=0.1)"]["return"]["n"] == 2
        assert len(methods["hybrid (w=0.1)"]["model_error_curve"]) == 20
    # every method played the same start states
    seeds = {(e["split"], e["task"], e["episode"]): set() for e in summary["episodes"]}
    for e in summary["episodes"]:
        seeds[(e["split"], e["task"], e["episode"])].add(e["start_seed"])
    assert all(len(s) == 1 for s in seeds.values())
    assert results.with_suffix(".md").is_file()
    assert (tmp_path / "c_returns.png").is_file() and (tmp_path / "c_model_error.png").is_file()
    # the meta-learned weights in the run folder were not touched
    after = load_trained(tiny_run, torch.device("cpu")).maml.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_adaptation_keeps_the_meta_learned_weights(tiny_run: Path) -> None:
    from eaml_ssm.control.grid import ControlOptions, load_trained, model_episode

    trained = load_trained(tiny_run, torch.device("cpu"))
    before = {k: v.clone() for k, v in trained.maml.model.state_dict().items()}
    opts = ControlOptions(num_candidates=8, horizon=2, max_steps=40, adapt_every=8)
    task = draw_task("Pendulum-v1", 0, "ood")
    res = model_episode(
        trained, "hybrid (w=0.1)", task, opts, 0, LiveIds(9, 0), torch.device("cpu")
    )
    assert res.adaptations > 0
    assert all(torch.equal(trained.maml.model.state_dict()[k], v) for k, v in before.items())


def test_rerender_writes_the_marked_sections(tiny_run: Path, tmp_path: Path) -> None:
    from eaml_ssm.control.grid import ControlOptions
    from eaml_ssm.control.report import BEGIN, END, rerender
    from eaml_ssm.pipeline import control_stage

    results_dir = Path("docs/results/control")
    opts = ControlOptions(
        tasks=1,
        episodes=2,
        max_steps=10,
        num_candidates=8,
        horizon=2,
        methods=("no adaptation", "oracle", "random"),
    )
    control_stage(tiny_run, opts, tmp_path / results_dir / "tiny.json")
    (tmp_path / "docs").mkdir(exist_ok=True)
    for doc in (tmp_path / "README.md", tmp_path / "docs" / "control.md"):
        doc.write_text(f"# head\n{BEGIN}\nstale block\n{END}\ntail\n")
    rerender(results_dir, root=tmp_path)
    text = (tmp_path / "README.md").read_text()
    # (not "old": the recorded command line may contain it, e.g. tests/test_golden.py)
    assert "stale block" not in text and "| heldout | oracle |" in text and text.endswith("tail\n")
    (tmp_path / "README.md").write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        rerender(results_dir, root=tmp_path)


def test_control_options_reject_bad_values(tiny_run: Path) -> None:
    from eaml_ssm.control.grid import ControlOptions, load_trained, run_grid

    with pytest.raises(ValueError, match="--planner"):
        ControlOptions(planner="mppi").validate()
    with pytest.raises(ValueError, match="--horizon"):
        ControlOptions(horizon=0).validate()
    with pytest.raises(ValueError, match="--splits"):
        ControlOptions(splits=("train",)).validate()
    trained = load_trained(tiny_run, torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown methods"):
        run_grid(trained, ControlOptions(methods=("telepathy",)))
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        load_trained(tiny_run / "missing", torch.device("cpu"))


def test_a_fallen_pole_counts_as_out_of_goal_for_the_rest_of_the_episode() -> None:
    task = draw_task("CartPole-v1", 0, "heldout")
    res = run_episode(task, planner=None, dynamics=None, start_seed=0, max_steps=400)
    assert res.steps < 100  # random actions drop the pole early
    assert res.goal_fraction == pytest.approx((res.steps - 1) / 400)
    assert res.final_goal_fraction == 0.0


def test_random_shooting_draws_new_candidates_at_every_step() -> None:
    planner = RandomShooting(8, 3, seed=0)
    planner.reset(seed=0)
    first = planner._uniform(8, 1, torch.device("cpu"))
    second = planner._uniform(8, 1, torch.device("cpu"))
    assert not torch.equal(first, second)
