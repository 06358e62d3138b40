"""The learned SSM as a planner's batched dynamics model, with its per-call overhead removed.

A planner advances all N candidates one horizon step per call. Going through ``SSM.forward``
(or ``functional_call``) for that re-discretizes every layer and re-validates shapes on each
call, and the normalization would be separate kernels; at N x H = 500 x 20 that overhead,
not the arithmetic, dominated a straightforward loop (49 ms per control step in the issue's
calibration). `FastSSMStep` therefore precomputes, once per weight change:

* each layer's discretization, with the state kept as one complex tensor (b, m) so that the
  recurrence is one complex multiply-add;
* the input normalization folded into the input projection, and the target denormalization
  folded into the output projection (the model predicts raw changes of state directly).

`SSMDynamics` wraps it for the planners: `prepare` warms the hidden state on the latest real
steps (from a zero state: meta-training windows start from zero, so a short warm-up of
``warmup`` steps is what the model knows; see the issue's pitfalls), `start` tiles it over
the candidates, and `step` predicts next states, fed back in the form the environment
produces (Pendulum's (cos, sin) renormalized to unit length, every bounded coordinate clipped
to the observation space).

Shapes: see the glossary in eaml_ssm/__init__.py; here ``b`` counts the N candidates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from eaml_ssm.features import Normalizer
from eaml_ssm.ssm import SSM, SSMBlock
from eaml_ssm.tasks import TaskFamily


class _Layer:
    """One SSM block with its discretization and complex layout precomputed."""

    def __init__(self, w: Mapping[str, Tensor], prefix: str, block: SSMBlock) -> None:
        ssm = block.ssm
        with torch.no_grad():
            # discretize with the given weights: swap them into a scratch copy of the layer
            saved = {k: p.detach().clone() for k, p in ssm.named_parameters()}
            for k, p in ssm.named_parameters():
                p.copy_(w[f"{prefix}.ssm.{k}"])
            ab_r, ab_i, bb_r, bb_i = ssm.discretize()
            for k, p in ssm.named_parameters():
                p.copy_(saved[k])
        self.a = torch.complex(ab_r, ab_i)  # (m,) Lambda_bar
        # B rows interleaved (re, im) so that (b, 2m) -> view_as_complex (b, m)
        self.b = torch.stack((bb_r, bb_i), dim=1).reshape(-1, bb_r.shape[1]).contiguous()
        c_r, c_i = w[f"{prefix}.ssm.c_real"], w[f"{prefix}.ssm.c_imag"]  # (h, m)
        # Re(C x) = [x_r, x_i] . [c_r, -c_i], in the same interleaved order as the state
        self.c = torch.stack((c_r, -c_i), dim=2).reshape(c_r.shape[0], -1).contiguous()
        self.d = w[f"{prefix}.ssm.d"]
        self.norm = (w[f"{prefix}.norm.weight"], w[f"{prefix}.norm.bias"])
        self.mix = (w[f"{prefix}.mix.weight"], w[f"{prefix}.mix.bias"])
        self.mlp: tuple[Tensor, ...] | None = None
        if f"{prefix}.mlp.0.weight" in w:
            self.mlp = (
                w[f"{prefix}.mlp_norm.weight"],
                w[f"{prefix}.mlp_norm.bias"],
                w[f"{prefix}.mlp.0.weight"],
                w[f"{prefix}.mlp.0.bias"],
                w[f"{prefix}.mlp.2.weight"],
                w[f"{prefix}.mlp.2.bias"],
            )


class FastSSMStep:
    """Step mode of an `SSM` at given weights, raw inputs in, raw changes of state out.

    ``step(states (b, ds), encoded actions (b, da), hidden) -> (delta (b, ds), hidden)``
    equals ``denormalize_targets(model(normalize_inputs([s, a]), h))`` (tested), where
    ``hidden`` is a list of complex (b, m) states, one per layer.
    """

    def __init__(
        self,
        model: SSM,
        normalizer: Normalizer,
        weights: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.model = model
        self.normalizer = normalizer
        self.eps = model.config.norm_eps
        self.load(weights)

    @torch.no_grad()
    def load(self, weights: Mapping[str, Tensor] | None = None) -> None:
        """(Re)build the precomputed tensors from `weights` (default: the model's own)."""
        own = {k: v.detach() for k, v in self.model.named_parameters()}
        w = {**own, **{k: v.detach() for k, v in (weights or {}).items()}}
        dev = w["input_proj.weight"].device
        norm = self.normalizer.to(dev)
        ds = norm.target_dim
        # normalized x = (raw - mean) / std  =>  W x + b = (W / std) raw + (b - W (mean / std))
        w_in, b_in = w["input_proj.weight"], w["input_proj.bias"]
        scaled = w_in / norm.input_std
        self.w_state = scaled[:, :ds].contiguous()  # (h, ds)
        self.w_action = scaled[:, ds:].contiguous()  # (h, da)
        self.b_in = b_in - w_in @ (norm.input_mean / norm.input_std)
        # raw delta = (W y + b) * std + mean
        w_out, b_out = w["output_proj.weight"], w["output_proj.bias"]
        self.w_out = (w_out * norm.target_std[:, None]).contiguous()
        self.b_out = b_out * norm.target_std + norm.target_mean
        self.out_norm = (w["out_norm.weight"], w["out_norm.bias"])
        blocks = [cast(SSMBlock, b) for b in self.model.blocks]
        self.layers = [_Layer(w, f"blocks.{i}", b) for i, b in enumerate(blocks)]
        self.modes = int(self.layers[0].a.shape[0])

    def init_hidden(self, n: int) -> list[Tensor]:
        dev = self.w_state.device
        return [torch.zeros(n, self.modes, dtype=torch.complex64, device=dev) for _ in self.layers]

    def step(
        self, states: Tensor, encoded: Tensor, hidden: list[Tensor]
    ) -> tuple[Tensor, list[Tensor]]:
        h = torch.addmm(self.b_in, states, self.w_state.t())
        h = h.addmm_(encoded, self.w_action.t())  # (b, h)
        width = h.shape[1]
        out_hidden = []
        for layer, x in zip(self.layers, hidden, strict=True):
            z = F.layer_norm(h, (width,), layer.norm[0], layer.norm[1], self.eps)
            bu = torch.view_as_complex(F.linear(z, layer.b).view(z.shape[0], -1, 2))  # (b, m)
            x = torch.addcmul(bu, x, layer.a)  # x' = Lambda_bar x + B_bar u
            out_hidden.append(x)
            y = torch.addcmul(F.linear(torch.view_as_real(x).flatten(1), layer.c), layer.d, z)
            h = h + F.linear(F.gelu(y), *layer.mix)
            if layer.mlp is not None:
                nw, nb, w1, b1, w2, b2 = layer.mlp
                m = F.layer_norm(h, (width,), nw, nb, self.eps)
                h = h + F.linear(F.gelu(F.linear(m, w1, b1)), w2, b2)
        h = F.layer_norm(h, (width,), self.out_norm[0], self.out_norm[1], self.eps)
        return torch.addmm(self.b_out, h, self.w_out.t()), out_hidden


class StateProjector:
    """Puts predicted states back into the set the environment produces.

    Pendulum's first two columns are (cos, sin) and are renormalized to unit length; every
    column with finite observation bounds (Pendulum's angular velocity, MountainCar's
    position and velocity) is clipped to them.
    """

    def __init__(self, family: TaskFamily, device: torch.device) -> None:
        low = np.asarray(family.observation_space.low, dtype=np.float64)
        high = np.asarray(family.observation_space.high, dtype=np.float64)
        bounded = np.isfinite(low) & np.isfinite(high) & (high < 1e30)
        self.unit_circle = family.env_id == "Pendulum-v1"
        self.clip = bool(bounded.any())
        big = np.float32(np.finfo(np.float32).max)
        self.low = torch.tensor(np.where(bounded, low, -big), dtype=torch.float32, device=device)
        self.high = torch.tensor(np.where(bounded, high, big), dtype=torch.float32, device=device)

    def __call__(self, s: Tensor) -> Tensor:
        """Project `s` (a fresh tensor the caller owns: it is modified in place)."""
        if self.unit_circle:
            s[:, :2] = F.normalize(s[:, :2], dim=1, eps=1e-6)
        if self.clip:
            s = torch.clamp(s, self.low, self.high)
        return s


class SSMDynamics:
    """The learned model as the planners see it (same interface as `OracleDynamics`).

    ``prepare(history)``: warm the hidden state on the last ``warmup`` real steps
    (``history`` = raw (states (l, ds), encoded actions (l, da)) of the episode so far);
    ``start``: that state tiled over the candidates; ``step(s, enc, raw)``: next states.
    """

    def __init__(
        self,
        model: SSM,
        normalizer: Normalizer,
        family: TaskFamily,
        *,
        warmup: int = 4,
        device: torch.device | str = "cpu",
    ) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0 steps, got {warmup}")
        self.device = torch.device(device)
        self.fast = FastSSMStep(model.to(self.device), normalizer)
        self.project = StateProjector(family, self.device)
        self.warmup = warmup
        self._warm: list[Tensor] = self.fast.init_hidden(1)
        self._hidden: list[Tensor] = []

    def load(self, weights: Mapping[str, Tensor] | None) -> None:
        """Use new (e.g. adapted) weights; call `prepare` again before planning."""
        self.fast.load(
            None if weights is None else {k: v.to(self.device) for k, v in weights.items()}
        )

    def prepare(self, history: tuple[Tensor, Tensor] | None, num_candidates: int = 1) -> None:
        hidden = self.fast.init_hidden(1)
        if history is not None and self.warmup > 0:
            states, actions = history
            start = max(0, states.shape[0] - self.warmup)
            for t in range(start, states.shape[0]):
                _, hidden = self.fast.step(states[t : t + 1], actions[t : t + 1], hidden)
        self._warm = hidden

    def start(self, n: int) -> None:
        self._hidden = [x.expand(n, -1) for x in self._warm]

    def step(self, states: Tensor, encoded: Tensor, raw: Tensor) -> Tensor:
        delta, self._hidden = self.fast.step(states, encoded, self._hidden)
        return self.project(states + delta)
