"""Task families: gymnasium environments with randomized physics.

A *task* is one environment with one set of physical parameters (pole length, masses,
gravity, ...). A *family* is the environment id plus the parameter space its tasks are drawn
from. Every parameter has three disjoint regions:

* ``train``   - the training range ``[lo, hi]`` minus the held-out bands;
* ``heldout`` - narrow bands *inside* ``[lo, hi]`` that training never samples (interpolation);
* ``ood``     - intervals *outside* ``[lo, hi]`` (extrapolation).

``draw_task(env_name, seed, split)`` draws every parameter of the family from the chosen
region; the same ``(env_name, seed, split)`` always gives the same task, and the three
splits use independent random streams. ``make_task(env_name, params)`` builds a task with
explicit values (for hand-picked test streams).

Randomized families: CartPole-v1, Pendulum-v1, Acrobot-v1, MountainCarContinuous-v0 and
HalfCheetah-v5 (needs the optional ``mujoco`` extra). Any other registered gymnasium id with
a 1-D ``Box`` observation space and a ``Discrete`` or ``Box`` action space is a single-task
family without randomization (``params == {}`` for every split). Anything else raises a
``ValueError`` that lists what is supported.

Shapes: see the glossary in eaml_ssm/__init__.py (``ds`` is the observation size, ``da`` the
one-hot size for ``Discrete`` actions or the action size for ``Box`` ones).

Why one module: the family table is most of it (each family's parameter ranges, held-out
bands and the setter that writes them into the gymnasium env), and the draws read that table
and its split rules directly; the out-of-range split on dynamics quantities, a concept of
its own, lives in `eaml_ssm.dynamics_ood`.
"""

from __future__ import annotations

import functools
import logging
import math
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

logger = logging.getLogger(__name__)

SPLITS = ("train", "heldout", "ood")

Interval = tuple[float, float]


@dataclass(frozen=True)
class ParamSpec:
    """One physical parameter: its training range, held-out bands and out-of-range intervals."""

    name: str  # attribute name on the unwrapped env (or a multiplier name for MuJoCo)
    default: float  # the value gymnasium ships with
    train: Interval  # training range [lo, hi]; held-out bands are cut out of it
    heldout: tuple[Interval, ...]  # bands strictly inside `train`, never sampled for training
    ood: tuple[Interval, ...]  # intervals outside `train`

    def __post_init__(self) -> None:
        lo, hi = self.train
        if not 0 < lo < hi:
            raise ValueError(f"{self.name}: training range {self.train} must be 0 < lo < hi")
        for a, b in self.heldout:
            if not lo < a < b < hi:
                raise ValueError(f"{self.name}: held-out band {(a, b)} not inside {self.train}")
        for a, b in self.ood:
            if not (0 < a < b) or (a < hi and b > lo):
                raise ValueError(f"{self.name}: ood interval {(a, b)} overlaps {self.train}")

    def intervals(self, split: str) -> tuple[Interval, ...]:
        """The disjoint intervals that `split` samples from."""
        if split == "heldout":
            return self.heldout
        if split == "ood":
            return self.ood
        cuts = sorted(self.heldout)
        edges = [self.train[0]] + [x for band in cuts for x in band] + [self.train[1]]
        return tuple((edges[i], edges[i + 1]) for i in range(0, len(edges), 2))

    def contains(self, value: float, split: str) -> bool:
        """Whether `value` lies in the region of `split` (closed intervals)."""
        return any(a <= value <= b for a, b in self.intervals(split))

    def draw(self, rng: np.random.Generator, split: str) -> float:
        """Uniform over the union of the split's intervals (weighted by their lengths)."""
        ivs = self.intervals(split)
        widths = np.array([b - a for a, b in ivs])
        k = int(rng.choice(len(ivs), p=widths / widths.sum()))
        return float(rng.uniform(*ivs[k]))


