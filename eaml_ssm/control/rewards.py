"""Rewards, termination and goal regions of each supported family, on batched torch states.

Every function takes raw states (the environment's observations) ``(b, ds)``, raw actions
``(b, da)`` (the values the environment receives; for ``Discrete`` families ``(b, 1)``, the
action index as a float column) and raw next states ``(b, ds)``, and returns ``(b,)`` tensors.
They are copied from the environments' ``step`` so that a planner scores predicted states
exactly as the environment scores real ones (tested against recorded transitions). Shapes:
see the glossary in eaml_ssm/__init__.py (``b`` counts the planner's candidates).

Families: Pendulum-v1 (swing-up), CartPole-v1 (balance, with termination),
MountainCarContinuous-v0, HalfCheetah-v5 (forward reward; needs mujoco). Anything else raises
a ``ValueError`` naming what is supported.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

# Pendulum: the pole counts as upright within this angle of the top (radians).
PENDULUM_GOAL_ANGLE = math.pi / 10
# CartPole-v1 termination thresholds (gymnasium's x_threshold, theta_threshold_radians).
CARTPOLE_X_THRESHOLD = 2.4
CARTPOLE_THETA_THRESHOLD = 12 * 2 * math.pi / 360
# MountainCarContinuous-v0 goal (gymnasium's goal_position, goal_velocity).
MOUNTAINCAR_GOAL_POSITION = 0.45
MOUNTAINCAR_GOAL_VELOCITY = 0.0
# HalfCheetah-v5 defaults: forward_reward_weight, ctrl_cost_weight; obs[8] = root x velocity
# (qvel[0]; the default observation drops the x position).
CHEETAH_FORWARD_WEIGHT = 1.0
CHEETAH_CTRL_WEIGHT = 0.1
CHEETAH_XVEL_COLUMN = 8

RewardFn = Callable[[Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class FamilyReward:
    """How one family scores a transition (s, a, s').

    ``reward(s, a, s')`` is the environment's reward; ``terminated(s')`` is True where the
    episode ends after the step (``None``: never terminates); ``goal(s')`` is True where the
    state is in the family's goal region (pole upright, pole balanced, car at the flag, ...).
    """

    env_id: str
    reward: RewardFn
    goal: Callable[[Tensor], Tensor]
    terminated: Callable[[Tensor], Tensor] | None = None
    reward_after_termination: bool = False  # CartPole pays 1 only while the pole is up


def pendulum_angle(states: Tensor) -> Tensor:
    """theta in [-pi, pi) from an observation (cos theta, sin theta, thdot): (b,)."""
    return torch.atan2(states[:, 1], states[:, 0])


def _pendulum_reward(s: Tensor, a: Tensor, s2: Tensor) -> Tensor:
    # gymnasium: costs = angle_normalize(th)^2 + 0.1 thdot^2 + 0.001 u^2, u clipped to [-2, 2],
    # scored on the state *before* the step
    # atan2 of the observation is already angle_normalize(th)
    u = a[:, 0].clamp(-2.0, 2.0)
    th = pendulum_angle(s)
    return -(th * th + 0.1 * s[:, 2] * s[:, 2] + 0.001 * u * u)


def _pendulum_goal(s2: Tensor) -> Tensor:
    return pendulum_angle(s2).abs() <= PENDULUM_GOAL_ANGLE


def _cartpole_terminated(s2: Tensor) -> Tensor:
    return (s2[:, 0].abs() > CARTPOLE_X_THRESHOLD) | (s2[:, 2].abs() > CARTPOLE_THETA_THRESHOLD)


def _cartpole_reward(s: Tensor, a: Tensor, s2: Tensor) -> Tensor:
    # 1 for every step taken while the pole was up, the step that drops it included
    return torch.ones(s.shape[0], dtype=s.dtype, device=s.device)


def _cartpole_goal(s2: Tensor) -> Tensor:
    return ~_cartpole_terminated(s2)


def _mountaincar_terminated(s2: Tensor) -> Tensor:
    return (s2[:, 0] >= MOUNTAINCAR_GOAL_POSITION) & (s2[:, 1] >= MOUNTAINCAR_GOAL_VELOCITY)


def _mountaincar_reward(s: Tensor, a: Tensor, s2: Tensor) -> Tensor:
    # gymnasium: 100 on reaching the goal, minus 0.1 * action^2 (the unclipped action)
    bonus = _mountaincar_terminated(s2).to(s.dtype) * 100.0
    return bonus - 0.1 * a[:, 0] ** 2


def _mountaincar_goal(s2: Tensor) -> Tensor:
    return s2[:, 0] >= MOUNTAINCAR_GOAL_POSITION


def _cheetah_reward(s: Tensor, a: Tensor, s2: Tensor) -> Tensor:
    # gymnasium uses (x_after - x_before) / dt; the observation's qvel[0] is that velocity's
    # instantaneous value, the closest quantity a model of observations can predict
    forward = CHEETAH_FORWARD_WEIGHT * s2[:, CHEETAH_XVEL_COLUMN]
    return forward - CHEETAH_CTRL_WEIGHT * (a * a).sum(dim=1)


def _cheetah_goal(s2: Tensor) -> Tensor:
    return s2[:, CHEETAH_XVEL_COLUMN] > 0


REWARDS: dict[str, FamilyReward] = {
    r.env_id: r
    for r in (
        FamilyReward("Pendulum-v1", _pendulum_reward, _pendulum_goal),
        FamilyReward(
            "CartPole-v1",
            _cartpole_reward,
            _cartpole_goal,
            terminated=_cartpole_terminated,
        ),
        FamilyReward(
            "MountainCarContinuous-v0",
            _mountaincar_reward,
            _mountaincar_goal,
            terminated=_mountaincar_terminated,
        ),
        FamilyReward("HalfCheetah-v5", _cheetah_reward, _cheetah_goal),
    )
}


def get_reward(env_id: str) -> FamilyReward:
    """The reward of a family, or a ValueError naming the families that have one."""
    if env_id not in REWARDS:
        raise ValueError(
            f"no control reward for {env_id!r}: model-predictive control supports "
            f"{', '.join(REWARDS)}"
        )
    return REWARDS[env_id]
