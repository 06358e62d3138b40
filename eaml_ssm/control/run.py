"""`python -m eaml_ssm control`: the control grid on a trained run folder.

For each split (held-out, out-of-range), each test task and each start seed, every method
plays one episode from the same start state:

    no adaptation        the meta-learned model, MPC without adaptation
    GrBAL reset (w=0)    re-adapt from the meta-learned weights every M steps (Nagabandi 2019)
    continual (w=0)      keep adapting every M steps, no replay
    hybrid (w=...)       continual adaptation with replay from the store (live rows included)
    oracle               the same planner and budget on the task's true dynamics
    random               uniform random actions

(M is ``--adapt_every``; w in a method's name is its replay weight ``experience_weight``.)

Results: mean return with 95% intervals, the normalized score
(R - R_random) / (R_oracle - R_random) of the split means, the fraction of steps in the goal
region, episodes that end in it, and planning ms per control step (with adaptation amortized).
Written as JSON (``--results``), a markdown table beside it, and plots (return per method,
model error along an episode).
"""

from __future__ import annotations

import argparse
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eaml_ssm.control.loop import Adaptation, EpisodeResult, LiveIds, run_episode
from eaml_ssm.control.model import SSMDynamics
from eaml_ssm.control.oracle import OracleDynamics, has_oracle
from eaml_ssm.control.planners import PLANNERS, Dynamics, Planner, make_planner
from eaml_ssm.control.report import DEFAULT_RESULTS_DIR, render_markdown, rerender, summarize_grid
from eaml_ssm.control.rewards import get_reward
from eaml_ssm.features import Normalizer
from eaml_ssm.tasks import Task, draw_tasks, get_family

log = logging.getLogger(__name__)

# Live transitions get task ids far above any collected task's (collection numbers from 0).
LIVE_TASK_BASE = 1_000_000
SPLITS = ("heldout", "ood")

PROFILES: dict[str, dict[str, Any]] = {
    # fits in 10 minutes on 2 CPU cores (a smaller budget, fewer tasks)
    "quick": {"tasks": 2, "episodes": 2, "num_candidates": 200, "horizon": 15, "max_steps": 100},
    # the setting: random shooting 500 x 20, full Pendulum episodes
    "full": {"tasks": 4, "episodes": 2, "num_candidates": 500, "horizon": 20, "max_steps": 200},
}


@dataclass
class ControlOptions:
    planner: str = "rs"
    num_candidates: int = 500
    horizon: int = 20
    cem_iterations: int = 5
    elite_frac: float = 0.1
    warmup: int = 4
    adapt_every: int = 0  # 0: the run's support_len
    tasks: int = 4
    episodes: int = 2
    max_steps: int = 200
    seed: int = 0
    device: str = "auto"
    methods: tuple[str, ...] = ()  # empty: all
    splits: tuple[str, ...] = SPLITS

    def validate(self) -> None:
        if self.planner not in PLANNERS:
            raise ValueError(f"--planner must be one of {PLANNERS}, got {self.planner!r}")
        for name in ("num_candidates", "horizon", "tasks", "episodes", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.num_candidates < 2:
            raise ValueError(f"--num_candidates must be >= 2, got {self.num_candidates}")
        bad = sorted(set(self.splits) - set(SPLITS))
        if bad or not self.splits:
            raise ValueError(f"--splits must be some of {SPLITS}, got {list(self.splits)}")
        if self.warmup < 0 or self.adapt_every < 0:
            raise ValueError("--warmup and --adapt_every must be >= 0")
        if self.episodes < 2:
            log.warning("fewer than 2 episodes per task: no interval over start states")


@dataclass
class TrainedRun:
    """What control needs from a run folder (loaded read-only)."""

    path: Path
    cfg: Any  # RunConfig
    maml: Any  # MetaMAML, the meta-learned weights; never modified here
    normalizer: Normalizer
    store_path: Path


def load_trained(path: str | Path, device: torch.device) -> TrainedRun:
    """The meta-learned model, normalizer and store of a trained run folder (through
    `eaml_ssm.load_run`, the one loader of run folders)."""
    from eaml_ssm.pipeline import STORE_FILE
    from eaml_ssm.run import load_run

    folder = Path(path)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"{folder} is not a run folder (no config.json); train one first")
    run = load_run(folder, device)
    store_path = folder / STORE_FILE
    if not store_path.exists():
        raise FileNotFoundError(f"{folder} has no saved store ({STORE_FILE}) to replay from")
    # the episode loop scores model error on the CPU: keep the normalizer there
    return TrainedRun(folder, run.config, run.maml, run.normalizer.to("cpu"), store_path)


def _planner(opts: ControlOptions) -> Planner:
    return make_planner(
        opts.planner,
        opts.num_candidates,
        opts.horizon,
        opts.seed,
        iterations=opts.cem_iterations,
        elite_frac=opts.elite_frac,
    )


def method_names(cfg: Any) -> list[str]:
    from eaml_ssm.pipeline import methods

    return [*methods(cfg, _NullAdapter()), "oracle", "random"]  # type: ignore[arg-type]