def _scaled(
    name: str,
    default: float,
    heldout: tuple[Interval, ...] = ((0.70, 0.75), (1.25, 1.30)),
    ood: tuple[Interval, ...] = ((1.6, 2.0),),
) -> ParamSpec:
    """A parameter trained on default x [0.5, 1.5], with bands/intervals given as multipliers."""
    return ParamSpec(
        name=name,
        default=default,
        train=(0.5 * default, 1.5 * default),
        heldout=tuple((a * default, b * default) for a, b in heldout),
        ood=tuple((a * default, b * default) for a, b in ood),
    )


# --- how each family writes its parameters into a freshly made environment ----------------


def _apply_cartpole(env: Any, p: Mapping[str, float]) -> None:
    env.length = p["length"]  # half the pole length, as gymnasium defines it
    env.masspole = p["masspole"]
    env.masscart = p["masscart"]
    env.force_mag = p["force_mag"]
    env.total_mass = env.masspole + env.masscart  # derived
    env.polemass_length = env.masspole * env.length  # derived


def _apply_pendulum(env: Any, p: Mapping[str, float]) -> None:
    env.m = p["m"]
    env.l = p["l"]
    env.g = p["g"]


def _apply_acrobot(env: Any, p: Mapping[str, float]) -> None:
    env.LINK_LENGTH_1 = p["LINK_LENGTH_1"]
    env.LINK_LENGTH_2 = p["LINK_LENGTH_2"]
    env.LINK_MASS_1 = p["LINK_MASS_1"]
    env.LINK_MASS_2 = p["LINK_MASS_2"]
    # Derived: the centres of mass sit mid-link. gymnasium's dynamics read only
    # LINK_LENGTH_1 and the COM positions, so without this LINK_LENGTH_2 would change
    # nothing but the rendering. LINK_MOI (one value shared by both links) stays at 1.
    env.LINK_COM_POS_1 = 0.5 * p["LINK_LENGTH_1"]
    env.LINK_COM_POS_2 = 0.5 * p["LINK_LENGTH_2"]


def _apply_mountaincar(env: Any, p: Mapping[str, float]) -> None:
    env.power = p["power"]


def _apply_mujoco(env: Any, p: Mapping[str, float]) -> None:
    import mujoco  # present whenever a MuJoCo env could be made

    model = env.model  # a fresh MjModel per env, so scaling the shipped values is safe
    scale = p["body_mass_scale"]
    model.body_mass[:] = model.body_mass * scale
    model.body_inertia[:] = model.body_inertia * scale  # same density scale: inertia follows
    model.dof_damping[:] = model.dof_damping * p["joint_damping_scale"]
    mujoco.mj_setConst(model, env.data)  # recompute derived constants (subtree masses, ...)


@dataclass(frozen=True)
class FamilySpec:
    """Static description of a randomized family."""

    env_id: str
    params: tuple[ParamSpec, ...]
    apply: Callable[[Any, Mapping[str, float]], None]
    angle_dims: tuple[int, ...] = ()  # observation columns that are raw angles (rad)
    needs: str | None = None  # optional dependency (import name), if any
    note: str = ""


