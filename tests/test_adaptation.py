"""Tests of eaml_ssm.adaptation: update_step semantics, rollback, sampling, forgetting.

Shapes: b batch, l window length, d input features, o outputs.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call

from eaml_ssm.adaptation import (
    AdaptationConfig,
    Adapter,
    ExperienceSource,
    OnlineAdapter,
)
from rust_buffer import RingBuffer

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------
# Test doubles: a numpy store with the RingBuffer contract, a stateful toy model
# ---------------------------------------------------------------------------------------------


def _ring(obs_dim: int, target_dim: int, capacity: int = 100_000, seed: int = 0) -> RingBuffer:
    return RingBuffer(capacity, obs_dim, target_dim, seed=seed)


class FacadeBuffer:
    """A torch-facing facade with get_batch(k) only (no ring API exposed under a known name)."""

    def __init__(self, ring: RingBuffer) -> None:
        self._rows = ring

    def __len__(self) -> int:
        return len(self._rows)

    def get_batch(self, k: int) -> tuple[Tensor, Tensor]:
        obs, tgt = self._rows.sample(k)
        return torch.from_numpy(obs), torch.from_numpy(tgt)


class LinearRecurrent(nn.Module):
    """h' = tanh(A h + B x), y = C h' + D x; records the hidden states it is called with."""

    def __init__(self, d: int = 3, n: int = 4, o: int = 2) -> None:
        super().__init__()
        self.n = n
        self.A = nn.Linear(n, n, bias=False)
        self.B = nn.Linear(d, n)
        self.C = nn.Linear(n, o)
        self.D = nn.Linear(d, o, bias=False)
        self.seen_hidden: list[Tensor] = []

    def init_hidden(self, batch_size: int) -> Tensor:
        return torch.zeros(batch_size, self.n, device=self.A.weight.device)

    def forward(self, x: Tensor, hidden_state: Tensor, reset: Tensor | None = None) -> Any:
        self.seen_hidden.append(hidden_state.detach().clone())
        single = x.dim() == 2
        xs = x[:, None] if single else x  # (b, l, d)
        if reset is not None and single:  # (b,) -> (b, 1)
            reset = reset[:, None]
        h, ys = hidden_state, []
        for t in range(xs.shape[1]):
            if reset is not None:
                h = h * (1 - reset[:, t : t + 1].float())
            h = torch.tanh(self.A(h) + self.B(xs[:, t]))
            ys.append(self.C(h) + self.D(xs[:, t]))
        y = torch.stack(ys, 1)  # (b, l, o)
        return (y[:, 0] if single else y), h


def _mlp(d: int = 3, o: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, o))


def _window(
    b: int = 2, length: int = 8, d: int = 3, o: int = 2, seed: int = 1
) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, length, d, generator=g), torch.randn(b, length, o, generator=g)


def _store(
    d: int = 3, o: int = 2, n: int = 200, tasks: int = 4, episode_len: int = 25
) -> RingBuffer:
    """``tasks`` tasks of ``n // tasks`` rows each, in episodes of ``episode_len`` steps."""
    ring = _ring(d, o)
    rng = np.random.default_rng(0)
    for t in range(tasks):
        for e in range(n // tasks // episode_len):
            obs, tgt = rng.normal(size=(episode_len, d)), rng.normal(size=(episode_len, o))
            ring.add(obs, tgt, task_id=t, episode_id=100 * t + e, step=np.arange(episode_len))
    return ring


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    cfg = AdaptationConfig()
    assert (cfg.learning_rate, cfg.num_steps, cfg.grad_clip_norm) == (0.01, 5, 1.0)
    assert (cfg.experience_batch_size, cfg.experience_weight, cfg.normalize) == (32, 0.1, True)
    assert AdaptationConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="optimizer must be one of"):
        AdaptationConfig(optimizer="rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sampling must be one of"):
        AdaptationConfig(sampling="closest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="burn_in"):
        AdaptationConfig(sequence_length=8, burn_in=8)
    with pytest.raises(ValueError, match="experience_weight"):
        AdaptationConfig(experience_weight=-1.0)
    with pytest.raises(ValueError, match="unknown AdaptationConfig fields"):
        AdaptationConfig.from_dict({"lr": 0.1})


class _FakeMAML:
    def __init__(self, model: nn.Module, learn: bool) -> None:
        self.model = model
        self.inner_lr = torch.tensor(0.07)
        self.num_inner_steps = 2
        self.learn_inner_lr = learn
        self._lrs = {n: 0.01 * (i + 1) for i, (n, _) in enumerate(model.named_parameters())}

    def inner_lr_for(self, name: str) -> Tensor:
        return torch.tensor(self._lrs[name])


def test_from_maml_copies_step_size_steps_and_learned_rates() -> None:
    model = _mlp()
    cfg = AdaptationConfig.from_maml(_FakeMAML(model, learn=False), experience_weight=0.3)
    assert cfg.learning_rate == pytest.approx(0.07)
    assert cfg.num_steps == 2 and cfg.param_lrs is None and cfg.experience_weight == 0.3
    maml = _FakeMAML(model, learn=True)
    adapter = Adapter.from_maml(maml, None, "cpu")
    assert adapter.config.param_lrs == pytest.approx(maml._lrs)
    # one SGD step with per-parameter rates: theta - lr_i * g_i (no clipping, no experience)
    adapter.config.grad_clip_norm = None
    adapter.config.num_steps = 1
    x, y = _window()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    adapter.update_step(x, y)  # adapts `model` in place
    loss = nn.functional.mse_loss(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()))
    for (name, p), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(adapter.params[name], p.detach() - maml._lrs[name] * g)


