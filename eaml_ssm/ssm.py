"""A stable, diagonal state-space model (S4D / S5 family) with a scan mode and a step mode.

Shapes: see the glossary in eaml_ssm/__init__.py (``m`` modes per layer is ``state_dim``, ``h``
is ``hidden_dim``, ``k`` is ``num_layers``; the flat hidden state holds ``z = k * m * 2``
numbers: the real and imaginary part of every mode).

Each layer is an S5-style MIMO diagonal SSM in continuous time,
``x'(t) = Lambda x(t) + B u(t)``, ``y(t) = Re(C x(t)) + D * u(t)``, with
``Lambda = -exp(log_a_real) + i a_imag`` (negative real part, so stable by construction) and a
learned per-mode step size ``exp(log_dt)``, initialised log-uniform in ``[dt_min, dt_max]``.
It is discretised by zero-order hold (default) or the bilinear transform; both map the open left
half-plane into the unit disc, so ``|Lambda_bar| < 1`` for every parameter value.

The stack is: input projection -> ``num_layers`` x [pre-LayerNorm -> SSM -> GELU -> linear,
residual; pre-LayerNorm -> MLP, residual] -> LayerNorm -> output projection.

One parameter set, two modes that give the same outputs:
    * sequence mode, ``x`` of shape (b, l, d): all steps at once through the out-of-place
      parallel scan in ``eaml_ssm.scan`` (works under ``torch.func`` grad-of-grad and vmap);
    * step mode, ``x`` of shape (b, d): one step of the recurrence, for online use.

The hidden state is ONE real tensor of shape (b, z) = (b, num_layers * state_dim * 2); its layout
is ``hidden.view(b, num_layers, state_dim, 2)`` with ``[..., 0]`` the real and ``[..., 1]`` the
imaginary part. ``reset`` marks episode starts: where it is 1 the state is zeroed *before* that
step, so a sequence may hold several episodes back to back.

Why one module: the layer, the stack and the two modes share one parameterization and one
hidden-state layout, and the tests hold scan mode and step mode to the same outputs; the
scan itself, which has no SSM knowledge, is `eaml_ssm.scan`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from os import PathLike
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eaml_ssm.scan import complex_mul, linear_recurrence

__all__ = ["SSM", "DiagonalSSMLayer", "LayerNorm", "SSMConfig", "StateSpaceModel"]

CHECKPOINT_FORMAT = "eaml_ssm.SSM/1"


@dataclass(frozen=True)
class SSMConfig:
    """Everything needed to rebuild an :class:`SSM` (saved in every checkpoint)."""

    state_dim: int = 16  # m: complex diagonal modes per layer (hidden state holds 2 reals each)
    input_dim: int = 1  # d: input features per step
    output_dim: int = 1  # o: output features per step
    hidden_dim: int = 128  # h: channel width of the layer stack (the original's default)
    num_layers: int = 2  # k: stacked SSM blocks, each with a residual connection
    mlp_ratio: int = 2  # width multiple of the per-block MLP; 0 disables the MLP
    discretization: Literal["zoh", "bilinear"] = "zoh"  # continuous -> discrete transform
    dt_min: float = 1e-3  # smallest initial step size (log-uniform init, as in S4D/S5)
    dt_max: float = 1e-1  # largest initial step size
    a_real_init: float = 0.5  # initial decay rate -Re(Lambda) of every mode (S4D-Lin)
    norm_eps: float = 1e-5  # LayerNorm epsilon

    def __post_init__(self) -> None:
        for name in ("state_dim", "input_dim", "output_dim", "hidden_dim", "num_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"SSMConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.mlp_ratio, int) or self.mlp_ratio < 0:
            raise ValueError(f"SSMConfig.mlp_ratio must be an int >= 0, got {self.mlp_ratio!r}")
        if self.discretization not in ("zoh", "bilinear"):
            raise ValueError(
                f"SSMConfig.discretization must be 'zoh' or 'bilinear', got {self.discretization!r}"
            )
        if not 0.0 < self.dt_min <= self.dt_max:
            raise ValueError(
                f"SSMConfig needs 0 < dt_min <= dt_max, got dt_min={self.dt_min}, "
                f"dt_max={self.dt_max}"
            )
        if self.a_real_init <= 0.0:
            raise ValueError(f"SSMConfig.a_real_init must be > 0, got {self.a_real_init}")

    @property
    def hidden_size(self) -> int:
        """z: length of the flat hidden state per batch row."""
        return self.num_layers * self.state_dim * 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SSMConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(
                f"unknown SSMConfig fields {sorted(unknown)}; expected {sorted(known)}"
            )
        return cls(**data)


class DiagonalSSMLayer(nn.Module):
    """One MIMO diagonal SSM: (b, [l,] h) inputs, state (b, m) complex as two real tensors."""

    def __init__(self, config: SSMConfig) -> None:
        super().__init__()
        m, h = config.state_dim, config.hidden_dim
        self.discretization = config.discretization
        # Lambda = -exp(log_a_real) + i a_imag  (S4D-Lin init: -a_real_init + i pi j for mode j)
        self.log_a_real = nn.Parameter(torch.full((m,), math.log(config.a_real_init)))
        self.a_imag = nn.Parameter(math.pi * torch.arange(m, dtype=torch.float32))
        log_dt = torch.rand(m) * (math.log(config.dt_max) - math.log(config.dt_min))
        self.log_dt = nn.Parameter(log_dt + math.log(config.dt_min))  # (m,)
        scale_b = 1.0 / math.sqrt(2.0 * h)
        self.b_real = nn.Parameter(torch.randn(m, h) * scale_b)  # (m, h)
        self.b_imag = nn.Parameter(torch.randn(m, h) * scale_b)
        scale_c = 1.0 / math.sqrt(m)
        self.c_real = nn.Parameter(torch.randn(h, m) * scale_c)  # (h, m)
        self.c_imag = nn.Parameter(torch.randn(h, m) * scale_c)
        self.d = nn.Parameter(torch.randn(h))  # (h,) direct feedthrough

    def discretize(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(Lambda_bar real, imag) each (m,), and (B_bar real, imag) each (m, h)."""
        dt = torch.exp(self.log_dt)  # (m,)
        lam_r, lam_i = -torch.exp(self.log_a_real), self.a_imag  # (m,)
        if self.discretization == "zoh":
            # Lambda_bar = exp(dt Lambda); B_bar = (Lambda_bar - 1) / Lambda * B
            theta = dt * lam_i
            mag = torch.exp(dt * lam_r)
            ab_r, ab_i = mag * torch.cos(theta), mag * torch.sin(theta)
            # Lambda_bar - 1 without cancellation for small dt |Lambda|:
            # Re = expm1(dt Re L) cos(theta) - 2 sin^2(theta / 2), Im = Im(Lambda_bar)
            half = torch.sin(0.5 * theta)
            m1_r = torch.expm1(dt * lam_r) * torch.cos(theta) - 2.0 * half * half
            den = lam_r * lam_r + lam_i * lam_i  # |Lambda|^2 > 0 since Re(Lambda) < 0
            num_r, num_i = complex_mul(m1_r, ab_i, lam_r, -lam_i)  # (Lambda_bar - 1) conj(L)
            g_r, g_i = num_r / den, num_i / den
        else:
            # Lambda_bar = (1 + dt Lambda / 2) / (1 - dt Lambda / 2); B_bar = dt / (1 - dt L / 2) B
            q_r, q_i = 1.0 - 0.5 * dt * lam_r, -0.5 * dt * lam_i  # 1 - dt Lambda / 2
            den = q_r * q_r + q_i * q_i
            p_r, p_i = 1.0 + 0.5 * dt * lam_r, 0.5 * dt * lam_i
            num_r, num_i = complex_mul(p_r, p_i, q_r, -q_i)
            ab_r, ab_i = num_r / den, num_i / den
            g_r, g_i = dt * q_r / den, -dt * q_i / den  # dt / q
        bb_r, bb_i = complex_mul(
            g_r.unsqueeze(-1), g_i.unsqueeze(-1), self.b_real, self.b_imag
        )  # (m, h)
        return ab_r, ab_i, bb_r, bb_i

    def _output(self, u: Tensor, xr: Tensor, xi: Tensor) -> Tensor:
        """y = Re(C x) + D u for (..., m) states and (..., h) inputs."""
        return F.linear(xr, self.c_real) - F.linear(xi, self.c_imag) + self.d * u

    def step(self, u: Tensor, xr: Tensor, xi: Tensor, keep: Tensor | None) -> tuple[Tensor, ...]:
        """One step: u (b, h); state (b, m) x 2; keep (b,) is 0 where the state resets."""
        ab_r, ab_i, bb_r, bb_i = self.discretize()
        if keep is not None:
            xr, xi = xr * keep.unsqueeze(-1), xi * keep.unsqueeze(-1)
        xr, xi = complex_mul(ab_r, ab_i, xr, xi)
        xr = xr + F.linear(u, bb_r)  # (b, m)
        xi = xi + F.linear(u, bb_i)
        return self._output(u, xr, xi), xr, xi

    def sequence(
        self, u: Tensor, xr: Tensor, xi: Tensor, keep: Tensor | None
    ) -> tuple[Tensor, ...]:
        """All steps: u (b, l, h); initial state (b, m) x 2; keep (b, l) or None."""
        ab_r, ab_i, bb_r, bb_i = self.discretize()
        length = u.shape[-2]
        a_r = ab_r.expand(length, -1)  # (l, m)
        a_i = ab_i.expand(length, -1)
        if keep is not None:
            a_r, a_i = a_r * keep.unsqueeze(-1), a_i * keep.unsqueeze(-1)  # (b, l, m)
        bu_r, bu_i = F.linear(u, bb_r), F.linear(u, bb_i)  # (b, l, m)
        # Fold the initial state into the first input: b_0 += a_0 * x_init.
        h_r, h_i = complex_mul(a_r[..., 0, :], a_i[..., 0, :], xr, xi)  # (b, m)
        first_r = bu_r[..., :1, :] + h_r.unsqueeze(-2)
        first_i = bu_i[..., :1, :] + h_i.unsqueeze(-2)
        bu_r = torch.cat((first_r, bu_r[..., 1:, :]), dim=-2)
        bu_i = torch.cat((first_i, bu_i[..., 1:, :]), dim=-2)
        states_r, states_i = linear_recurrence(a_r, a_i, bu_r, bu_i)  # (b, l, m)
        y = self._output(u, states_r, states_i)  # (b, l, h)
        return y, states_r[..., -1, :], states_i[..., -1, :]


