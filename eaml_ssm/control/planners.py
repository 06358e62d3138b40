"""Batched model-predictive planners: random shooting and CEM (PETS-style).

A planner searches over *controls* ``u`` in ``[-1, 1]^da`` for each of ``H`` steps (``da``
coordinates, as many as the action encoding: one per action dimension for ``Box`` actions,
one score per action for ``Discrete`` ones, where the executed action is the argmax).
`ActionCoder` maps controls to the model's action encoding and to the raw actions the
environment and the rewards take. All ``N`` candidates advance in one dynamics call per
horizon step (`rollout_returns`).

* `RandomShooting`: ``N`` uniform control sequences, plus the previous plan shifted by one
  step (its last step repeated) as one candidate, so a good plan is never lost.
* `CEM`: the cross-entropy method as in PETS (Chua et al., 2018): a Gaussian over control
  sequences, refit ``iterations`` times to the best ``elite_frac`` of ``N`` samples (with
  momentum ``alpha``), warm-started from the previous mean shifted by one step.

Shapes: see the glossary in eaml_ssm/__init__.py; here ``b`` counts the N candidates and ``l``
the H horizon steps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

from eaml_ssm.control.rewards import FamilyReward
from eaml_ssm.tasks import TaskFamily


class Dynamics(Protocol):
    def prepare(self, history: tuple[Tensor, Tensor] | None, num_candidates: int = 1) -> None: ...
    def start(self, n: int) -> None: ...
    def step(self, states: Tensor, encoded: Tensor, raw: Tensor) -> Tensor: ...


class ActionCoder:
    """Controls u (b, da) in [-1, 1] -> model encoding (b, da), raw actions (b, 1 or da)."""

    def __init__(self, family: TaskFamily, device: torch.device | str = "cpu") -> None:
        space = family.action_space
        self.discrete = isinstance(space, spaces.Discrete)
        self.device = torch.device(device)
        if self.discrete:
            assert isinstance(space, spaces.Discrete)
            self.dim = int(space.n)
            self.start = int(space.start)
            self._eye = torch.eye(self.dim, device=self.device)
        else:
            assert isinstance(space, spaces.Box)
            self.dim = family.action_dim
            low = np.asarray(space.low, dtype=np.float32).reshape(-1)
            high = np.asarray(space.high, dtype=np.float32).reshape(-1)
            self.low = torch.tensor(low, device=self.device)
            self.half = torch.tensor((high - low) / 2, device=self.device)

    def encode(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """(encoding (b, da), raw (b, 1 or da)): the encoding `eaml_ssm.features` gives."""
        if self.discrete:
            idx = u.argmax(dim=1)
            return self._eye[idx], (idx + self.start).to(u.dtype).unsqueeze(1)
        u = u.clamp(-1.0, 1.0)
        return u, self.low + (u + 1.0) * self.half

    def to_env(self, u: Tensor) -> int | np.ndarray:
        """One control (da,) -> the action `env.step` takes."""
        _, raw = self.encode(u.reshape(1, -1))
        if self.discrete:
            return int(raw[0, 0].item())
        return raw[0].detach().cpu().numpy().astype(np.float32)


@torch.no_grad()
def rollout_returns(
    dynamics: Dynamics,
    coder: ActionCoder,
    reward: FamilyReward,
    state: Tensor,
    controls: Tensor,
) -> Tensor:
    """Predicted return of each control sequence (b, l, da) from `state` (ds,): (b,).

    The dynamics must have been `prepare`d for this control step; the hidden state is tiled
    over the n candidates here. Terminating families stop paying once a candidate terminates.
    """
    n, horizon, _ = controls.shape
    dynamics.start(n)
    s = state.reshape(1, -1).expand(n, -1)
    total = torch.zeros(n, dtype=state.dtype, device=state.device)
    alive = torch.ones(n, dtype=torch.bool, device=state.device)
    for t in range(horizon):
        enc, raw = coder.encode(controls[:, t])
        s2 = dynamics.step(s, enc, raw)
        r = reward.reward(s, raw, s2)
        if reward.terminated is not None:
            total += torch.where(alive, r, 0.0)
            alive = alive & ~reward.terminated(s2)
        else:
            total += r
        s = s2
    return total


@dataclass
class PlanResult:
    controls: Tensor  # (l, da) the chosen sequence; its first step is executed
    predicted_return: float


def _check(name: str, value: float, low: float, what: str) -> None:
    if isinstance(value, bool) or not value >= low:
        raise ValueError(f"{name} must be {what}, got {value!r}")


class Planner(ABC):
    """Common state: the previous plan, shifted one step at each control step."""

    name = "planner"

    def __init__(self, num_candidates: int, horizon: int, seed: int = 0) -> None:
        _check("num_candidates", num_candidates, 2, "an int >= 2")
        _check("horizon", horizon, 1, "an int >= 1")
        if not isinstance(num_candidates, int) or not isinstance(horizon, int):
            raise ValueError(
                f"num_candidates and horizon must be ints, got {num_candidates!r}, {horizon!r}"
            )
        self.num_candidates = num_candidates
        self.horizon = horizon
        self.seed = seed
        self.generator: torch.Generator | None = None
        self.previous: Tensor | None = None  # (l, da)

    def reset(self, seed: int | None = None, device: torch.device | str = "cpu") -> None:
        """Forget the previous plan and restart the sampling stream (one call per episode)."""
        self.generator = torch.Generator(device=torch.device(device))
        self.generator.manual_seed(self.seed if seed is None else seed)
        self.previous = None

    def _shifted(self) -> Tensor | None:
        if self.previous is None:
            return None
        return torch.cat((self.previous[1:], self.previous[-1:]), dim=0)

    def _gen(self, device: torch.device) -> torch.Generator:
        # compare types: a generator made for "cuda" reports "cuda:0"; resetting it on every
        # call would replay the same candidates at every control step
        if self.generator is None or self.generator.device.type != device.type:
            self.reset(device=device)
        assert self.generator is not None
        return self.generator

    def _uniform(self, n: int, da: int, device: torch.device) -> Tensor:
        u = torch.rand(n, self.horizon, da, generator=self._gen(device), device=device)
        return u.mul_(2.0).sub_(1.0)

    @abstractmethod
    def plan(
        self, dynamics: Dynamics, coder: ActionCoder, reward: FamilyReward, state: Tensor
    ) -> PlanResult:
        """The best control sequence from `state` under `dynamics` (each subclass's search)."""


class RandomShooting(Planner):
    """N uniform control sequences (one of them the previous plan, shifted); best one wins."""

    name = "rs"

    def plan(
        self, dynamics: Dynamics, coder: ActionCoder, reward: FamilyReward, state: Tensor
    ) -> PlanResult:
        u = self._uniform(self.num_candidates, coder.dim, state.device)  # (b, l, da)
        shifted = self._shifted()
        if shifted is not None:
            u[0] = shifted
        returns = rollout_returns(dynamics, coder, reward, state, u)
        best = int(torch.argmax(returns))
        self.previous = u[best].clone()
        return PlanResult(self.previous, float(returns[best]))


class CEM(Planner):
    """Cross-entropy method over Gaussian control sequences (PETS-style)."""

    name = "cem"

    def __init__(
        self,
        num_candidates: int,
        horizon: int,
        seed: int = 0,
        *,
        iterations: int = 5,
        elite_frac: float = 0.1,
        alpha: float = 0.1,
        init_std: float = 0.5,
    ) -> None:
        super().__init__(num_candidates, horizon, seed)
        _check("iterations", iterations, 1, "an int >= 1")
        if not 0.0 < elite_frac <= 1.0:
            raise ValueError(f"elite_frac must be in (0, 1], got {elite_frac!r}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha (momentum of the refit) must be in [0, 1), got {alpha!r}")
        _check("init_std", init_std, 1e-6, "> 0")
        self.iterations = int(iterations)
        # each iteration gets an equal share of the candidate budget
        self.per_iter = max(2, num_candidates // self.iterations)
        self.num_elites = max(1, round(elite_frac * self.per_iter))
        self.alpha = alpha
        self.init_std = init_std

    def plan(
        self, dynamics: Dynamics, coder: ActionCoder, reward: FamilyReward, state: Tensor
    ) -> PlanResult:
        da, dev = coder.dim, state.device
        shifted = self._shifted()
        mean = shifted if shifted is not None else torch.zeros(self.horizon, da, device=dev)
        std = torch.full((self.horizon, da), self.init_std, device=dev)
        best_u, best_r = mean.clone(), -float("inf")
        for _ in range(self.iterations):
            shape = (self.per_iter, self.horizon, da)
            noise = torch.randn(shape, generator=self._gen(dev), device=dev)
            u = (mean + std * noise).clamp_(-1.0, 1.0)  # (b, l, da)
            u[0] = mean  # the current mean is always scored
            returns = rollout_returns(dynamics, coder, reward, state, u)
            top = torch.topk(returns, self.num_elites).indices
            elites = u[top]
            if float(returns[top[0]]) > best_r:
                best_r, best_u = float(returns[top[0]]), u[top[0]].clone()
            mean = self.alpha * mean + (1 - self.alpha) * elites.mean(dim=0)
            std = self.alpha * std + (1 - self.alpha) * elites.std(dim=0, unbiased=False)
        self.previous = mean
        return PlanResult(best_u, best_r)


PLANNERS = ("rs", "cem")


def make_planner(
    name: str,
    num_candidates: int,
    horizon: int,
    seed: int = 0,
    *,
    iterations: int = 5,
    elite_frac: float = 0.1,
) -> Planner:
    """A planner by name: ``rs`` (random shooting) or ``cem``."""
    if name == "rs":
        return RandomShooting(num_candidates, horizon, seed)
    if name == "cem":
        return CEM(num_candidates, horizon, seed, iterations=iterations, elite_frac=elite_frac)
    raise ValueError(f"unknown planner {name!r}; expected one of {PLANNERS}")
