"""Acting with the adapted model: model-predictive control over the SSM.

    planners   random shooting (previous plan shifted in) and CEM, batched over candidates
    rewards    each family's reward, termination and goal region on predicted states
    oracle     the task's true dynamics as a batched model (the upper reference)
    model      the learned SSM as a fast batched step model (normalization fused)
    loop       the episode loop: plan, act, store the transition, adapt, plan again
    run        the methods grid behind `python -m eaml_ssm control`
    report     results JSON, markdown table, plots, rendered docs
    timing     `control_timings(device)`: one control step at N x H = 500 x 20 and 4000 x 30

See docs/control.md.
"""

from __future__ import annotations

from eaml_ssm.control.loop import EpisodeResult, run_episode
from eaml_ssm.control.model import FastSSMStep, SSMDynamics
from eaml_ssm.control.oracle import OracleDynamics
from eaml_ssm.control.planners import CEM, ActionCoder, RandomShooting, make_planner
from eaml_ssm.control.rewards import get_reward
from eaml_ssm.control.timing import control_timings

__all__ = [
    "CEM",
    "ActionCoder",
    "EpisodeResult",
    "FastSSMStep",
    "OracleDynamics",
    "RandomShooting",
    "SSMDynamics",
    "control_timings",
    "get_reward",
    "make_planner",
    "run_episode",
]
