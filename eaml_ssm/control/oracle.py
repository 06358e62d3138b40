"""The task's true dynamics as a batched model: the upper reference of the control grid.

Each update is copied line by line from the environment's ``step`` (gymnasium 1.x) and runs
on ``(b, ds)`` observation tensors, so the oracle planner sees exactly what the environment
would do with the task's physics (Pendulum clips the velocity *before* it updates the angle;
CartPole integrates with explicit Euler; MountainCar clips velocity, then position). Tested
against the environments on recorded transitions. Shapes: see the glossary in
eaml_ssm/__init__.py (``b`` counts the planner's candidates).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from eaml_ssm.tasks import Task

StepFn = Callable[[Tensor, Tensor], Tensor]


def _pendulum(p: Mapping[str, float]) -> StepFn:
    g, m, length = p["g"], p["m"], p["l"]
    dt, max_speed, max_torque = 0.05, 8.0, 2.0

    def step(s: Tensor, a: Tensor) -> Tensor:
        th = torch.atan2(s[:, 1], s[:, 0])
        thdot = s[:, 2]
        u = a[:, 0].clamp(-max_torque, max_torque)
        newthdot = thdot + (3 * g / (2 * length) * torch.sin(th) + 3.0 / (m * length**2) * u) * dt
        newthdot = newthdot.clamp(-max_speed, max_speed)
        newth = th + newthdot * dt
        return torch.stack((torch.cos(newth), torch.sin(newth), newthdot), dim=1)

    return step


def _cartpole(p: Mapping[str, float]) -> StepFn:
    gravity, tau = 9.8, 0.02
    masspole, masscart, length = p["masspole"], p["masscart"], p["length"]
    force_mag = p["force_mag"]
    total_mass = masspole + masscart
    polemass_length = masspole * length

    def step(s: Tensor, a: Tensor) -> Tensor:
        x, x_dot, theta, theta_dot = s.unbind(dim=1)
        force = torch.where(a[:, 0] >= 0.5, force_mag, -force_mag)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + polemass_length * theta_dot**2 * sintheta) / total_mass
        thetaacc = (gravity * sintheta - costheta * temp) / (
            length * (4.0 / 3.0 - masspole * costheta**2 / total_mass)
        )
        xacc = temp - polemass_length * thetaacc * costheta / total_mass
        return torch.stack(
            (
                x + tau * x_dot,
                x_dot + tau * xacc,
                theta + tau * theta_dot,
                theta_dot + tau * thetaacc,
            ),
            dim=1,
        )

    return step


def _mountaincar(p: Mapping[str, float]) -> StepFn:
    power = p["power"]
    min_pos, max_pos, max_speed = -1.2, 0.6, 0.07

    def step(s: Tensor, a: Tensor) -> Tensor:
        position, velocity = s[:, 0], s[:, 1]
        force = a[:, 0].clamp(-1.0, 1.0)
        velocity = (velocity + force * power - 0.0025 * torch.cos(3 * position)).clamp(
            -max_speed, max_speed
        )
        position = (position + velocity).clamp(min_pos, max_pos)
        velocity = torch.where((position == min_pos) & (velocity < 0), 0.0, velocity)
        return torch.stack((position, velocity), dim=1)

    return step


_ORACLES: dict[str, Callable[[Mapping[str, float]], StepFn]] = {
    "Pendulum-v1": _pendulum,
    "CartPole-v1": _cartpole,
    "MountainCarContinuous-v0": _mountaincar,
}


class OracleDynamics:
    """True dynamics of one task: ``step(states (b, ds), raw actions (b, da)) -> (b, ds)``.

    Same interface as the learned model's planner view (`eaml_ssm.control.model.SSMDynamics`),
    so a planner runs unchanged on either; `prepare` has nothing to warm up.
    """

    def __init__(self, task: Task) -> None:
        if task.env_id not in _ORACLES:
            raise ValueError(
                f"no oracle dynamics for {task.env_id!r}; the oracle covers {', '.join(_ORACLES)}"
            )
        self.task = task
        self._step = _ORACLES[task.env_id](task.params)

    def prepare(self, history: object, num_candidates: int = 1) -> None:
        """Nothing to warm: the true dynamics are memoryless."""

    def start(self, n: int) -> None:
        """Nothing to tile."""

    def step(self, states: Tensor, encoded: Tensor, raw: Tensor) -> Tensor:
        return self._step(states, raw)


def has_oracle(env_id: str) -> bool:
    return env_id in _ORACLES


__all__ = ["OracleDynamics", "has_oracle"]