FAMILIES: dict[str, FamilySpec] = {
    spec.env_id: spec
    for spec in (
        FamilySpec(
            "CartPole-v1",
            (
                _scaled("length", 0.5),
                _scaled("masspole", 0.1),
                _scaled("masscart", 1.0),
                _scaled("force_mag", 10.0),
            ),
            _apply_cartpole,
            angle_dims=(2,),
            note="short episodes under random actions; near-linear dynamics",
        ),
        FamilySpec(
            "Pendulum-v1",
            (
                _scaled("m", 1.0),
                _scaled("l", 1.0),
                ParamSpec("g", 10.0, (7.5, 12.5), ((9.0, 9.5),), ((13.0, 15.0),)),
            ),
            _apply_pendulum,
            note="observation (cos th, sin th, thdot): the angle is already wrapped",
        ),
        FamilySpec(
            "Acrobot-v1",
            (
                _scaled("LINK_LENGTH_1", 1.0),
                _scaled("LINK_LENGTH_2", 1.0),
                _scaled("LINK_MASS_1", 1.0),
                _scaled("LINK_MASS_2", 1.0),
            ),
            _apply_acrobot,
            note="observation uses cos/sin of both joint angles",
        ),
        FamilySpec(
            "MountainCarContinuous-v0",
            (_scaled("power", 0.0015),),
            _apply_mountaincar,
        ),
        FamilySpec(
            "HalfCheetah-v5",
            (
                ParamSpec(
                    "body_mass_scale",
                    1.0,
                    (0.5, 1.5),
                    ((0.70, 0.75), (1.25, 1.30)),
                    ((0.3, 0.4), (1.6, 2.0)),
                ),
                ParamSpec(
                    "joint_damping_scale",
                    1.0,
                    (0.5, 1.5),
                    ((0.70, 0.75), (1.25, 1.30)),
                    ((0.3, 0.4), (1.6, 2.0)),
                ),
            ),
            _apply_mujoco,
            angle_dims=(1,),  # root pitch (rooty); the joint angles are limited
            needs="mujoco",
            note="multipliers on every body mass and joint damping; the mujoco extra",
        ),
    )
}


def supported() -> str:
    """A human-readable list of what `draw_task` accepts."""
    fams = ", ".join(FAMILIES)
    return (
        f"randomized families: {fams}; or any other registered gymnasium id whose "
        "observation space is a 1-D Box and whose action space is Discrete or Box "
        "(a single task without randomization)"
    )


@dataclass(frozen=True)
class TaskFamily:
    """A family resolved against gymnasium: spaces, dims and parameter specs."""

    env_id: str
    observation_space: spaces.Box
    action_space: spaces.Discrete | spaces.Box
    params: tuple[ParamSpec, ...]
    angle_dims: tuple[int, ...]
    randomized: bool

    @property
    def state_dim(self) -> int:
        """ds: observation (state) size."""
        return int(self.observation_space.shape[0])

    @property
    def action_dim(self) -> int:
        """da: action-encoding size (one-hot size for Discrete, action size for Box)."""
        if isinstance(self.action_space, spaces.Discrete):
            return int(self.action_space.n)
        return int(np.prod(self.action_space.shape))

    @property
    def input_dim(self) -> int:
        """Model input size: state + action encoding."""
        return self.state_dim + self.action_dim

    @property
    def target_dim(self) -> int:
        """Model target size: change of state."""
        return self.state_dim

    @property
    def discrete_actions(self) -> bool:
        return isinstance(self.action_space, spaces.Discrete)

    def param(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"{self.env_id} has no parameter {name!r}; it has {self.param_names}")

    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)


@dataclass(frozen=True)
class Task:
    """One environment with fixed physics. `make_env()` gives a gymnasium env with them."""

    env_id: str
    params: dict[str, float] = field(hash=False)
    seed: int | None = None  # the seed it was sampled from (None for `make_task`)
    split: str = "train"

    def make_env(self, **kwargs: Any) -> gym.Env:
        """A new `gym.make(env_id)` whose unwrapped env carries this task's physics."""
        env = _make(self.env_id, **kwargs)
        spec = FAMILIES.get(self.env_id)
        if spec is not None:
            spec.apply(env.unwrapped, self.params)
        return env

    @property
    def family(self) -> TaskFamily:
        return get_family(self.env_id)


def _make(env_id: str, **kwargs: Any) -> gym.Env:
    try:
        return gym.make(env_id, **kwargs)
    except gym.error.DependencyNotInstalled as exc:
        spec = FAMILIES.get(env_id)
        hint = f" (maturin develop --release --extras {spec.needs})" if spec and spec.needs else ""
        raise ValueError(f"{env_id} needs a package that is not installed{hint}: {exc}") from exc


