"""The control episode loop: plan, act, store the transition, adapt, plan again.

One call of `run_episode` plays one episode of one task from one start seed:

1. warm the model's hidden state on the latest real steps (`SSMDynamics.prepare`) and plan
   (all candidates in one dynamics call per horizon step);
2. execute the plan's first action; score the model's one-step prediction of that action
   against what happened (the model-error curve);
3. write the transition into the experience store at once, with its own task / episode /
   step ids (`eaml_ssm.feed.LiveWriter`), so hybrid replay can draw on it;
4. every ``adapt_every`` steps, adapt on the latest window (normalized exactly as in
   training, from a zero hidden state as the meta-training windows were) and load the adapted
   weights into the planner's model; the next step re-warms from the new weights.

Timing covers planning plus adaptation (amortized over the steps), not the environment.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eaml_ssm.control.model import SSMDynamics
from eaml_ssm.control.planners import ActionCoder, Dynamics, Planner
from eaml_ssm.control.rewards import get_reward
from eaml_ssm.features import Normalizer, encode_inputs, encode_targets
from eaml_ssm.feed import LiveWriter
from eaml_ssm.tasks import Task


@dataclass
class LiveIds:
    """Where an episode's transitions go in the store."""

    task_id: int
    episode_id: int


@dataclass
class EpisodeResult:
    ret: float
    steps: int
    # fraction of the episode's max_steps whose next state is in the goal region; after an
    # early termination the final state counts for the remaining steps (CartPole: fallen,
    # MountainCar: at the flag)
    goal_fraction: float
    final_goal_fraction: float  # the same over the last quarter of max_steps
    plan_ms: float  # mean planning time per control step (wall clock)
    step_ms: float  # planning + adaptation, amortized per control step (wall clock)
    step_cpu_ms: float  # the same in CPU time of this process (robust to a shared machine)
    adaptations: int
    model_error: list[float] = field(default_factory=list)  # per step, normalized MSE

    def to_dict(self) -> dict[str, Any]:
        return {
            "return": self.ret,
            "steps": self.steps,
            "goal_fraction": self.goal_fraction,
            "final_goal_fraction": self.final_goal_fraction,
            "plan_ms": self.plan_ms,
            "step_ms": self.step_ms,
            "step_cpu_ms": self.step_cpu_ms,
            "adaptations": self.adaptations,
            "model_error": self.model_error,
        }


@dataclass
class Adaptation:
    """Online adaptation during an episode: an `eaml_ssm.adaptation.Adapter` of its own."""

    adapter: Any  # Adapter; a private fork, never the meta-learned one
    every: int  # adapt every M steps
    window: int  # on the latest `window` steps


def run_episode(
    task: Task,
    *,
    planner: Planner | None,
    dynamics: Dynamics | None,
    start_seed: int,
    max_steps: int,
    normalizer: Normalizer | None = None,
    adaptation: Adaptation | None = None,
    store: Any = None,
    ids: LiveIds | None = None,
    device: torch.device | str = "cpu",
) -> EpisodeResult:
    """One episode; ``planner=None`` is the random policy (uniform controls)."""
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if (planner is None) != (dynamics is None):
        raise ValueError("give both a planner and its dynamics, or neither (random policy)")
    if store is not None and ids is None:
        raise ValueError("writing live experience needs ids (task_id, episode_id)")
    if adaptation is not None and not isinstance(dynamics, SSMDynamics):
        raise ValueError("adaptation needs the learned model's dynamics (SSMDynamics)")
    if adaptation is not None and normalizer is None:
        raise ValueError("adaptation needs the run's normalizer")
    dev = torch.device(device)
    family = task.family
    reward = get_reward(task.env_id)
    coder = ActionCoder(family, dev)
    env = task.make_env()
    try:
        return _play(
            env,
            family,
            reward,
            coder,
            planner,
            dynamics,
            start_seed,
            max_steps,
            normalizer,
            adaptation,
            store,
            ids,
            dev,
        )
    finally:
        env.close()