class _NullAdapter:
    """Stands in for an adapter where only the method names are needed."""

    def __init__(self) -> None:
        from eaml_ssm.adaptation import AdaptationConfig

        self.config = AdaptationConfig()

    def fork(self, **_: Any) -> _NullAdapter:
        return self

    def reset(self) -> None:
        pass


def model_episode(
    trained: TrainedRun,
    method: str,
    task: Task,
    opts: ControlOptions,
    start_seed: int,
    ids: LiveIds,
    device: torch.device,
    store: Any = None,
) -> EpisodeResult:
    """One episode of a model-based method on a private copy of the weights and store."""
    import rust_buffer
    from eaml_ssm.pipeline import Data, Trained, base_adapter, methods

    cfg = trained.cfg
    family = get_family(cfg.env_name)
    if store is None:
        store = rust_buffer.RingBuffer.load(str(trained.store_path))  # this episode's copy
    # a private copy: adaptation must never touch the meta-learned weights, whatever the
    # Adapter does with the model it is given
    maml = copy.deepcopy(trained.maml)
    base = base_adapter(
        cfg, Trained(maml.model, maml, [], 0.0), Data(family, [], store, trained.normalizer)
    )
    variants = methods(cfg, base)
    if method not in variants:
        raise ValueError(f"unknown model method {method!r}; expected one of {list(variants)}")
    adapter, adapts = variants[method]
    every = opts.adapt_every or cfg.support_len
    dyn = SSMDynamics(
        copy.deepcopy(trained.maml.model),
        trained.normalizer,
        family,
        warmup=opts.warmup,
        device=device,
    )
    adaptation = Adaptation(adapter, every, cfg.support_len) if adapts else None
    return run_episode(
        task,
        planner=_planner(opts),
        dynamics=dyn,
        start_seed=start_seed,
        max_steps=opts.max_steps,
        normalizer=trained.normalizer,
        adaptation=adaptation,
        store=store,
        ids=ids,
        device=device,
    )


def reference_episode(
    method: str,
    task: Task,
    opts: ControlOptions,
    start_seed: int,
    ids: LiveIds,
    device: torch.device,
    store: Any = None,
) -> EpisodeResult:
    """The oracle (same planner, true dynamics) or the random policy."""
    planner: Planner | None
    dynamics: Dynamics | None
    if method == "oracle":
        planner, dynamics = _planner(opts), OracleDynamics(task)
    elif method == "random":
        planner, dynamics = None, None  # run_episode's random policy
    else:
        raise ValueError(f"unknown reference method {method!r}; expected 'oracle' or 'random'")
    return run_episode(
        task,
        planner=planner,
        dynamics=dynamics,
        start_seed=start_seed,
        max_steps=opts.max_steps,
        store=store,
        ids=ids,
        device=device,
    )


def start_seed(seed: int, split: int, task: int, episode: int) -> int:
    """The start state of (split, task, episode): shared by every method."""
    return int(np.random.SeedSequence([seed, split, task, episode]).generate_state(1)[0])


def run_grid(trained: TrainedRun, opts: ControlOptions) -> dict[str, Any]:
    """Play every (split, task, episode, method) and summarize."""
    from eaml_ssm.pipeline import resolve_device

    opts.validate()
    cfg = trained.cfg
    get_reward(cfg.env_name)  # a family without a reward fails before anything runs
    if not has_oracle(cfg.env_name):
        raise ValueError(f"{cfg.env_name} has no oracle dynamics: the grid needs one")
    device = resolve_device(opts.device)
    names = method_names(cfg)
    chosen = [m for m in names if not opts.methods or m in opts.methods]
    unknown = sorted(set(opts.methods) - set(names))
    if unknown:
        raise ValueError(f"unknown methods {unknown}; expected some of {names}")
    episodes: list[dict[str, Any]] = []
    tasks: dict[str, list[dict[str, float]]] = {}
    t0 = time.perf_counter()
    for si, split in enumerate(SPLITS):
        if split not in opts.splits:
            continue
        split_tasks = draw_tasks(cfg.env_name, opts.tasks, seed=cfg.seed, split=split)
        tasks[split] = [dict(t.params) for t in split_tasks]
        for ti, task in enumerate(split_tasks):
            for e in range(opts.episodes):
                seed = start_seed(opts.seed, si, ti, e)
                ids = LiveIds(LIVE_TASK_BASE + 1000 * si + ti, e)
                for method in chosen:
                    if method in ("oracle", "random"):
                        res = reference_episode(method, task, opts, seed, ids, device)
                    else:
                        res = model_episode(trained, method, task, opts, seed, ids, device)
                    episodes.append(
                        {
                            "split": split,
                            "task": ti,
                            "episode": e,
                            "start_seed": seed,
                            "method": method,
                            **res.to_dict(),
                        }
                    )
                    log.info(
                        "%s task %d ep %d %-20s return %8.1f  goal %.2f  %.1f ms/step",
                        split,
                        ti,
                        e,
                        method,
                        res.ret,
                        res.goal_fraction,
                        res.step_ms,
                    )
    settings = {
        "planner": opts.planner,
        "num_candidates": opts.num_candidates,
        "horizon": opts.horizon,
        "cem_iterations": opts.cem_iterations if opts.planner == "cem" else None,
        "warmup": opts.warmup,
        "adapt_every": opts.adapt_every or cfg.support_len,
        "tasks_per_split": opts.tasks,
        "episodes_per_task": opts.episodes,
        "max_steps": opts.max_steps,
        "seed": opts.seed,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }
    return summarize_grid(
        env_name=cfg.env_name,
        run=str(trained.path),
        run_config={
            k: getattr(cfg, k)
            for k in (
                "seed",
                "num_tasks",
                "num_epochs",
                "support_len",
                "query_len",
                "experience_weight",
            )
        },
        settings=settings,
        tasks=tasks,
        episodes=episodes,
        methods=chosen,
        seconds=time.perf_counter() - t0,
    )


