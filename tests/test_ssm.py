"""Tests of eaml_ssm.scan and eaml_ssm.ssm: scan vs step-loop oracle, stability, gradients, I/O."""

from __future__ import annotations

import pytest
import torch

from eaml_ssm.scan import linear_recurrence, linear_recurrence_reference
from eaml_ssm.ssm import SSM, DiagonalSSMLayer, SSMConfig

# One torch thread: with 2 threads on the shared 2-core machine, contention makes OpenMP
# spin-waits dominate (a 3 s test took 66 s); the Makefile also sets OMP_NUM_THREADS=1.
torch.set_num_threads(1)


def _model(dtype: torch.dtype = torch.float32, **kwargs: object) -> SSM:
    torch.manual_seed(0)
    cfg = {"hidden_dim": 16, "num_layers": 2, **kwargs}
    return SSM(8, 3, 2, **cfg).to(dtype)  # type: ignore[arg-type]


def _step_loop(
    model: SSM, x: torch.Tensor, h: torch.Tensor, reset: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    ys = []
    for t in range(x.shape[1]):
        y_t, h = model(x[:, t], h, None if reset is None else reset[:, t])
        ys.append(y_t)
    return torch.stack(ys, dim=1), h


@pytest.mark.parametrize("length", [1, 2, 3, 7, 16, 33])
def test_scan_matches_reference_recurrence(length: int) -> None:
    gen = torch.Generator().manual_seed(length)
    shape = (3, length, 4)
    a_r = torch.rand(shape, generator=gen, dtype=torch.float64) * 0.9
    a_i = torch.randn(shape, generator=gen, dtype=torch.float64) * 0.3
    b_r, b_i = (torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(2))
    got = linear_recurrence(a_r, a_i, b_r, b_i)
    want = linear_recurrence_reference(a_r, a_i, b_r, b_i)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-12, rtol=0)
    # a broadcast over the batch (time-invariant layer) gives the same as an expanded a
    got_bc = linear_recurrence(a_r[0], a_i[0], b_r, b_i)
    want_bc = linear_recurrence_reference(a_r[0].expand(shape), a_i[0].expand(shape), b_r, b_i)
    torch.testing.assert_close(got_bc[0], want_bc[0], atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    ("dtype", "atol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["f32", "f64"]
)
@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_sequence_mode_equals_step_loop(
    dtype: torch.dtype, atol: float, discretization: str
) -> None:
    model = _model(dtype, discretization=discretization)
    gen = torch.Generator().manual_seed(1)
    b, length = 4, 41
    x = torch.randn(b, length, 3, generator=gen, dtype=dtype)
    h0 = torch.randn(b, model.hidden_size, generator=gen, dtype=dtype)  # nonzero initial state
    reset = torch.zeros(b, length, dtype=torch.bool)
    reset[0, 10] = reset[1, 0] = reset[2, 20] = reset[2, 21] = reset[3, 40] = True
    y_seq, h_seq = model(x, h0, reset)
    y_loop, h_loop = _step_loop(model, x, h0, reset)
    torch.testing.assert_close(y_seq, y_loop, atol=atol, rtol=0)
    torch.testing.assert_close(h_seq, h_loop, atol=atol, rtol=0)
    # without resets too, and the state flows across two chunks as across one sequence
    y_full, h_full = model(x, h0)
    y_a, h_a = model(x[:, :17], h0)
    y_b, h_b = model(x[:, 17:], h_a)
    torch.testing.assert_close(torch.cat((y_a, y_b), dim=1), y_full, atol=atol, rtol=0)
    torch.testing.assert_close(h_b, h_full, atol=atol, rtol=0)


def test_reset_zeroes_the_state_before_the_step() -> None:
    model = _model(torch.float64)
    x = torch.randn(2, 12, 3, dtype=torch.float64)
    h0 = torch.randn(2, model.hidden_size, dtype=torch.float64)
    reset = torch.zeros(2, 12)
    reset[:, 5] = 1.0
    y_reset, h_reset = model(x, h0, reset)
    y_fresh, h_fresh = model(x[:, 5:], model.init_hidden(2))
    torch.testing.assert_close(y_reset[:, 5:], y_fresh, atol=1e-12, rtol=0)
    torch.testing.assert_close(h_reset, h_fresh, atol=1e-12, rtol=0)


@pytest.mark.parametrize("discretization", ["zoh", "bilinear"])
def test_discrete_poles_inside_unit_circle(discretization: str) -> None:
    model = _model(discretization=discretization)
    with torch.no_grad():  # even for extreme parameter values
        for layer in model.modules():
            if not isinstance(layer, DiagonalSSMLayer):
                continue
            layer.log_dt.uniform_(-8.0, 4.0)
            layer.log_a_real.uniform_(-6.0, 6.0)
            ab_r, ab_i, _, _ = layer.discretize()
            assert torch.all(ab_r**2 + ab_i**2 < 1.0)


def test_outputs_bounded_over_10k_steps() -> None:
    model = _model()
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10_000, 3, generator=gen) * 3.0
    with torch.no_grad():
        y, h = model(x, model.init_hidden(2))
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    # the state of a stable system driven by bounded input stays in a bounded band
    first, last = y[:, :1000].abs().max(), y[:, -1000:].abs().max()
    assert last < 3.0 * first + 1.0
    assert h.abs().max() < 1e3


