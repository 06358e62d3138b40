"""Model inputs and targets for dynamics learning, and their normalization.

Store row layout (decided here, used by `collect`, `loader` and the pipeline):

* ``obs``    column = RAW input  ``[state, action_encoding]``   (b, ds + da)
* ``target`` column = RAW change ``next_state - state``         (b, ds), raw-angle columns wrapped

The store keeps *raw* values; normalization happens on the torch side with a `Normalizer`
whose statistics are computed from the store's zero-copy views. So the stored experience
stays valid when the statistics change, and normalizing a batch is one fused in-place
``(x - mean) / std`` on the tensor that already holds it.

Action encoding: one-hot for ``Discrete`` (``da`` = the number of actions), for ``Box`` the
action clipped to its bounds and scaled to ``[-1, 1]`` (``da = action size``). The action
columns are not normalized again (mean 0, std 1 in the `Normalizer`): they are already on a
unit scale.

Shapes: see the glossary in eaml_ssm/__init__.py (``d = ds + da`` inputs, ``o = ds`` targets).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from gymnasium import spaces

from eaml_ssm.tasks import TaskFamily, get_family

if TYPE_CHECKING:
    import torch

ArrayT = TypeVar("ArrayT", np.ndarray, "torch.Tensor")

# Rows per chunk when reducing over a store view: bounds the float64 temporaries.
_CHUNK_ROWS = 65_536
# A column whose std is below this is constant: it is centred but not scaled.
_MIN_STD = 1e-6


def _family(family: TaskFamily | str) -> TaskFamily:
    return get_family(family) if isinstance(family, str) else family


def wrap_angle(x: ArrayT) -> ArrayT:
    """Wrap radians into [-pi, pi)."""
    return (x + np.pi) % (2 * np.pi) - np.pi


def encode_actions(family: TaskFamily | str, actions: Any) -> np.ndarray:
    """Actions (b,) ints or (b, da) floats -> encoding (b, da) float32."""
    fam = _family(family)
    space = fam.action_space
    a = np.asarray(actions)
    if isinstance(space, spaces.Discrete):
        a = a.reshape(-1)
        if not np.issubdtype(a.dtype, np.integer):
            if not np.all(a == np.round(a)):
                raise ValueError(f"{fam.env_id}: discrete actions must be integers, got {a.dtype}")
            a = a.astype(np.int64)
        idx = a - int(space.start)
        if np.any((idx < 0) | (idx >= space.n)):
            raise ValueError(
                f"{fam.env_id}: actions must lie in [{space.start}, {space.start + space.n}), "
                f"got min {a.min()} max {a.max()}"
            )
        out = np.zeros((a.shape[0], int(space.n)), dtype=np.float32)  # (b, da)
        out[np.arange(a.shape[0]), idx] = 1.0
        return out
    assert isinstance(space, spaces.Box)
    da = fam.action_dim
    a = a.astype(np.float64, copy=False).reshape(-1, da) if a.size else a.reshape(0, da)
    low = space.low.reshape(-1).astype(np.float64)
    high = space.high.reshape(-1).astype(np.float64)
    scaled = 2.0 * (np.clip(a, low, high) - low) / (high - low) - 1.0  # (b, da) in [-1, 1]
    return scaled.astype(np.float32)


def _states(fam: TaskFamily, states: Any, what: str) -> np.ndarray:
    s = np.asarray(states, dtype=np.float64)
    if s.ndim == 1:
        s = s[None]
    if s.ndim != 2 or s.shape[1] != fam.state_dim:
        raise ValueError(
            f"{what} has shape {np.shape(states)}; {fam.env_id} expects (b, {fam.state_dim})"
        )
    return s


def encode_inputs(family: TaskFamily | str, states: Any, actions: Any) -> np.ndarray:
    """Raw model input = [state, action encoding]: (b, ds), actions -> (b, d) float32."""
    fam = _family(family)
    s = _states(fam, states, "states")  # (b, ds)
    a = encode_actions(fam, actions)  # (b, da)
    if a.shape[0] != s.shape[0]:
        raise ValueError(f"{s.shape[0]} states but {a.shape[0]} actions")
    return np.concatenate([s.astype(np.float32), a], axis=1)  # (b, d)


def encode_targets(family: TaskFamily | str, states: Any, next_states: Any) -> np.ndarray:
    """Raw target = next_state - state, raw-angle columns wrapped: -> (b, o) float32."""
    fam = _family(family)
    s = _states(fam, states, "states")  # (b, ds)
    s2 = _states(fam, next_states, "next_states")  # (b, ds)
    if s.shape != s2.shape:
        raise ValueError(f"states {s.shape} and next_states {s2.shape} differ in shape")
    delta = s2 - s  # (b, ds)
    if fam.angle_dims:
        cols = list(fam.angle_dims)
        delta[:, cols] = wrap_angle(delta[:, cols])
    return delta.astype(np.float32)


def encode_transitions(
    family: TaskFamily | str, states: Any, actions: Any, next_states: Any
) -> tuple[np.ndarray, np.ndarray]:
    """(states, actions, next_states) -> raw (inputs (b, d), targets (b, o)), float32."""
    return encode_inputs(family, states, actions), encode_targets(family, states, next_states)


def apply_delta(family: TaskFamily | str, states: Any, deltas: Any) -> np.ndarray:
    """Next state from a raw predicted change (inverse of `encode_targets`): (b, ds)."""
    fam = _family(family)
    return (_states(fam, states, "states") + np.asarray(deltas, dtype=np.float64)).astype(
        np.float32
    )


def column_moments(
    view: np.ndarray, chunk_rows: int = _CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) std of a (n, columns) array, in float64.

    Reads `view` in row chunks (Chan et al. parallel merge), so a zero-copy store view is
    never copied whole: the temporaries are at most `chunk_rows` x columns float64.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if view.ndim != 2 or view.shape[0] == 0:
        raise ValueError(f"need a non-empty (n, d) array, got shape {view.shape}")
    n_tot = 0
    mean = np.zeros(view.shape[1])
    m2 = np.zeros(view.shape[1])
    for start in range(0, view.shape[0], chunk_rows):
        block = view[start : start + chunk_rows]  # a view, no copy
        n = block.shape[0]
        b_mean = block.mean(axis=0, dtype=np.float64)
        b_m2 = ((block - b_mean) ** 2).sum(axis=0)
        delta = b_mean - mean
        tot = n_tot + n
        mean = mean + delta * (n / tot)
        m2 = m2 + b_m2 + delta**2 * (n_tot * n / tot)
        n_tot = tot
    return mean, np.sqrt(m2 / n_tot)


class Normalizer:
    """z-scores model inputs and targets with statistics of the store.

    Tensors (all in ``state_dict``): ``input_mean``/``input_std`` (d,),
    ``target_mean``/``target_std`` (o,). The action-encoding columns of the input keep
    mean 0 and std 1. Constant columns get std 1. Works on tensors of any leading shape.
    A plain class, not an ``nn.Module``, so importing this module (and collecting data in
    worker processes) does not load torch; save ``state_dict()`` beside the model weights.
    """

    _KEYS = ("input_mean", "input_std", "target_mean", "target_std")

    def __init__(self, input_dim: int, target_dim: int) -> None:
        import torch

        if input_dim <= 0 or target_dim <= 0:
            raise ValueError(f"dims must be positive, got input {input_dim}, target {target_dim}")
        self.input_mean = torch.zeros(input_dim)  # (d,)
        self.input_std = torch.ones(input_dim)  # (d,)
        self.target_mean = torch.zeros(target_dim)  # (o,)
        self.target_std = torch.ones(target_dim)  # (o,)

    @property
    def input_dim(self) -> int:
        return int(self.input_mean.shape[0])

    @property
    def target_dim(self) -> int:
        return int(self.target_mean.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_mean.device

    def __repr__(self) -> str:
        return f"Normalizer(input_dim={self.input_dim}, target_dim={self.target_dim})"

    @classmethod
    def from_arrays(
        cls,
        inputs: np.ndarray,
        targets: np.ndarray,
        *,
        state_dim: int | None = None,
        chunk_rows: int = _CHUNK_ROWS,
    ) -> Normalizer:
        """Statistics of raw (n, d) inputs and (n, o) targets.

        Only the first `state_dim` input columns are normalized (default: ``o = ds``, the state
        part of the row layout); the rest (the action encoding) stay as they are.
        """
        if inputs.ndim != 2 or targets.ndim != 2 or inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} must be (n, d)")
        ds = targets.shape[1] if state_dim is None else state_dim
        if not 0 < ds <= inputs.shape[1]:
            raise ValueError(f"state_dim {ds} must be in [1, {inputs.shape[1]}]")
        in_mean, in_std = column_moments(inputs, chunk_rows)
        t_mean, t_std = column_moments(targets, chunk_rows)
        return cls.from_moments(in_mean, in_std, t_mean, t_std, state_dim=ds)

    @classmethod
    def from_moments(
        cls,
        input_mean: np.ndarray,
        input_std: np.ndarray,
        target_mean: np.ndarray,
        target_std: np.ndarray,
        *,
        state_dim: int,
    ) -> Normalizer:
        """From column moments (e.g. merged across ranks): inputs past `state_dim` (the action
        encoding) keep mean 0 and std 1; near-constant columns get std 1."""
        norm = cls(len(input_mean), len(target_mean))
        input_mean, input_std = input_mean.copy(), input_std.copy()
        input_mean[state_dim:], input_std[state_dim:] = 0.0, 1.0
        norm._set(input_mean, input_std, target_mean, target_std)
        return norm

    @classmethod
    def from_store(
        cls, store: Any, *, state_dim: int | None = None, chunk_rows: int = _CHUNK_ROWS
    ) -> Normalizer:
        """Statistics from `store.obs_view()` / `store.target_view()` (zero-copy, no store copy).

        Call it when no collection is writing to the store: a view is a window on live
        memory, and a row written during the reduction may be seen half old, half new.
        """
        if len(store) == 0:
            raise ValueError("cannot compute normalization statistics from an empty store")
        return cls.from_arrays(
            store.obs_view(), store.target_view(), state_dim=state_dim, chunk_rows=chunk_rows
        )

    def _set(self, im: np.ndarray, is_: np.ndarray, tm: np.ndarray, ts: np.ndarray) -> None:
        import torch

        is_ = np.where(is_ < _MIN_STD, 1.0, is_)
        ts = np.where(ts < _MIN_STD, 1.0, ts)
        for name, val in zip(self._KEYS, (im, is_, tm, ts), strict=True):
            setattr(self, name, torch.as_tensor(val, dtype=torch.float32))

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The four statistics (CPU copies), for a checkpoint."""
        return {k: getattr(self, k).detach().cpu().clone() for k in self._KEYS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore statistics saved by `state_dict` (shapes must match)."""
        import torch

        missing = [k for k in self._KEYS if k not in state]
        if missing:
            raise ValueError(f"normalizer state lacks {missing}; expected keys {self._KEYS}")
        for k in self._KEYS:
            val = torch.as_tensor(state[k], dtype=torch.float32)
            cur = getattr(self, k)
            if val.shape != cur.shape:
                raise ValueError(f"{k} has shape {tuple(val.shape)}, expected {tuple(cur.shape)}")
            setattr(self, k, val.to(cur.device))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> Normalizer:
        norm = cls(len(state["input_mean"]), len(state["target_mean"]))
        norm.load_state_dict(state)
        return norm

    def to(self, device: torch.device | str) -> Normalizer:
        """A copy with the statistics on `device` (like ``Tensor.to``: `self` is unchanged)."""
        out = Normalizer.__new__(Normalizer)
        for k in self._KEYS:
            setattr(out, k, getattr(self, k).to(device))
        return out

    def _stats(self, x: torch.Tensor, which: str, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of `which` on x's device; checks x's width."""
        if x.shape[-1] != dim:
            raise ValueError(f"{which}s have {x.shape[-1]} columns, normalizer expects {dim}")
        mean, std = getattr(self, f"{which}_mean"), getattr(self, f"{which}_std")
        if mean.device != x.device:  # correct anywhere; keep a copy per device (`to`) for speed
            mean, std = mean.to(x.device), std.to(x.device)
        return mean, std

    def normalize_inputs(self, x: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """(..., d) raw -> normalized."""
        mean, std = self._stats(x, "input", self.input_dim)
        return x.sub_(mean).div_(std) if inplace else (x - mean) / std

    def normalize_targets(self, y: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
        """(..., o) raw change of state -> normalized."""
        mean, std = self._stats(y, "target", self.target_dim)
        return y.sub_(mean).div_(std) if inplace else (y - mean) / std

    def denormalize_inputs(self, x: torch.Tensor) -> torch.Tensor:
        """(..., d) normalized -> raw."""
        mean, std = self._stats(x, "input", self.input_dim)
        return x * std + mean

    def denormalize_targets(self, y: torch.Tensor) -> torch.Tensor:
        """(..., o) normalized -> raw change of state."""
        mean, std = self._stats(y, "target", self.target_dim)
        return y * std + mean

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.normalize_inputs(x), self.normalize_targets(y)


def model_batch(
    family: TaskFamily | str,
    states: Any,
    actions: Any,
    next_states: Any,
    normalizer: Normalizer | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(states, actions, next_states) -> model tensors (b, d), (b, o), normalized if given."""
    import torch

    x_np, y_np = encode_transitions(family, states, actions, next_states)
    x = torch.from_numpy(x_np).to(device)  # (b, d)
    y = torch.from_numpy(y_np).to(device)  # (b, o)
    if normalizer is None:
        return x, y
    return normalizer.normalize_inputs(x, inplace=True), normalizer.normalize_targets(
        y, inplace=True
    )