@functools.cache
def get_family(env_id: str) -> TaskFamily:
    """Resolve `env_id` to a family, or raise ValueError listing what is supported."""
    if not isinstance(env_id, str):
        raise TypeError(f"env_name must be a str, got {type(env_id).__name__}")
    if env_id not in gym.envs.registry:
        raise ValueError(f"unknown environment id {env_id!r}; supported: {supported()}")
    spec = FAMILIES.get(env_id)
    env = _make(env_id)
    try:
        obs_space, act_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(
            f"{env_id} has observation space {obs_space}; a dynamics task needs a 1-D Box. "
            f"Supported: {supported()}"
        )
    if not isinstance(act_space, spaces.Discrete | spaces.Box):
        raise ValueError(
            f"{env_id} has action space {act_space}; expected Discrete or Box. "
            f"Supported: {supported()}"
        )
    if isinstance(act_space, spaces.Box) and not np.all(
        np.isfinite(act_space.low) & np.isfinite(act_space.high)
    ):
        raise ValueError(f"{env_id} has an unbounded Box action space {act_space}")
    return TaskFamily(
        env_id=env_id,
        observation_space=obs_space,
        action_space=act_space,
        params=spec.params if spec else (),
        angle_dims=spec.angle_dims if spec else (),
        randomized=spec is not None,
    )


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def task_rng(env_id: str, seed: int, split: str) -> np.random.Generator:
    """The random stream of task `(env_id, seed, split)`; splits never share a stream."""
    family_key = zlib.crc32(env_id.encode())
    return np.random.default_rng([family_key, SPLITS.index(split), int(seed)])


def draw_task(
    env_name: str,
    seed: int,
    split: str = "train",
    *,
    fixed: Mapping[str, float] | None = None,
) -> Task:
    """Draw the task `(env_name, seed, split)`: the same arguments give the same physics.

    `fixed` pins some parameters (e.g. ``{"g": 10.0}`` to randomize only Pendulum's m and l);
    the others are drawn exactly as without it.
    """
    _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    family = get_family(env_name)
    rng = task_rng(env_name, int(seed), split)
    params = {p.name: p.draw(rng, split) for p in family.params}
    params.update(_fixed(family, fixed))
    return Task(env_id=env_name, params=params, seed=int(seed), split=split)


def _fixed(family: TaskFamily, fixed: Mapping[str, float] | None) -> dict[str, float]:
    if not fixed:
        return {}
    unknown = set(fixed) - set(family.param_names)
    if unknown:
        raise ValueError(
            f"{family.env_id} has no parameters {sorted(unknown)}; it has {family.param_names}"
        )
    out = {k: float(v) for k, v in fixed.items()}
    for k, v in out.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"parameter {k} must be finite and > 0, got {v!r}")
    return out


def draw_tasks(
    env_name: str,
    count: int,
    *,
    seed: int = 0,
    split: str = "train",
    fixed: Mapping[str, float] | None = None,
) -> list[Task]:
    """`count` tasks with seeds `seed, seed+1, ...` (distinct physics for a randomized family)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return [draw_task(env_name, seed + i, split, fixed=fixed) for i in range(count)]


def make_task(env_name: str, params: Mapping[str, float], split: str = "train") -> Task:
    """A task with explicit parameter values (every parameter of the family, positive)."""
    _check_split(split)
    family = get_family(env_name)
    names = set(family.param_names)
    if set(params) != names:
        raise ValueError(f"{env_name} takes parameters {sorted(names)}, got {sorted(params)}")
    values = _fixed(family, params)
    return Task(env_id=env_name, params={k: values[k] for k in family.param_names}, split=split)


def default_task(env_name: str) -> Task:
    """The environment exactly as gymnasium ships it."""
    family = get_family(env_name)
    return Task(env_id=env_name, params={p.name: p.default for p in family.params})