# ---------------------------------------------------------------------------------------------
# update_step semantics
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_update_step_adapts_the_given_model_in_place_reset_exact(optimizer: str) -> None:
    model = _mlp()
    before = _snapshot(model)
    adapter = Adapter(model, AdaptationConfig(optimizer=optimizer), _store(), "cpu")  # type: ignore[arg-type]
    x, y = _window()
    loss, steps = adapter.update_step(x, y)
    assert steps == 5 and math.isfinite(loss)
    assert any(not torch.equal(adapter.params[n], before[n]) for n in adapter.params)
    # the original's contract: the model it was given holds the adapted weights
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), adapter.params[n]), f"model parameter {n} not adapted"
    adapter.reset()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n])
        assert torch.equal(adapter.params[n], before[n])


def test_fork_adapts_a_copy_and_leaves_the_model_alone() -> None:
    model = _mlp()
    before = _snapshot(model)
    trial = Adapter(model, AdaptationConfig(), _store(), "cpu").fork()  # type: ignore[arg-type]
    trial.update_step(*_window())
    assert trial.model is not model
    assert any(not torch.equal(trial.params[n], before[n]) for n in trial.params)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"model parameter {k} was modified by a fork"


def test_fork_is_independent_and_takes_overrides() -> None:
    model = _mlp()
    adapter = Adapter(model, AdaptationConfig(experience_weight=0.0, learning_rate=0.05))
    x, y = _window()
    adapter.update_step(x, y)
    before = adapter.params
    few_shot = adapter.fork(lr_scale=2.0, num_steps=1, grad_clip_norm=None)
    for n, p in few_shot.params.items():
        assert torch.equal(p, before[n])
    few_shot.update_step(*_window(seed=5))
    assert all(torch.equal(adapter.params[n], before[n]) for n in before)
    assert few_shot.config.lr_scale == 2.0 and adapter.config.lr_scale == 1.0
    few_shot.reset()  # the fork still resets to theta*, not to the weights it started from
    for n, p in adapter.meta_params.items():
        assert torch.equal(few_shot.params[n], p)


@pytest.mark.parametrize("replay", ["rows", "sequences"])
def test_forks_with_one_seed_draw_the_same_experience_whatever_ran_before(replay: str) -> None:
    model = _ssm()
    cfg = AdaptationConfig(replay=replay, sequence_length=8, burn_in=4, seed=3)  # type: ignore[arg-type]
    base = Adapter(model, cfg, _store(n=400, episode_len=50))
    x, y = _window(b=1, length=8)
    first = base.fork()
    first.update_step(x, y)
    other = base.fork(experience_weight=1.0)  # uses the store in between
    other.update_step(x, y)
    second = base.fork()
    second.update_step(x, y)
    for n, p in first.params.items():
        assert torch.equal(p, second.params[n])


def test_update_lowers_current_loss_and_predict_uses_adapted_weights() -> None:
    model = _mlp()
    adapter = Adapter(model, AdaptationConfig(learning_rate=0.1, experience_weight=0.0))
    x, y = _window()
    before = nn.functional.mse_loss(adapter.predict(x), y)
    loss, _ = adapter.update_step(x, y)
    after = nn.functional.mse_loss(adapter.predict(x), y)
    assert loss == pytest.approx(float(before), rel=1e-6)
    assert float(after) < float(before)
    clone = adapter.adapted_model()
    torch.testing.assert_close(clone(x), adapter.predict(x))


@pytest.mark.parametrize("normalize", [True, False])
def test_empty_store_gives_exactly_the_current_loss(normalize: bool) -> None:
    model = _mlp()
    cfg = AdaptationConfig(experience_weight=0.5, normalize=normalize)
    adapter = Adapter(model, cfg, _ring(3, 2), "cpu")
    x, y = _window()
    with torch.no_grad():
        expected = float(nn.functional.mse_loss(model(x), y))
    loss, _ = adapter.update_step(x, y)
    assert loss == expected


