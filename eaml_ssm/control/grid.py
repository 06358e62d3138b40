"""The control grid on a trained run folder: every method's episodes on every test task.

`run_grid` plays, for each split, test task and start seed, one episode per method from the
same start state (the methods and the results are described in `eaml_ssm.control.cli`, the
command's help page); `load_trained` reads the run folder; `model_episode` and
`reference_episode` are one episode of a model-based method and of the oracle or the random
policy.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from eaml_ssm.adaptation import AdaptationConfig
from eaml_ssm.control.loop import Adaptation, EpisodeResult, LiveIds, run_episode
from eaml_ssm.control.model import SSMDynamics
from eaml_ssm.control.oracle import OracleDynamics, has_oracle
from eaml_ssm.control.planners import PLANNERS, Dynamics, Planner, make_planner
from eaml_ssm.control.report import summarize_grid, write_outputs
from eaml_ssm.control.rewards import get_reward
from eaml_ssm.features import Normalizer
from eaml_ssm.method_names import label, pipeline_keys
from eaml_ssm.protocol import TEST_SPLITS
from eaml_ssm.run_adapter import adapter_for, methods
from eaml_ssm.run_data import STORE_FILE
from eaml_ssm.runtime import resolve_device
from eaml_ssm.tasks import Task, draw_tasks, get_family

log = logging.getLogger(__name__)

# Live transitions get task ids far above any collected task's (collection numbers from 0).
LIVE_TASK_BASE = 1_000_000

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
    splits: tuple[str, ...] = TEST_SPLITS

    def validate(self) -> None:
        if self.planner not in PLANNERS:
            raise ValueError(f"--planner must be one of {PLANNERS}, got {self.planner!r}")
        for name in ("num_candidates", "horizon", "tasks", "episodes", "max_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.num_candidates < 2:
            raise ValueError(f"--num_candidates must be >= 2, got {self.num_candidates}")
        bad = sorted(set(self.splits) - set(TEST_SPLITS))
        if bad or not self.splits:
            raise ValueError(f"--splits must be some of {TEST_SPLITS}, got {list(self.splits)}")
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
    """The grid's methods: the pipeline's (with the adapter's default replay source), the
    oracle and the random policy."""
    keys = pipeline_keys(cfg.experience_weight, AdaptationConfig.replay_live)
    return [*(label(k) for k in keys), "oracle", "random"]


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

    cfg = trained.cfg
    family = get_family(cfg.env_name)
    if store is None:
        store = rust_buffer.RingBuffer.load(str(trained.store_path))  # this episode's copy
    # a private copy: adaptation must never touch the meta-learned weights, whatever the
    # Adapter does with the model it is given
    maml = copy.deepcopy(trained.maml)
    base = adapter_for(cfg, maml, store, trained.normalizer, device)
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
    for si, split in enumerate(TEST_SPLITS):
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


def run_control(
    path: str | Path, options: ControlOptions, results: Path | None = None
) -> dict[str, Any]:
    """The grid on the trained run folder `path`: control.json, control.md and plots there
    (or at `results`); returns the summary (`eaml_ssm.pipeline.control_stage` runs this)."""
    trained = load_trained(path, resolve_device(options.device))
    summary = run_grid(trained, options)
    write_outputs(summary, results or Path(path) / "control.json")
    return summary
