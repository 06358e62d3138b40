"""Tests of eaml_ssm.maml.MetaMAML: finite-difference and detached oracles, vmap vs loop, state."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
import torch
from torch import nn

from eaml_ssm.maml import MetaMAML, TaskBatch
from eaml_ssm.model_call import is_stateful
from eaml_ssm.ssm import SSM

# One torch thread: with 2 threads on the shared 2-core machine, contention makes OpenMP
# spin-waits dominate (a 3 s test took 66 s); the Makefile also sets OMP_NUM_THREADS=1.
torch.set_num_threads(1)

F64 = torch.float64


def _mlp(dtype: torch.dtype = F64) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)


def _tiny_ssm(dtype: torch.dtype = F64) -> SSM:
    torch.manual_seed(0)
    return SSM(2, 2, 1, hidden_dim=4, num_layers=1, mlp_ratio=1).to(dtype)


def _tasks(
    n: int, seq: bool, dtype: torch.dtype = F64, seed: int = 0, b: int = 3, length: int = 5
) -> list[tuple[torch.Tensor, ...]]:
    gen = torch.Generator().manual_seed(seed)
    shape_x = (b, length, 2) if seq else (b, 2)
    out: list[tuple[torch.Tensor, ...]] = []
    for _ in range(n):
        scale = torch.rand(1, generator=gen, dtype=dtype) + 0.5
        sx, qx = (torch.randn(shape_x, generator=gen, dtype=dtype) for _ in range(2))
        sy, qy = (scale * x.sum(-1, keepdim=True).sin() for x in (sx, qx))
        out.append((sx, sy, qx, qy))
    return out


def _flat_grad(maml: MetaMAML, tasks: list[tuple[torch.Tensor, ...]], **kw: object) -> torch.Tensor:
    loss = maml.meta_loss(tasks, **kw)  # type: ignore[arg-type]
    grads = torch.autograd.grad(loss, maml.meta_parameters())
    return torch.cat([g.reshape(-1) for g in grads])


def _directional_check(maml: MetaMAML, tasks: list[tuple[torch.Tensor, ...]]) -> None:
    """grad . v == (L(theta + eps v) - L(theta - eps v)) / (2 eps) for random directions v."""
    analytic = _flat_grad(maml, tasks)
    params = maml.meta_parameters()
    gen = torch.Generator().manual_seed(7)
    eps = 1e-6
    for _ in range(6):
        v = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
        with torch.no_grad():
            for p, vi in zip(params, v, strict=True):
                p += eps * vi
            up = maml.meta_loss(tasks).item()
            for p, vi in zip(params, v, strict=True):
                p -= 2 * eps * vi
            down = maml.meta_loss(tasks).item()
            for p, vi in zip(params, v, strict=True):
                p += eps * vi
        flat_v = torch.cat([vi.reshape(-1) for vi in v])
        want = (up - down) / (2 * eps)
        assert abs(float(analytic @ flat_v) - want) < 1e-7 + 1e-5 * abs(want)


def _finite_difference(maml: MetaMAML, tasks: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    eps, out = 1e-6, []
    with torch.no_grad():
        for p in maml.meta_parameters():
            flat = p.view(-1)
            for i in range(flat.numel()):
                old = flat[i].item()
                flat[i] = old + eps
                up = maml.meta_loss(tasks).item()
                flat[i] = old - eps
                down = maml.meta_loss(tasks).item()
                flat[i] = old
                out.append((up - down) / (2 * eps))
    return torch.tensor(out, dtype=F64)


@pytest.mark.parametrize("kind", ["mlp", "ssm"])
@pytest.mark.parametrize("learn_inner_lr", [False, True], ids=["maml", "metasgd"])
def test_meta_gradient_matches_finite_differences(kind: str, learn_inner_lr: bool) -> None:
    seq = kind == "ssm"
    model = _tiny_ssm() if seq else _mlp()
    maml = MetaMAML(model, inner_lr=0.1, num_inner_steps=2, learn_inner_lr=learn_inner_lr)
    tasks = _tasks(2, seq, b=2, length=4)
    analytic = _flat_grad(maml, tasks)
    if seq:  # every coordinate would take seconds; random directions cover all of them
        _directional_check(maml, tasks)
    else:
        numeric = _finite_difference(maml, tasks)
        torch.testing.assert_close(analytic, numeric, atol=1e-7, rtol=1e-5)
    # and it is really second order: first order gives a different gradient here
    maml.first_order = True
    assert (_flat_grad(maml, tasks) - analytic).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["mlp", "ssm"])
def test_first_order_equals_detached_computation(kind: str) -> None:
    seq = kind == "ssm"
    model = _tiny_ssm() if seq else _mlp()
    lr = 0.1
    maml = MetaMAML(model, inner_lr=lr, first_order=True)
    tasks = _tasks(3, seq)
    got = _flat_grad(maml, tasks)

    params = dict(model.named_parameters())
    total = [torch.zeros_like(p) for p in params.values()]
    for sx, sy, qx, qy in tasks:
        h0 = _h0(model, sx.shape[0])
        sup = nn.functional.mse_loss(_run(model, params, sx, h0)[0], sy)
        g = torch.autograd.grad(sup, list(params.values()))
        fast = {
            k: (p - lr * gi).detach().requires_grad_(True)
            for (k, p), gi in zip(params.items(), g, strict=True)
        }
        h_q = _run(model, fast, sx, h0)[1] if seq else None
        query = nn.functional.mse_loss(_run(model, fast, qx, h_q)[0], qy)
        for acc, gq in zip(total, torch.autograd.grad(query, list(fast.values())), strict=True):
            acc += gq / len(tasks)
    torch.testing.assert_close(got, torch.cat([t.reshape(-1) for t in total]), atol=1e-12, rtol=0)


def _h0(model: nn.Module, batch: int) -> torch.Tensor | None:
    return model.init_hidden(batch) if isinstance(model, SSM) else None


def _run(
    model: nn.Module, params: Mapping[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if h is None:
        return torch.func.functional_call(model, dict(params), (x,)), None
    return torch.func.functional_call(model, dict(params), (x, h))


@pytest.mark.parametrize("kind", ["mlp", "ssm"])
def test_one_inner_step_lowers_support_loss(kind: str) -> None:
    seq = kind == "ssm"
    model = _tiny_ssm() if seq else _mlp()
    maml = MetaMAML(model, inner_lr=0.05)
    for sx, sy, _, _ in _tasks(4, seq):
        h0 = _h0(model, sx.shape[0])
        before = nn.functional.mse_loss(
            maml.functional_forward(sx, h0, dict(model.named_parameters()))[0], sy
        )
        with torch.no_grad():
            fast = maml.adapt_task(sx, sy, num_steps=1)
            after = nn.functional.mse_loss(maml.functional_forward(sx, h0, fast)[0], sy)
        assert after < before


@pytest.mark.parametrize("kind", ["mlp", "ssm"])
@pytest.mark.parametrize("learn_inner_lr", [False, True], ids=["maml", "metasgd"])
def test_vmap_equals_loop(kind: str, learn_inner_lr: bool) -> None:
    seq = kind == "ssm"
    model = _tiny_ssm() if seq else _mlp()
    maml = MetaMAML(model, num_inner_steps=2, learn_inner_lr=learn_inner_lr)
    tasks = _tasks(4, seq)
    kwargs: dict[str, object] = {}
    if seq:  # per-task nonzero initial states exercise the batched hidden-state path
        gen = torch.Generator().manual_seed(3)
        kwargs["initial_hidden_state"] = [
            torch.randn(3, _tiny_ssm().hidden_size, generator=gen, dtype=F64) for _ in range(4)
        ]
    vm = _flat_grad(maml, tasks, **kwargs)
    maml.use_vmap = False
    loop = _flat_grad(maml, tasks, **kwargs)
    torch.testing.assert_close(vm, loop, atol=1e-12, rtol=1e-10)
    # a TaskBatch of stacked tensors is the same meta-batch
    maml.use_vmap = True
    batch = TaskBatch(*(torch.stack(part) for part in zip(*tasks, strict=True)))
    torch.testing.assert_close(_flat_grad(maml, batch, **kwargs), loop, atol=1e-12, rtol=1e-10)  # type: ignore[arg-type]


def test_ragged_tasks_fall_back_to_loop() -> None:
    maml = MetaMAML(_tiny_ssm())
    tasks = _tasks(2, True, length=5) + _tasks(1, True, length=7, seed=1)
    loss = maml.meta_loss(tasks)
    manual = torch.stack([maml.meta_loss([t]) for t in tasks]).mean()
    torch.testing.assert_close(loss, manual)


def test_query_continues_from_support_final_state() -> None:
    model = _tiny_ssm()
    maml = MetaMAML(model, inner_lr=0.1)
    (sx, sy, qx, qy) = _tasks(1, True)[0]
    h0 = torch.randn(3, model.hidden_size, dtype=F64)
    fast = maml.adapt_task(sx, sy, initial_hidden_state=h0)
    _, h_support = maml.functional_forward(sx, h0, fast)
    want = nn.functional.mse_loss(maml.functional_forward(qx, h_support, fast)[0], qy)
    got = maml.meta_loss([(sx, sy, qx, qy)], initial_hidden_state=h0)
    torch.testing.assert_close(got, want, atol=1e-14, rtol=0)
    # a given query state replaces the continuation
    hq = torch.randn(3, model.hidden_size, dtype=F64)
    want_q = nn.functional.mse_loss(maml.functional_forward(qx, hq, fast)[0], qy)
    got_q = maml.meta_loss([(sx, sy, qx, qy)], initial_hidden_state=h0, query_hidden_state=hq)
    torch.testing.assert_close(got_q, want_q, atol=1e-14, rtol=0)


def _with_resets(tasks: list[tuple[torch.Tensor, ...]]) -> list[tuple[torch.Tensor, ...]]:
    out: list[tuple[torch.Tensor, ...]] = []
    for i, (sx, sy, qx, qy) in enumerate(tasks):
        s_reset = torch.zeros(sx.shape[:2], dtype=torch.bool)
        q_reset = torch.zeros(qx.shape[:2], dtype=torch.bool)
        s_reset[0, 2] = True  # an episode boundary inside the support
        q_reset[i % 3, 0] = True  # one query stream starts a new episode
        out.append((sx, sy, qx, qy, s_reset, q_reset))
    return out


def test_resets_inside_tasks_are_honoured_and_vmap_equals_loop() -> None:
    model = _tiny_ssm()
    maml = MetaMAML(model, inner_lr=0.1)
    tasks = _with_resets(_tasks(3, True))
    sx, sy, qx, qy, s_reset, q_reset = tasks[0]
    fast = maml.adapt_task(sx, sy, support_reset=s_reset)
    h0 = model.init_hidden(3)
    _, h_support = maml.functional_forward(sx, h0, fast, s_reset)
    want = nn.functional.mse_loss(maml.functional_forward(qx, h_support, fast, q_reset)[0], qy)
    torch.testing.assert_close(maml.meta_loss([tasks[0]]), want, atol=1e-14, rtol=0)
    # the resets change the result (they are not ignored)
    assert not torch.allclose(maml.meta_loss([tasks[0][:4]]), want)
    vm = _flat_grad(maml, tasks)
    maml.use_vmap = False
    torch.testing.assert_close(vm, _flat_grad(maml, tasks), atol=1e-12, rtol=1e-10)
    with pytest.raises(ValueError, match="stateless"):
        MetaMAML(_mlp()).functional_forward(
            torch.zeros(2, 2), None, dict(_mlp().named_parameters()), torch.zeros(2)
        )


def test_stateful_detection_and_missing_state_errors() -> None:
    assert is_stateful(_tiny_ssm()) and not is_stateful(_mlp())

    class NoInit(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)

        def forward(self, x: torch.Tensor, hidden_state: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self.lin(x) + hidden_state, hidden_state

    maml = MetaMAML(NoInit())
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="hidden_state is None"):
        maml.functional_forward(x, None, dict(maml.model.named_parameters()))
    with pytest.raises(ValueError, match="no init_hidden"):
        maml.adapt_task(x, torch.randn(3, 1))
    fast = maml.adapt_task(x, torch.randn(3, 1), initial_hidden_state=torch.zeros(3, 1))
    assert set(fast) == {"lin.weight", "lin.bias"}


def test_bad_task_arguments() -> None:
    maml = MetaMAML(_mlp())
    with pytest.raises(TypeError, match="non-empty list"):
        maml.meta_loss([])
    with pytest.raises(TypeError, match="task 0 must be"):
        maml.meta_loss([(torch.zeros(1), torch.zeros(1))])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="num_inner_steps"):
        MetaMAML(_mlp(), num_inner_steps=-1)
    with pytest.raises(ValueError, match="2 entries but there are 3 tasks"):
        MetaMAML(_tiny_ssm(), use_vmap=False).meta_loss(
            _tasks(3, True), initial_hidden_state=[torch.zeros(3, 8)] * 2
        )


def test_adapt_task_keeps_meta_weights_and_zero_steps_is_identity() -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    maml = MetaMAML(model, inner_lr=0.1)
    sx, sy, _, _ = _tasks(1, False)[0]
    with torch.no_grad():
        fast = maml.adapt_task(sx, sy, num_steps=3)
    assert all(not v.requires_grad for v in fast.values())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    same = maml.adapt_task(sx, sy, num_steps=0)
    for k, v in model.named_parameters():
        assert torch.equal(same[k], v)


def test_meta_update_steps_model_and_learned_lrs() -> None:
    model = _mlp()
    maml = MetaMAML(model, inner_lr=0.05, outer_lr=0.01, learn_inner_lr=True)
    assert isinstance(maml.inner_lr_for("0.weight"), torch.Tensor)
    lr0 = maml.inner_lr_for("0.weight").clone()  # type: ignore[union-attr]
    first = model[0]
    assert isinstance(first, nn.Linear)
    w0 = first.weight.detach().clone()
    loss = maml.meta_update(_tasks(4, False))
    assert isinstance(loss, float)
    assert not torch.equal(first.weight, w0)
    assert not torch.equal(maml.inner_lr_for("0.weight"), lr0)  # type: ignore[arg-type]
    assert MetaMAML(_mlp(), inner_lr=0.02).inner_lr_for("0.bias") == 0.02
    with pytest.raises(KeyError):
        maml.inner_lr_for("nope")
    # optimizer + learned-lr state round trip
    other = MetaMAML(_mlp(), inner_lr=0.05, outer_lr=0.01, learn_inner_lr=True)
    other.load_state_dict(maml.state_dict())
    assert torch.equal(other.inner_lrs["0.weight"], maml.inner_lrs["0.weight"])


@pytest.mark.parametrize("kind", ["mlp", "ssm"])
def test_meta_training_improves_post_adaptation_loss(kind: str) -> None:
    """MAML works end to end with a plain MLP (stateless) and with the SSM (stateful)."""
    seq = kind == "ssm"
    torch.manual_seed(0)
    model: nn.Module = (
        SSM(4, 2, 1, hidden_dim=16, num_layers=1)
        if seq
        else nn.Sequential(nn.Linear(2, 32), nn.Tanh(), nn.Linear(32, 1))
    )
    maml = MetaMAML(model, inner_lr=0.05, outer_lr=3e-3)
    held_out = _tasks(8, seq, dtype=torch.float32, seed=99, b=8)
    with torch.no_grad():
        before = maml.adaptation_curve(
            TaskBatch(*(torch.stack(p) for p in zip(*held_out, strict=True))), 1
        )[:, 1].mean()
    for it in range(60):
        maml.meta_update(_tasks(8, seq, dtype=torch.float32, seed=it, b=8))
    with torch.no_grad():
        after = maml.adaptation_curve(
            TaskBatch(*(torch.stack(p) for p in zip(*held_out, strict=True))), 1
        )[:, 1].mean()
    assert after < 0.7 * before


def test_adaptation_curve_matches_adapt_task() -> None:
    model = _tiny_ssm()
    maml = MetaMAML(model, inner_lr=0.1)
    tasks = _tasks(3, True)
    with torch.no_grad():
        curve = maml.adaptation_curve(
            TaskBatch(*(torch.stack(p) for p in zip(*tasks, strict=True))), 2
        )
        sx, sy, qx, qy = tasks[1]
        fast = maml.adapt_task(sx, sy, num_steps=2)
        h0 = model.init_hidden(3)
        _, hq = maml.functional_forward(sx, h0, fast)
        want = nn.functional.mse_loss(maml.functional_forward(qx, hq, fast)[0], qy)
    assert curve.shape == (3, 3)
    torch.testing.assert_close(curve[1, 2], want, atol=1e-12, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_maml_on_cuda() -> None:
    model = _tiny_ssm(torch.float32).to("cuda")
    maml = MetaMAML(model, learn_inner_lr=True)
    tasks = [tuple(t.to("cuda") for t in task) for task in _tasks(3, True, dtype=torch.float32)]
    loss = maml.meta_update(tasks)  # type: ignore[arg-type]
    assert loss == loss  # finite
    assert maml.inner_lr_for("output_proj.bias").device.type == "cuda"  # type: ignore[union-attr]