@pytest.mark.parametrize("normalize", [True, False])
def test_experience_term_has_the_intended_weight(normalize: bool) -> None:
    """One SGD step equals the step on a hand-written hybrid loss (loss and weights)."""
    model = _mlp()
    ring = _ring(3, 2)  # every stored row is the same, so any batch is the same batch
    ring.add(np.tile([[0.5, -1.0, 2.0]], (10, 1)), np.tile([[1.0, -2.0]], (10, 1)))
    w, lr = 0.7, 0.05
    cfg = AdaptationConfig(
        learning_rate=lr, num_steps=1, grad_clip_norm=None, experience_weight=w,
        experience_batch_size=4, normalize=normalize,
    )  # fmt: skip
    adapter = Adapter(model, cfg, ring, "cpu")
    x, y = _window()
    params = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    loss, steps = adapter.update_step(x, y)

    obs, tgt = torch.tensor(ring.obs_view()[:4]), torch.tensor(ring.target_view()[:4])
    l_cur = nn.functional.mse_loss(functional_call(model, params, (x,)), y)
    l_exp = nn.functional.mse_loss(functional_call(model, params, (obs,)), tgt)
    hand = (l_cur + w * l_exp) / (1 + w) if normalize else l_cur + w * l_exp
    assert steps == 1 and loss == pytest.approx(hand.item(), rel=1e-6)
    grads = torch.autograd.grad(hand, list(params.values()))
    for (name, p), g in zip(params.items(), grads, strict=True):
        torch.testing.assert_close(adapter.params[name], p.detach() - lr * g)


def test_anchor_term_adds_mu_times_squared_distance() -> None:
    model = _mlp()
    mu = 0.3
    cfg = AdaptationConfig(num_steps=1, experience_weight=0.0, anchor_weight=mu)
    adapter = Adapter(model, cfg)
    x, y = _window()
    adapter.update_step(x, y)
    total, current = adapter.loss(x, y)
    drift = sum(((adapter.params[n] - p) ** 2).sum() for n, p in adapter.meta_params.items())
    assert float(total) == pytest.approx(float(current + mu * drift), rel=1e-6)
    assert float(drift) > 0


def test_hidden_state_is_not_advanced_across_inner_steps() -> None:
    torch.manual_seed(0)
    model = LinearRecurrent()
    cfg = AdaptationConfig(num_steps=4, experience_weight=0.0)
    adapter = Adapter(model, cfg)
    x, y = _window(b=2, length=6)
    h0 = torch.randn(2, 4)
    model.seen_hidden.clear()
    start = copy.deepcopy(model)
    loss, steps = adapter.update_step(x, y, h0)
    assert steps == 4
    # num_steps + 1 forward passes of the window (the last checks the final weights)
    assert len(model.seen_hidden) == 5
    for h in model.seen_hidden:
        torch.testing.assert_close(h, h0)
    # the reported loss is the loss of the window from h0 with the meta-learned weights
    with torch.no_grad():
        y_hat, _ = LinearRecurrent.forward(start, x, h0)
    assert loss == pytest.approx(float(nn.functional.mse_loss(y_hat, y)), rel=1e-6)