# --- command line ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--run",
        type=str,
        default="",
        help="trained run folder (config.json, "
        "checkpoint.pt, store.rbuf); default: the newest run of --env_name "
        "in --out, or --out/--name",
    )
    parser.add_argument("--out", type=str, default="runs", help="parent folder of run folders")
    parser.add_argument("--name", type=str, default="", help="run folder name under --out")
    parser.add_argument(
        "--env_name",
        type=str,
        default="Pendulum-v1",
        help="task family of the run to find (without --run/--name)",
    )
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="full",
        help="grid size: quick (< 10 min on 2 cores) or full (default)",
    )
    parser.add_argument(
        "--planner",
        choices=PLANNERS,
        default="rs",
        help="rs = random shooting (default), cem = cross-entropy method",
    )
    parser.add_argument(
        "--num_candidates",
        type=int,
        default=None,
        help="candidate action sequences per control step (N; default: the profile's)",
    )
    parser.add_argument(
        "--horizon",
        type=int,
        default=None,
        help="planning horizon H (steps; default: the profile's)",
    )
    parser.add_argument("--cem_iterations", type=int, default=5, help="CEM refits per step")
    parser.add_argument("--elite_frac", type=float, default=0.1, help="CEM elite fraction")
    parser.add_argument(
        "--warmup",
        type=int,
        default=4,
        help="real steps that warm the hidden state before each plan",
    )
    parser.add_argument(
        "--adapt_every",
        type=int,
        default=0,
        help="adapt every M steps (default 0: the run's support_len)",
    )
    parser.add_argument(
        "--tasks", type=int, default=None, help="test tasks per split (default: the profile's)"
    )
    parser.add_argument(
        "--episodes",
        type=int,
        default=None,
        help="episodes (start seeds) per task (default: the profile's)",
    )
    parser.add_argument(
        "--max_steps", type=int, default=None, help="steps per episode (default: the profile's)"
    )
    parser.add_argument(
        "--methods",
        type=str,
        default="",
        help="comma-separated subset of the methods (default: all)",
    )
    parser.add_argument(
        "--splits", type=str, default=",".join(SPLITS), help="comma-separated test splits"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the start states")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the model plans: auto = cuda when torch sees a GPU",
    )
    parser.add_argument(
        "--results",
        type=str,
        default="",
        help="results JSON path (default: <run>/control.json); the markdown "
        "table and plots go beside it",
    )
    parser.add_argument(
        "--rerender",
        action="store_true",
        help=f"only re-render README.md and docs/control.md from {DEFAULT_RESULTS_DIR}/*.json",
    )
    parser.add_argument("--quiet", action="store_true", help="less logging")


def options_from_args(args: argparse.Namespace) -> ControlOptions:
    prof = PROFILES[args.profile]

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return prof[name] if value is None else value

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    return ControlOptions(
        planner=args.planner,
        num_candidates=pick("num_candidates"),
        horizon=pick("horizon"),
        cem_iterations=args.cem_iterations,
        elite_frac=args.elite_frac,
        warmup=args.warmup,
        adapt_every=args.adapt_every,
        tasks=pick("tasks"),
        episodes=pick("episodes"),
        max_steps=pick("max_steps"),
        seed=args.seed,
        device=args.device,
        methods=methods,
        splits=tuple(x.strip() for x in args.splits.split(",") if x.strip()),
    )


def run_folder(args: argparse.Namespace) -> Path:
    """--run, else the newest trained run of --env_name under --out (as `adapt` finds it)."""
    if args.run:
        return Path(args.run)
    from eaml_ssm.config import RunConfig
    from eaml_ssm.pipeline import existing_run

    return existing_run(RunConfig(env_name=args.env_name, out=args.out, name=args.name))


def main(args: argparse.Namespace) -> int:
    if args.rerender:
        for path in rerender():
            print(f"rendered {path}")
        return 0
    torch.set_num_threads(1)  # the budget: one core per control step
    opts = options_from_args(args)
    opts.validate()
    from eaml_ssm.pipeline import control_stage

    folder = run_folder(args)
    results = Path(args.results) if args.results else folder / "control.json"
    summary = control_stage(folder, opts, results)
    print(render_markdown(summary))
    print(f"\nresults: {results}")
    return 0