class LayerNorm(nn.Module):
    """LayerNorm over the last dim written in plain ops.

    ``nn.LayerNorm`` (``native_layer_norm``) gives a wrong second-order gradient under
    ``torch.func.vmap`` + ``grad`` in torch 2.13 (about 1e-3 off against finite differences in
    float64, while the loop path is exact); plain ops are exact in both paths.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        centered = x - x.mean(dim=-1, keepdim=True)  # (..., h)
        var = (centered * centered).mean(dim=-1, keepdim=True)  # (..., 1)
        return centered * torch.rsqrt(var + self.eps) * self.weight + self.bias


class SSMBlock(nn.Module):
    """Pre-norm residual block: SSM -> GELU -> linear, then an optional MLP."""

    def __init__(self, config: SSMConfig) -> None:
        super().__init__()
        h = config.hidden_dim
        self.norm = LayerNorm(h, eps=config.norm_eps)
        self.ssm = DiagonalSSMLayer(config)
        self.mix = nn.Linear(h, h)
        self.mlp: nn.Module | None = None
        if config.mlp_ratio > 0:
            self.mlp_norm = LayerNorm(h, eps=config.norm_eps)
            self.mlp = nn.Sequential(
                nn.Linear(h, config.mlp_ratio * h), nn.GELU(), nn.Linear(config.mlp_ratio * h, h)
            )

    def forward(
        self, h: Tensor, xr: Tensor, xi: Tensor, keep: Tensor | None, sequence: bool
    ) -> tuple[Tensor, Tensor, Tensor]:
        z = self.norm(h)  # (b, [l,] h)
        if sequence:
            y, xr, xi = self.ssm.sequence(z, xr, xi, keep)
        else:
            y, xr, xi = self.ssm.step(z, xr, xi, keep)
        h = h + self.mix(F.gelu(y))
        if self.mlp is not None:
            h = h + self.mlp(self.mlp_norm(h))
        return h, xr, xi


class SSM(nn.Module):
    """Stacked stable diagonal SSM with explicit hidden state; see the module docstring.

    The first five arguments are the original project's ``SSM(state_dim, input_dim,
    output_dim, hidden_dim=128, device="cpu")``; the structure (``num_layers`` and the
    :class:`SSMConfig` fields) is keyword-only. Unlike the original, the hidden state holds
    ``num_layers * state_dim * 2`` numbers per row (see the module docstring).

    Example::

        model = SSM(state_dim=16, input_dim=5, output_dim=4, hidden_dim=64)
        h = model.init_hidden(batch_size=8)                  # (8, z)
        y, h = model(torch.randn(8, 100, 5), h)              # sequence mode: y (8, 100, 4)
        y_t, h = model(torch.randn(8, 5), h)                 # step mode:     y_t (8, 4)
    """

    def __init__(
        self,
        state_dim: int,
        input_dim: int,
        output_dim: int,
        hidden_dim: int = 128,
        device: torch.device | str | None = None,
        *,
        num_layers: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.config = SSMConfig(
            state_dim=state_dim,
            input_dim=input_dim,
            output_dim=output_dim,
            hidden_dim=hidden_dim,
            num_layers=num_layers,
            **kwargs,
        )
        cfg = self.config
        self.input_proj = nn.Linear(cfg.input_dim, cfg.hidden_dim)
        self.blocks = nn.ModuleList(SSMBlock(cfg) for _ in range(cfg.num_layers))
        self.out_norm = LayerNorm(cfg.hidden_dim, eps=cfg.norm_eps)
        self.output_proj = nn.Linear(cfg.hidden_dim, cfg.output_dim)
        if device is not None:
            self.to(device)

    @classmethod
    def from_config(cls, config: SSMConfig, device: torch.device | str | None = None) -> SSM:
        return cls(**config.to_dict(), device=device)

    # ----- familiar attributes -------------------------------------------------------------
    @property
    def state_dim(self) -> int:
        return self.config.state_dim

    @property
    def input_dim(self) -> int:
        return self.config.input_dim

    @property
    def output_dim(self) -> int:
        return self.config.output_dim

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    @property
    def num_layers(self) -> int:
        return self.config.num_layers

    @property
    def hidden_size(self) -> int:
        """z: flat hidden-state size per batch row (num_layers * state_dim * 2)."""
        return self.config.hidden_size

    @property
    def device(self) -> torch.device:
        """Where the parameters live now (follows ``.to(...)``, unlike the original's string)."""
        return self.output_proj.weight.device

    def init_hidden(self, batch_size: int = 1) -> Tensor:
        """Zero hidden state (batch_size, z) on the parameters' device and dtype."""
        if not isinstance(batch_size, int) or batch_size < 0:
            raise ValueError(f"batch_size must be an int >= 0, got {batch_size!r}")
        ref = self.output_proj.weight
        return torch.zeros(batch_size, self.hidden_size, device=ref.device, dtype=ref.dtype)

    # ----- forward ---------------------------------------------------------------------------
    def forward(
        self, x: Tensor, hidden_state: Tensor, reset: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Run the model.

        Args:
            x: (b, d) for one step, or (b, l, d) for a sequence.
            hidden_state: (b, z) state before the first step (``init_hidden`` gives zeros).
            reset: optional mask, (b,) in step mode or (b, l) in sequence mode, bool or float;
                1 where an episode starts at that step (the state is zeroed before the step).

        Returns:
            (y, next_hidden_state): y is (b, o) or (b, l, o); next_hidden_state is (b, z), the
            state after the last step.
        """
        sequence = self._check_inputs(x, hidden_state, reset)
        keep = None if reset is None else 1.0 - reset.to(dtype=x.dtype)  # (b,) or (b, l)
        batch = x.shape[0]
        states = hidden_state.reshape(batch, self.num_layers, self.state_dim, 2)  # (b, k, m, 2)
        h = self.input_proj(x)  # (b, [l,] h)
        next_states = []
        for i, block in enumerate(self.blocks):
            xr, xi = states[:, i, :, 0], states[:, i, :, 1]  # (b, m)
            h, xr, xi = block(h, xr, xi, keep, sequence)
            next_states.append(torch.stack((xr, xi), dim=-1))  # (b, m, 2)
        y = self.output_proj(self.out_norm(h))  # (b, [l,] o)
        next_hidden = torch.stack(next_states, dim=1).reshape(batch, self.hidden_size)  # (b, z)
        return y, next_hidden

    def _check_inputs(self, x: Tensor, hidden_state: Tensor, reset: Tensor | None) -> bool:
        """Validate shapes; returns True for sequence mode."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not isinstance(hidden_state, Tensor):
            raise TypeError(
                "hidden_state must be a torch.Tensor of shape (b, "
                f"{self.hidden_size}) (use model.init_hidden(b)), got {type(hidden_state).__name__}"
            )
        if x.dim() not in (2, 3) or x.shape[-1] != self.input_dim:
            raise ValueError(
                f"x must be (b, {self.input_dim}) or (b, l, {self.input_dim}), got {tuple(x.shape)}"
            )
        if x.dim() == 3 and x.shape[1] == 0:
            raise ValueError("x has sequence length 0; expected l >= 1")
        expected = (x.shape[0], self.hidden_size)
        if tuple(hidden_state.shape) != expected:
            raise ValueError(
                f"hidden_state must be {expected} (batch, num_layers*state_dim*2), "
                f"got {tuple(hidden_state.shape)}"
            )
        if reset is not None and tuple(reset.shape) != tuple(x.shape[:-1]):
            raise ValueError(
                f"reset must have shape {tuple(x.shape[:-1])} (one flag per batch row and step), "
                f"got {tuple(reset.shape)}"
            )
        return x.dim() == 3

    # ----- checkpoints -----------------------------------------------------------------------
    def save(self, path: str | PathLike[str]) -> None:
        """Write a self-describing checkpoint (format tag, config, weights).

        It loads with ``torch.load(path, weights_only=True)``; weights are stored on the CPU so
        that a checkpoint written on a GPU machine opens anywhere.
        """
        state = {k: v.detach().to("cpu") for k, v in self.state_dict().items()}
        torch.save(
            {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(), "state_dict": state},
            path,
        )

    @classmethod
    def load(
        cls,
        path: str | PathLike[str],
        device: str | torch.device | None = None,
        *,
        map_location: str | torch.device | None = None,
    ) -> SSM:
        """Rebuild a model saved by :meth:`save` on ``device`` (default: the CPU).

        Also opens the ``checkpoint.pt`` of a run folder (``python -m eaml_ssm``); the model
        alone cannot predict raw states, so for a run prefer ``eaml_ssm.load_run(folder)``,
        which adds the normalizer and the feature encoding. ``map_location`` is an alias of
        ``device`` (torch's name).
        """
        device = device if device is not None else map_location
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # torch raises several types for a file it cannot unpickle
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{path}: not a readable torch checkpoint ({first})") from exc
        if isinstance(ckpt, dict) and "model_config" in ckpt and "model" in ckpt:
            # a run checkpoint (eaml_ssm.artifacts): same weights, other keys
            ckpt = {
                "format": CHECKPOINT_FORMAT,
                "config": ckpt["model_config"],
                "state_dict": ckpt["model"],
            }
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
            raise ValueError(
                f"{path} is not an SSM checkpoint ({CHECKPOINT_FORMAT}) nor a run checkpoint "
                f"(for a run folder use eaml_ssm.load_run); found format {found!r}"
            )
        model = cls.from_config(SSMConfig.from_dict(ckpt["config"]))
        state = ckpt["state_dict"]
        dtype = next(iter(state.values())).dtype
        model = model.to(dtype=dtype)
        model.load_state_dict(state)
        if device is not None:
            model = model.to(device)
        return model


# The original project's other name for the model.
StateSpaceModel = SSM