def test_gradients_reach_every_parameter() -> None:
    model = _model()
    x = torch.randn(3, 20, 3)
    h0 = torch.randn(3, model.hidden_size)
    y, h = model(x, h0)
    (y.square().mean() + h.square().mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_scan_runs_under_func_transforms() -> None:
    """grad-of-grad and vmap through sequence mode agree with the plain-autograd loop."""
    model = _model(torch.float64)
    params: dict[str, torch.Tensor] = dict(model.named_parameters())
    x = torch.randn(3, 2, 9, 3, dtype=torch.float64)  # (T, b, l, d)
    h0 = model.init_hidden(2)

    def loss(p: dict[str, torch.Tensor], xx: torch.Tensor) -> torch.Tensor:
        y, _ = torch.func.functional_call(model, p, (xx, h0))
        return y.square().mean()

    def inner(xx: torch.Tensor) -> torch.Tensor:
        g = torch.func.grad(loss)(params, xx)
        return sum(v.square().sum() for v in g.values())  # type: ignore[return-value]

    vm = torch.func.vmap(inner)(x)
    loop = torch.stack([inner(x[i]) for i in range(3)])
    torch.testing.assert_close(vm, loop, atol=1e-12, rtol=1e-10)
    g_vm = torch.autograd.grad(vm.sum(), list(params.values()))
    g_loop = torch.autograd.grad(loop.sum(), list(params.values()))
    for a, b in zip(g_vm, g_loop, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-8)


def test_init_hidden_shape_dtype_and_layout() -> None:
    model = _model(torch.float64)
    h = model.init_hidden(5)
    assert h.shape == (5, 2 * 8 * 2) and h.dtype == torch.float64
    assert model.hidden_size == model.config.hidden_size == 32
    assert torch.count_nonzero(h) == 0


def test_bad_inputs_raise_clear_errors() -> None:
    model = _model()
    h = model.init_hidden(2)
    with pytest.raises(ValueError, match=r"x must be \(b, 3\)"):
        model(torch.randn(2, 4), h)
    with pytest.raises(ValueError, match="hidden_state must be"):
        model(torch.randn(2, 3), model.init_hidden(3))
    with pytest.raises(TypeError, match="init_hidden"):
        model(torch.randn(2, 3), None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reset must have shape"):
        model(torch.randn(2, 5, 3), h, torch.zeros(2))
    with pytest.raises(ValueError, match="discretization"):
        SSMConfig(discretization="euler")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="state_dim"):
        SSM(0, 3, 2)


def test_save_load_round_trip_is_exact(tmp_path: object) -> None:
    model = _model(discretization="bilinear", mlp_ratio=0)
    path = tmp_path / "ssm.pt"  # type: ignore[operator]
    model.save(path)
    raw = torch.load(path, weights_only=True)
    assert raw["config"]["discretization"] == "bilinear"
    loaded = SSM.load(path)
    assert loaded.config == model.config
    for (n1, p1), (n2, p2) in zip(
        model.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2)
    x, h = torch.randn(2, 10, 3), torch.randn(2, model.hidden_size)
    y1, h1 = model(x, h)
    y2, h2 = loaded(x, h)
    assert torch.equal(y1, y2) and torch.equal(h1, h2)
    # from_config rebuilds the same architecture
    assert SSM.from_config(model.config).config == model.config


def test_load_rejects_foreign_file(tmp_path: object) -> None:
    path = tmp_path / "other.pt"  # type: ignore[operator]
    torch.save({"weights": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not an SSM checkpoint"):
        SSM.load(path)


def test_float64_model_and_init_hidden_follow_dtype() -> None:
    model = _model().double()
    y, h = model(torch.randn(1, 4, 3, dtype=torch.float64), model.init_hidden(1))
    assert y.dtype == h.dtype == torch.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_device_move_cuda(tmp_path: object) -> None:
    model = _model().to("cuda")
    h = model.init_hidden(2)
    assert h.device.type == "cuda"
    y, h2 = model(torch.randn(2, 7, 3, device="cuda"), h)
    assert y.device.type == "cuda" and h2.device.type == "cuda"
    y_cpu, _ = model.cpu()(torch.randn(2, 7, 3), model.init_hidden(2))
    assert y_cpu.device.type == "cpu"
    path = tmp_path / "gpu.pt"  # type: ignore[operator]
    model.to("cuda").save(path)
    assert SSM.load(path, map_location="cuda").init_hidden(1).device.type == "cuda"


def test_device_move_meta() -> None:
    """Nothing is pinned to the CPU: the model and its hidden state follow .to(device)."""
    model = _model().to("meta")
    h = model.init_hidden(2)
    assert h.device.type == "meta"
    y, h2 = model(torch.empty(2, 5, 3, device="meta"), h)
    assert y.device.type == "meta" and h2.device.type == "meta"