def test_sequence_replay_runs_from_own_context_with_burn_in() -> None:
    torch.manual_seed(0)
    model = LinearRecurrent()
    ring = _ring(3, 2)
    ring.add(np.ones((12, 3)), np.ones((12, 2)), episode_id=0, step=np.arange(12))  # all alike
    cfg = AdaptationConfig(
        num_steps=1, experience_weight=1.0, experience_batch_size=2,
        sequence_length=10, burn_in=4, normalize=False,
    )  # fmt: skip
    adapter = Adapter(model, cfg, ring)
    x, y = _window(b=1, length=5)
    h0 = torch.randn(1, 4)
    ref = copy.deepcopy(model)
    loss, _ = adapter.update_step(x, y, h0)
    seq, tgt = torch.ones(2, 10, 3), torch.ones(2, 10, 2)
    _, h_burn = ref(seq[:, :4], torch.zeros(2, 4))
    y_rest, _ = ref(seq[:, 4:], h_burn)
    l_exp = nn.functional.mse_loss(y_rest, tgt[:, 4:])
    l_cur = nn.functional.mse_loss(ref(x, h0)[0], y)
    assert loss == pytest.approx((l_cur + l_exp).item(), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# Divergence guard
# ---------------------------------------------------------------------------------------------


class _NaNAfter(nn.Module):
    """A linear model whose output turns NaN once its weight moved away from the start."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.start = self.lin.weight.detach().clone()

    def forward(self, x: Tensor) -> Tensor:
        y = self.lin(x)
        moved = not torch.equal(self.lin.weight.detach(), self.start)
        return y * float("nan") if moved else y


def test_nan_loss_is_rolled_back_and_counted() -> None:
    torch.manual_seed(0)
    model = _NaNAfter()
    adapter = Adapter(model, AdaptationConfig(num_steps=3, experience_weight=0.0))
    x, y = _window()
    loss, steps = adapter.update_step(x, y)
    assert math.isfinite(loss) and steps == 0
    assert adapter.stats["rollbacks"] == 1 and adapter.stats["nonfinite"] == 1
    for n, p in model.named_parameters():
        assert torch.equal(adapter.params[n], p.detach())
    assert adapter.last_update is not None and adapter.last_update.rolled_back


def test_exploding_step_is_rolled_back() -> None:
    model = _mlp()
    cfg = AdaptationConfig(learning_rate=1e4, grad_clip_norm=None, experience_weight=0.0)
    adapter = Adapter(model, cfg)
    x, y = _window()
    adapter.update_step(x, y)
    assert adapter.stats["rollbacks"] == 1 and adapter.stats["exploding"] == 1
    total, _ = adapter.loss(x, y)
    assert math.isfinite(float(total))
    assert float(total) <= 10.0 * adapter.last_update.loss  # type: ignore[union-attr]


def test_nan_input_leaves_weights_unchanged() -> None:
    model = _mlp()
    adapter = Adapter(model, AdaptationConfig())
    x, y = _window()
    x[0, 0, 0] = float("nan")
    _, steps = adapter.update_step(x, y)
    assert steps == 0 and adapter.stats["rollbacks"] == 1
    for n, p in model.named_parameters():
        assert torch.equal(adapter.params[n], p.detach())


# ---------------------------------------------------------------------------------------------
# Experience sampling strategies
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "task_balanced", "recent", "nearest"])
def test_every_strategy_returns_rows_of_the_right_shape(strategy: str) -> None:
    source = ExperienceSource(_store(), seed=0)
    query = torch.randn(5, 3)
    obs, tgt = source.rows(strategy, 7, query)  # type: ignore[arg-type]
    assert obs.shape == (7, 3) and tgt.shape == (7, 2)
    assert obs.dtype == torch.float32 and torch.isfinite(obs).all()


class NoViews:
    """A store with the sampling methods but without zero-copy views."""

    def __init__(self, ring: RingBuffer) -> None:
        self._r = ring
        self.sample, self.task_counts = ring.sample, ring.task_counts
        self.sample_task_rows = ring.sample_task_rows
        self.sample_windows_into = ring.sample_windows_into
        self.obs_dim, self.target_dim = ring.obs_dim, ring.target_dim

    def __len__(self) -> int:
        return len(self._r)


def _draw(
    source: ExperienceSource, strategy: Any, k: int, query: Tensor | None = None, **kwargs: Any
) -> tuple[Tensor, Tensor]:
    """``source.rows(...)``, which must find something to replay."""
    batch = source.rows(strategy, k, query, **kwargs)
    assert batch is not None
    return batch


@pytest.mark.parametrize("views", [True, False])
def test_task_balanced_draws_from_several_tasks(views: bool) -> None:
    ring = _ring(1, 1)
    ring.add(np.zeros((1000, 1)), np.zeros((1000, 1)), task_id=0)
    for t in (1, 2, 3):
        ring.add(np.full((5, 1), t), np.zeros((5, 1)), task_id=t)
    store = ring if views else NoViews(ring)
    assert _draw(ExperienceSource(store, seed=0), "uniform", 8)[0].shape == (8, 1)
    obs, _ = _draw(ExperienceSource(store, seed=0), "task_balanced", 32)
    values, counts = np.unique(obs.numpy(), return_counts=True)
    assert set(values.tolist()) == {0.0, 1.0, 2.0, 3.0}
    assert counts.tolist() == [8, 8, 8, 8]
    uniform, _ = _draw(ExperienceSource(ring, seed=0), "uniform", 32)
    assert (uniform.numpy() == 0).mean() > 0.8  # uniform sampling is dominated by task 0


def test_nearest_returns_the_closest_rows() -> None:
    ring = _ring(2, 1)
    rng = np.random.default_rng(0)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    for task, c in enumerate(centers):
        ring.add(c + 0.1 * rng.normal(size=(100, 2)), np.full((100, 1), task), task_id=task)
    query = torch.tensor([[10.0, 0.2], [9.8, -0.1]])
    obs, tgt = _draw(ExperienceSource(ring, seed=0), "nearest", 20, query, candidates=10_000)
    assert (tgt == 1).all()
    # and they are the 20 nearest of all rows (oracle: brute force in normalised space)
    stored = ring.obs_view()
    mean, std = stored.mean(0), stored.std(0)
    z, q = (stored - mean) / std, (query.numpy() - mean) / std
    d = np.sqrt(((z[:, None] - q[None]) ** 2).sum(-1)).min(1)
    expected = stored[np.argsort(d)[:20]]
    np.testing.assert_allclose(np.sort(obs.numpy(), 0), np.sort(expected, 0), rtol=1e-5)


@pytest.mark.parametrize("strategy", ["uniform", "task_balanced", "recent", "nearest"])
def test_every_strategy_returns_windows_inside_one_episode(strategy: str) -> None:
    ring = _store(n=400, tasks=4, episode_len=10)
    source = ExperienceSource(ring, seed=0)
    obs, tgt = source.windows(strategy, 6, 7, torch.randn(5, 3))  # type: ignore[arg-type]
    assert obs.shape == (6, 7, 3) and tgt.shape == (6, 7, 2)
    rows = {tuple(r): i for i, r in enumerate(ring.obs_view().round(5).tolist())}
    for window in obs.numpy().round(5):
        idx = np.array([rows[tuple(r)] for r in window.tolist()])
        assert (np.diff(idx) == 1).all() and len(set(ring.episode_id_view()[idx])) == 1


@pytest.mark.parametrize("strategy", ["task_balanced", "recent", "nearest"])
def test_windows_from_a_wrapped_ring_stay_inside_episodes(strategy: str) -> None:
    ring = _ring(1, 1, capacity=50)
    for e in range(7):  # 70 rows into 50 slots: the ring wraps over episodes 0 and 1
        steps = np.arange(10)
        ring.add((100.0 * e + steps)[:, None], np.zeros((10, 1)), task_id=e % 3,
                 episode_id=e, step=steps)  # fmt: skip
    source = ExperienceSource(ring, seed=1)
    obs, _ = source.windows(strategy, 16, 4, torch.tensor([[403.0]]), recent=10)  # type: ignore[arg-type]
    for w in obs[..., 0].numpy():
        assert (np.diff(w) == 1).all() and len({int(v) // 100 for v in w}) == 1
        assert w.min() >= 200  # episodes 0 and 1 were overwritten
    if strategy == "recent":
        assert obs.min() >= 600  # the newest 10 rows are episode 6


def test_task_balanced_windows_cover_tasks_and_nearest_windows_hold_nearest_rows() -> None:
    ring = _ring(1, 1)
    for t in range(4):  # task t: obs = 100 t + step, in episodes of 20 steps
        for e in range(5 if t else 50):
            steps = np.arange(20)
            ring.add((100.0 * t + steps)[:, None], np.zeros((20, 1)), task_id=t,
                     episode_id=1000 * t + e, step=steps)  # fmt: skip
    source = ExperienceSource(ring, seed=0)
    obs, _ = source.windows("task_balanced", 8, 5)
    assert sorted({int(w[0, 0] // 100) for w in obs.numpy()}) == [0, 1, 2, 3]
    obs, _ = source.windows("nearest", 4, 5, torch.tensor([[203.0]]), candidates=100_000)
    assert all(203.0 in w for w in obs[..., 0].numpy().tolist())


def test_transform_is_applied_to_replayed_batches() -> None:
    ring = _store()
    shift = lambda o, t: (o + 100.0, t - 100.0)  # noqa: E731
    obs, tgt = _draw(ExperienceSource(ring, seed=0, transform=shift), "uniform", 50)
    assert obs.min() > 90 and tgt.max() < -90
    # nearest compares the query with transformed rows
    obs, _ = _draw(
        ExperienceSource(ring, transform=shift),
        "nearest",
        3,
        torch.full((1, 3), 100.0),
        candidates=1000,
    )
    assert obs.min() > 90


def test_recent_samples_only_the_newest_rows() -> None:
    ring = _ring(1, 1)
    ring.add(np.arange(100.0)[:, None], np.zeros((100, 1)))
    obs, _ = _draw(ExperienceSource(ring), "recent", 50, recent=10)
    assert obs.min() >= 90


def test_facade_buffer_supports_uniform_and_rejects_others_clearly() -> None:
    facade = FacadeBuffer(_store())
    adapter = Adapter(_mlp(), AdaptationConfig(), facade)
    x, y = _window()
    _, steps = adapter.update_step(x, y)
    assert steps == 5
    with pytest.raises(ValueError, match="task_balanced replay needs a store with"):
        ExperienceSource(facade).rows("task_balanced", 4)
    with pytest.raises(ValueError, match="nearest replay needs a store with"):
        ExperienceSource(facade, seed=0).rows("nearest", 3, torch.zeros(1, 3), candidates=50)
    assert _draw(ExperienceSource(facade, seed=0), "uniform", 3)[0].shape == (3, 3)


def test_experience_buffer_facade_replays_normalized_rows() -> None:
    """eaml_ssm.buffer.ExperienceBuffer with a Normalizer: every strategy sees model space."""
    from eaml_ssm.buffer import ExperienceBuffer
    from eaml_ssm.features import Normalizer

    rng = np.random.default_rng(0)
    raw_x = (5.0 * rng.normal(size=(600, 3)) + 3.0).astype(np.float32)
    raw_y = (2.0 * rng.normal(size=(600, 2)) - 1.0).astype(np.float32)
    norm = Normalizer.from_arrays(raw_x, raw_y, state_dim=3)
    buf = ExperienceBuffer(1000, normalizer=norm, seed=0)
    source = ExperienceSource(buf, seed=0)
    assert len(source) == 0  # the store is made lazily at the first add
    x_model = norm.normalize_inputs(torch.from_numpy(raw_x))  # the facade speaks model space
    buf.add(x_model, norm.normalize_targets(torch.from_numpy(raw_y)))
    for strategy in ("uniform", "task_balanced", "nearest"):
        obs, tgt = source.rows(strategy, 500, torch.zeros(4, 3), candidates=600)  # type: ignore[arg-type]
        if strategy != "nearest":
            assert obs.mean().abs() < 0.2 and (obs.std(0) - 1).abs().max() < 0.2
            assert tgt.mean().abs() < 0.2
        else:
            assert obs.abs().max() < 3.0  # rows near the normalized origin, not raw (~3 +- 5)
    with pytest.raises(ValueError, match="already normalizes"):
        ExperienceSource(buf, transform=norm)


def test_bad_inputs_raise_clear_errors() -> None:
    adapter = Adapter(_mlp(), AdaptationConfig())
    with pytest.raises(ValueError, match="matching leading dims"):
        adapter.update_step(torch.zeros(2, 8, 3), torch.zeros(2, 7, 2))
    with pytest.raises(TypeError, match="must be torch tensors"):
        adapter.update_step(np.zeros((2, 3)), torch.zeros(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.nn\.Module"):
        Adapter(object(), AdaptationConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not trainable parameters"):
        Adapter(_mlp(), AdaptationConfig(param_lrs={"nope": 0.1}))


# ---------------------------------------------------------------------------------------------
# Online use and forgetting
# ---------------------------------------------------------------------------------------------


def test_online_reset_mode_always_adapts_from_meta_weights() -> None:
    model = _mlp()
    x, y = _window(b=1, length=32)
    results = {}
    for mode in ("reset", "continual"):
        adapter = Adapter(model, AdaptationConfig(mode=mode)).fork()  # type: ignore[arg-type]
        online = OnlineAdapter(adapter, window=8)
        for t in range(32):
            online.step(x[:, t], y[:, t])
        results[mode] = online
    reset_losses = [loss for _, loss, _ in results["reset"].losses]
    # GrBAL: every update starts from theta*, so its starting loss is that of theta* on the window
    for (t, loss, _), start in zip(results["reset"].losses, range(0, 32, 8), strict=True):
        assert t == start + 8
        ref = nn.functional.mse_loss(model(x[:, start : start + 8]), y[:, start : start + 8])
        assert loss == pytest.approx(ref.item(), rel=1e-6)
    assert len(reset_losses) == 4 and results["continual"].adapter.stats["updates"] == 4


def test_online_stateful_carries_hidden_state() -> None:
    torch.manual_seed(0)
    model = LinearRecurrent()
    adapter = Adapter(model, AdaptationConfig(experience_weight=0.0)).fork()
    online = OnlineAdapter(adapter, window=4)
    x, y = _window(b=1, length=8)
    preds = [online.step(x[:, t], y[:, t]) for t in range(8)]
    assert online.adapter.stats["updates"] == 2
    # before the first update the predictions are the model's own step-by-step outputs
    y_ref, _ = model(x[:, :4], torch.zeros(1, 4))
    torch.testing.assert_close(torch.stack(preds[:4], 1), y_ref)


@pytest.mark.parametrize("kind", ["recurrent", "ssm"])
@pytest.mark.parametrize(("window", "every"), [(4, 4), (5, 3)])
def test_online_adapter_equals_the_stream_driven_by_hand(
    kind: str, window: int, every: int
) -> None:
    """Oracle past the first update: the same stream driven by hand through the model's own
    forward and ``Adapter.update_step`` gives the same predictions, hidden state and weights.

    By hand: ``hs[t]`` is the state carried into step t; every ``every`` steps the adapter
    adapts on the latest ``window`` steps from ``hs[start]`` (the state that preceded the
    window), then the carried state is recomputed through the window with the new weights.
    """
    model = LinearRecurrent() if kind == "recurrent" else _ssm()
    cfg = AdaptationConfig(
        learning_rate=0.2, num_steps=2, experience_weight=0.3, sequence_length=6, burn_in=2, seed=0
    )
    base = Adapter(model, cfg, _store(n=400))
    online, by_hand = OnlineAdapter(base.fork(), window=window, adapt_every=every), base.fork()
    steps = 6 * every + 2  # six updates, then two more predictions
    x, y = _window(b=1, length=steps, seed=3)
    starts = {0, 9}  # episode starts: step 9 falls inside an adaptation window
    resets = [
        torch.tensor([t in starts]) if t % 2 == 0 or t in starts else None for t in range(steps)
    ]
    mask = torch.tensor([[float(t in starts) for t in range(steps)]])  # (1, l)
    online.start(batch_size=1)
    h = by_hand.init_hidden(1)
    hs: list[Tensor] = []
    for t in range(steps):
        hs.append(h)
        with torch.no_grad():  # the model's own forward with the current weights
            want, h = by_hand.model(x[:, t], h, resets[t])
        got = online.step(x[:, t], y[:, t], resets[t])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert online.hidden is not None
        if (t + 1) % every == 0:
            lo = max(0, t + 1 - window)
            span = slice(lo, t + 1)
            by_hand.update_step(x[:, span], y[:, span], hs[lo], reset=mask[:, span])
            with torch.no_grad():
                _, h = by_hand.model(x[:, span], hs[lo], mask[:, span])
        torch.testing.assert_close(online.hidden, h, rtol=1e-5, atol=1e-6)
    assert online.adapter.stats["updates"] == by_hand.stats["updates"] == 6
    for name, p in by_hand.params.items():
        torch.testing.assert_close(online.adapter.params[name], p, rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(p, by_hand.meta_params[n]) for n, p in by_hand.params.items())


def _linear_task(w: Tensor, context: float, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Rows (x, context * x) -> y = w . x: tasks differ in slope and in a context feature."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g)  # (n, 2)
    return torch.cat([x, context * x], 1), x @ w[:, None]  # (n, 4), (n, 1)


def test_experience_replay_forgets_task_a_less() -> None:
    """Store holds task A; adapting online to task B with replay keeps A's error lower.

    The linear model y = p . x + c q . x can fit both tasks at once (p + q = w_a for c = 1,
    p + q / 2 = w_b for c = 1/2), but the gradient of task B alone drags the weights off
    task A's solution; replaying A steers the updates towards the joint solution.
    """
    w_a, w_b = torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 2.0])
    xa, ya = _linear_task(w_a, 1.0, 400, seed=0)
    ring = _ring(4, 1)
    ring.add(xa.numpy(), ya.numpy(), task_id=0)
    model = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.cat([w_a, torch.zeros(2)])[None])  # theta* solves task A
    xb, yb = _linear_task(w_b, 0.5, 160, seed=1)
    xa_test, ya_test = _linear_task(w_a, 1.0, 200, seed=2)
    xb_test, yb_test = _linear_task(w_b, 0.5, 200, seed=3)
    unadapted_b = nn.functional.mse_loss(model(xb_test), yb_test).item()
    errors = {}
    for weight in (0.0, 0.3):
        cfg = AdaptationConfig(learning_rate=0.3, num_steps=5, experience_weight=weight, seed=0)
        online = OnlineAdapter(Adapter(model, cfg, ring), window=16)
        for t in range(160):
            online.step(xb[t : t + 1], yb[t : t + 1])
        adapted = online.adapter
        forget = float(nn.functional.mse_loss(adapted.predict(xa_test), ya_test))
        new = float(nn.functional.mse_loss(adapted.predict(xb_test), yb_test))
        errors[weight] = (forget, new)
    (forget_plain, new_plain), (forget_hybrid, new_hybrid) = errors[0.0], errors[0.3]
    logging.getLogger(__name__).info("forgetting test: %s, unadapted B %.4f", errors, unadapted_b)
    assert forget_plain > 5.0  # plain fine-tuning forgets task A
    assert forget_hybrid < 0.2 * forget_plain
    assert new_plain < 0.01 * unadapted_b
    assert new_hybrid < 0.2 * unadapted_b  # and the hybrid still learns task B


# ---------------------------------------------------------------------------------------------
# The real SSM and MetaMAML
# ---------------------------------------------------------------------------------------------


def _ssm() -> nn.Module:
    from eaml_ssm.ssm import SSM

    torch.manual_seed(0)
    return SSM(state_dim=4, input_dim=3, output_dim=2, hidden_dim=8, num_layers=1)


@pytest.mark.parametrize("learn_inner_lr", [False, True])
@pytest.mark.parametrize("stateful", [False, True])
def test_from_maml_update_equals_maml_adapt_task(stateful: bool, learn_inner_lr: bool) -> None:
    """Oracle: with experience_weight=0 an update is exactly MetaMAML.adapt_task."""
    from eaml_ssm.maml import MetaMAML

    model = _ssm() if stateful else _mlp()
    maml = MetaMAML(model, inner_lr=0.05, num_inner_steps=3, learn_inner_lr=learn_inner_lr)
    if learn_inner_lr:  # make the learned per-element rates differ from the scalar one
        with torch.no_grad():
            for lr in maml.inner_lrs.values():
                lr.uniform_(0.01, 0.1)
    x, y = _window(b=2, length=6)
    h0 = torch.randn(2, int(model.hidden_size)) if stateful else None  # type: ignore[arg-type]
    adapter = Adapter.from_maml(maml, _store(), "cpu", experience_weight=0.0)
    assert adapter.config.num_steps == 3 and adapter.config.learning_rate == 0.05
    plain = adapter.fork(param_lrs=None, learning_rate=0.05)  # drops the learned rates
    start = copy.deepcopy(model)
    expected = maml.adapt_task(x, y, initial_hidden_state=h0)
    _, steps = adapter.update_step(x, y, h0)
    assert steps == 3
    for name, p in expected.items():
        torch.testing.assert_close(adapter.params[name], p.detach(), rtol=1e-5, atol=1e-6)
    for name, p in model.named_parameters():  # written into maml.model, in place
        assert torch.equal(p.detach(), adapter.params[name])
    plain.update_step(x, y, h0)
    fixed = MetaMAML(start, inner_lr=0.05, num_inner_steps=3).adapt_task(x, y, h0)
    for name, p in fixed.items():
        torch.testing.assert_close(plain.params[name], p.detach(), rtol=1e-5, atol=1e-6)


def test_ssm_hybrid_sequence_replay_and_online_stream() -> None:
    model = _ssm()
    ring = _store(n=400)
    cfg = AdaptationConfig(experience_weight=0.3, sequence_length=8, burn_in=4, num_steps=2)
    adapter = Adapter(model, cfg, ring)
    assert adapter.stateful and adapter._use_sequences()
    x, y = _window(b=1, length=24)
    online = OnlineAdapter(adapter, window=8)
    online.start(batch_size=1)
    resets = [torch.tensor([t == 12]) for t in range(24)]  # an episode starts at t = 12
    preds = [online.step(x[:, t], y[:, t], resets[t]) for t in range(24)]
    assert torch.stack(preds, 1).shape == (1, 24, 2)
    assert adapter.stats["updates"] == 3 and adapter.stats["rollbacks"] == 0
    assert online.hidden is not None and online.hidden.shape == (1, model.hidden_size)  # type: ignore[operator]
    assert any(not torch.equal(adapter.params[n], p) for n, p in adapter.meta_params.items())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_adapter_on_cuda_moves_and_adapts_the_model_there() -> None:
    model = _ssm()  # on the CPU
    adapter = Adapter(model, AdaptationConfig(sequence_length=8, burn_in=4), _store(), "cuda")
    x, y = _window(b=1, length=8)  # CPU tensors are moved to the adapter's device
    loss, steps = adapter.update_step(x, y)
    assert steps == 5 and math.isfinite(loss)
    assert all(p.is_cuda for p in adapter.params.values())
    y_hat, h = adapter.predict(x)
    assert y_hat.is_cuda and h.is_cuda
    for n, p in model.named_parameters():  # the given model, moved and adapted in place
        assert p.is_cuda and torch.equal(p.detach(), adapter.params[n])


def test_nonnegative_lrs_clamps_learned_step_sizes() -> None:
    model = torch.nn.Linear(2, 1)
    lrs = {"weight": torch.tensor([[0.1, -0.2]]), "bias": torch.tensor([-0.05])}
    config = AdaptationConfig(num_steps=1, grad_clip_norm=None, nonnegative_lrs=False)
    signed = Adapter(model, config, param_lrs=lrs)
    clamped = signed.fork(nonnegative_lrs=True)
    x, y = torch.ones(4, 2), torch.full((4, 1), 10.0)
    for adapter in (signed, clamped):
        adapter.reset()
        adapter.update_step(x, y)
    w0 = signed.meta_params["weight"]
    # the clamped adapter never moves an entry whose learned rate is negative
    assert torch.equal(clamped.params["weight"][0, 1], w0[0, 1])
    assert torch.equal(clamped.params["bias"], signed.meta_params["bias"])
    assert not torch.equal(signed.params["weight"][0, 1], w0[0, 1])
    assert not torch.equal(clamped.params["weight"][0, 0], w0[0, 0])


def test_step_sizes_are_clamped_by_default_in_continual_mode_only() -> None:
    # the default chosen by the step-size study (docs/evaluation.md): clamp when continual
    lrs = {"weight": torch.tensor([[0.1, -0.2]]), "bias": torch.tensor([-0.05])}
    continual = Adapter(torch.nn.Linear(2, 1), AdaptationConfig(), param_lrs=lrs)
    assert continual.config.clamps_lrs
    assert float(continual._lrs["weight"].min()) == 0.0 and float(continual._lrs["bias"]) == 0.0
    reset = continual.fork(mode="reset")
    assert not reset.config.clamps_lrs
    assert torch.equal(reset._lrs["weight"], lrs["weight"])  # GrBAL: the steps it was trained for
    assert not AdaptationConfig(nonnegative_lrs=False).clamps_lrs
    assert AdaptationConfig(mode="reset", nonnegative_lrs=True).clamps_lrs