def _play(
    env: Any,
    family: Any,
    reward: Any,
    coder: ActionCoder,
    planner: Planner | None,
    dynamics: Dynamics | None,
    start_seed: int,
    max_steps: int,
    normalizer: Normalizer | None,
    adaptation: Adaptation | None,
    store: Any,
    ids: LiveIds | None,
    dev: torch.device,
) -> EpisodeResult:
    obs, _ = env.reset(seed=start_seed)
    writer = None
    if store is not None and ids is not None:  # episode `ids.episode_id`, steps 0, 1, ...
        writer = LiveWriter(store, ids.task_id, episode_base=ids.episode_id)
    if planner is not None:
        planner.reset(seed=start_seed, device=dev)
    rng = torch.Generator().manual_seed(start_seed)
    ds, da = family.state_dim, family.action_dim
    states = torch.zeros(max_steps, ds, device=dev)  # raw states the episode visited
    actions = torch.zeros(max_steps, da, device=dev)  # their action encodings
    targets = np.zeros((max_steps, ds), dtype=np.float32)  # raw changes of state
    inputs = np.zeros((max_steps, ds + da), dtype=np.float32)  # raw model inputs
    total, in_goal, plan_s, adapt_s, adaptations = 0.0, [], 0.0, 0.0, 0
    cpu_s = 0.0
    errors: list[float] = []
    steps, ended = 0, False
    for t in range(max_steps):
        s = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=dev)
        t0, c0 = time.perf_counter(), time.process_time()
        predicted = None
        if planner is not None and dynamics is not None:
            with torch.inference_mode():
                dynamics.prepare((states[:t], actions[:t]) if t else None)
                u = planner.plan(dynamics, coder, reward, s).controls[0]
            _sync(dev)
            plan_s += time.perf_counter() - t0
            cpu_s += time.process_time() - c0
            with torch.inference_mode():  # the model's one-step prediction of this action
                dynamics.start(1)
                enc, raw = coder.encode(u.reshape(1, -1))
                predicted = dynamics.step(s.reshape(1, -1), enc, raw)[0]
        else:
            u = torch.rand(coder.dim, generator=rng).mul_(2).sub_(1).to(dev)
        action = coder.to_env(u)
        obs2, r, terminated, truncated, _ = env.step(action)
        x_row = encode_inputs(family, obs, [action])[0]
        y_row = encode_targets(family, obs, obs2)[0]
        inputs[t], targets[t] = x_row, y_row
        states[t] = s
        actions[t] = torch.as_tensor(x_row[ds:], device=dev)
        if writer is not None:  # live experience, through the feed's one writer
            writer.add(x_row, y_row, episode_start=t == 0)
        if predicted is not None and normalizer is not None:
            err = normalizer.normalize_targets(predicted.cpu() - s.cpu()) - (
                normalizer.normalize_targets(torch.from_numpy(y_row))
            )
            errors.append(float((err * err).mean()))
        s2 = torch.as_tensor(np.asarray(obs2, dtype=np.float32)).reshape(1, -1)
        in_goal.append(bool(reward.goal(s2)[0]))
        total += float(r)
        steps = t + 1
        obs = obs2
        if adaptation is not None and steps % adaptation.every == 0 and steps >= adaptation.window:
            ta, ca = time.perf_counter(), time.process_time()
            _adapt(adaptation, dynamics, normalizer, inputs, targets, steps, dev)
            _sync(dev)
            adapt_s += time.perf_counter() - ta
            cpu_s += time.process_time() - ca
            adaptations += 1
        if terminated or truncated:
            ended = bool(terminated)
            break
    if ended:  # terminated: the state it ended in (fallen / at the flag) stays
        in_goal += [in_goal[-1]] * (max_steps - steps)
    tail = in_goal[-max(1, len(in_goal) // 4) :]
    return EpisodeResult(
        ret=total,
        steps=steps,
        goal_fraction=float(np.mean(in_goal)),
        final_goal_fraction=float(np.mean(tail)),
        plan_ms=1000 * plan_s / steps,
        step_ms=1000 * (plan_s + adapt_s) / steps,
        step_cpu_ms=1000 * cpu_s / steps,
        adaptations=adaptations,
        model_error=errors,
    )


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _adapt(
    adaptation: Adaptation,
    dynamics: Any,
    normalizer: Any,
    inputs: np.ndarray,
    targets: np.ndarray,
    steps: int,
    dev: torch.device,
) -> None:
    """Adapt on the latest window (normalized as in training) and load the new weights."""
    lo = steps - adaptation.window
    x = normalizer.normalize_inputs(torch.from_numpy(inputs[lo:steps].copy())).unsqueeze(0)
    y = normalizer.normalize_targets(torch.from_numpy(targets[lo:steps].copy())).unsqueeze(0)
    ad = adaptation.adapter
    ad.update_step(x.to(dev), y.to(dev), None)
    dynamics.load(adapted_weights(ad))


def adapted_weights(adapter: Any) -> dict[str, torch.Tensor]:
    """The adapter's current weights by parameter name."""
    return {k: v.detach() for k, v in adapter.params.items()}
