"""Run configuration: one dataclass is the single source of truth for the pipeline.

Every field has a default and a help string; `add_config_arguments` turns the fields into CLI
flags, and the resolved config is saved as `config.json` in the run folder and in every
checkpoint. The settings of the parts are derived from it by methods, never copied:
`RunConfig.model_config` (the SSM), `RunConfig.maml_config` (meta-training) and
`RunConfig.adaptation_config` (test-time adaptation).

Validation happens where a value enters: `validate` for the CLI and a RunConfig (the flags'
names in its errors); `AdaptationConfig` validates the users of the library who build one
directly. Two entry points, one check each; RunConfig's test-time defaults are
AdaptationConfig's, referenced rather than repeated.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from eaml_ssm.adaptation import AdaptationConfig
from eaml_ssm.ssm import SSMConfig


def _f(default: Any, help: str, **meta: Any) -> Any:
    """A RunConfig field: its default, its --help text and metadata (``resume_free=True``: the
    value may differ between the run that wrote a checkpoint and the run that resumes it)."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class RunConfig:
    # --- what and where -------------------------------------------------------------------
    env_name: str = _f("CartPole-v1", "task family (a gymnasium id, see eaml_ssm.tasks)")
    seed: int = _f(0, "seed for tasks, data, initialisation and sampling")
    device: str = _f("auto", "auto|cpu|cuda (auto picks cuda when available)", resume_free=True)
    out: str = _f("runs", "parent folder of run folders", resume_free=True)
    name: str = _f(
        "", "run folder name (default: <env>-seed<seed>, then -2, -3, ...)", resume_free=True
    )
    quiet: bool = _f(False, "less logging, no progress bars", resume_free=True)
    # --- collection ----------------------------------------------------------------------
    num_tasks: int = _f(24, "meta-training tasks (physics sampled from the training range)")
    steps_per_task: int = _f(1000, "environment steps collected per training task")
    episodes_per_task: int = _f(0, "if > 0, collect this many episodes per task instead")
    buffer_size: int = _f(200_000, "experience store capacity (rows)")
    workers: int = _f(
        1,
        "collection workers; > 1 runs worker processes that write straight into a "
        "file-backed shared store (faster for costly envs; the store's row order then depends "
        "on scheduling, so runs are no longer bit-reproducible)",
        resume_free=True,
    )
    # --- model ---------------------------------------------------------------------------
    state_dim: int = _f(16, "SSM state size per layer")
    hidden_dim: int = _f(64, "SSM model width")
    num_layers: int = _f(2, "stacked SSM layers")
    # --- meta-training -------------------------------------------------------------------
    num_epochs: int = _f(400, "meta-iterations (meta-updates)", resume_free=True)
    meta_batch_size: int = _f(8, "tasks per meta-update")
    support_len: int = _f(
        8, "support window (steps of one episode) the model adapts on in meta-training"
    )
    query_len: int = _f(8, "query window: the next steps of the same episode, scored")
    inner_lr: float = _f(0.05, "inner-loop step size (initial value when learned)")
    outer_lr: float = _f(1e-3, "meta-optimizer (Adam) learning rate")
    num_inner_steps: int = _f(2, "inner-loop gradient steps")
    learn_inner_lr: bool = _f(True, "learn a per-parameter inner step size (Meta-SGD)")
    first_order: bool = _f(False, "first-order MAML (default: second order)")
    # --- adaptation ----------------------------------------------------------------------
    adapt_lr: float = _f(0.0, "test-time step size (0 = the meta-learned one)", resume_free=True)
    num_adapt_steps: int = _f(
        0, "test-time steps per adaptation (0 = as meta-trained)", resume_free=True
    )
    experience_batch_size: int = _f(
        AdaptationConfig.experience_batch_size,
        "experience rows replayed per adaptation step",
        resume_free=True,
    )
    experience_weight: float = _f(
        AdaptationConfig.experience_weight,
        "weight of the experience loss in the hybrid loss",
        resume_free=True,
    )
    adapt_every: int = _f(16, "adapt online every M steps on the latest window", resume_free=True)
    stream_steps: int = _f(200, "steps per test task in the online stream", resume_free=True)
    num_test_tasks: int = _f(
        3, "test tasks per split (held-out and out-of-range)", resume_free=True
    )

    def model_config(self, input_dim: int, output_dim: int) -> SSMConfig:
        """The SSM of this run for a task family's feature widths."""
        return SSMConfig(
            state_dim=self.state_dim,
            input_dim=input_dim,
            output_dim=output_dim,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
        )

    def maml_config(self) -> MAMLConfig:
        """The meta-learner's settings (`eaml_ssm.models.build_maml`)."""
        return MAMLConfig(
            inner_lr=self.inner_lr,
            outer_lr=self.outer_lr,
            first_order=self.first_order,
            num_inner_steps=self.num_inner_steps,
            learn_inner_lr=self.learn_inner_lr,
        )

    def adaptation_config(self, maml: Any, **overrides: Any) -> AdaptationConfig:
        """The run's test-time adaptation of ``maml``'s model.

        Step size and step count as meta-trained (``AdaptationConfig.from_maml``) unless
        --adapt_lr / --num_adapt_steps set them; replay of the run's store in windows of the
        stretch meta-training used (the support warms the hidden state up). ``overrides``:
        AdaptationConfig fields on top.
        """
        learned = AdaptationConfig.from_maml(maml)
        run = dataclasses.replace(
            learned,
            experience_batch_size=self.experience_batch_size,
            experience_weight=self.experience_weight,
            seed=self.seed,
            sequence_length=self.support_len + self.query_len,
            burn_in=self.support_len,
            learning_rate=self.adapt_lr if self.adapt_lr > 0 else learned.learning_rate,
            param_lrs=None if self.adapt_lr > 0 else learned.param_lrs,
            num_steps=self.num_adapt_steps if self.num_adapt_steps > 0 else learned.num_steps,
        )
        return dataclasses.replace(run, **overrides)


@dataclass(frozen=True)
class MAMLConfig:
    """What `eaml_ssm.maml.MetaMAML` is built with (see the RunConfig fields of the same name)."""

    inner_lr: float
    outer_lr: float
    first_order: bool
    num_inner_steps: int
    learn_inner_lr: bool


def resume_free_fields() -> frozenset[str]:
    """Fields that may differ between the run that wrote a checkpoint and the run that loads
    it: presentation, the length of meta-training (resume may extend it), test-time settings."""
    return frozenset(f.name for f in config_fields() if f.metadata.get("resume_free"))


def config_fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(RunConfig))


def add_config_arguments(parser: argparse.ArgumentParser, names: list[str] | None = None) -> None:
    """Add `--field` flags (original snake_case names) for the selected RunConfig fields."""
    for f in config_fields():
        if names is not None and f.name not in names:
            continue
        flag = f"--{f.name}"
        # a subcommand's parser may say SUPPRESS so it does not reset a flag given before it
        default = parser.argument_default if parser.argument_default is argparse.SUPPRESS else None
        help_text = f"{f.metadata['help']} (default: {f.default})"
        if f.type in ("bool", bool):
            parser.add_argument(
                flag, f"--no_{f.name}", action=_Switch, default=default, help=help_text
            )
        else:
            kind = {"int": int, "float": float, "str": str}[str(f.type)]
            parser.add_argument(flag, type=kind, default=default, help=help_text)


class _Switch(argparse.Action):
    """``--flag`` sets True, ``--no_flag`` False (underscores, like every other flag)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, **kwargs)

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, not (option_string or "").startswith("--no_"))


def config_from_args(
    args: argparse.Namespace, base: RunConfig | None = None, *, check: bool = True
) -> RunConfig:
    """Fields given on the command line override `base` (or the defaults); then `validate`."""
    cfg = dataclasses.replace(base) if base is not None else RunConfig()
    for f in config_fields():
        value = getattr(args, f.name, None)
        if value is not None:
            setattr(cfg, f.name, value)
    if check:
        validate(cfg)
    return cfg


# RunConfig field -> the AdaptationConfig field it becomes (`RunConfig.adaptation_config`)
_ADAPTATION_FIELDS = {
    "adapt_lr": "learning_rate",
    "experience_weight": "experience_weight",
    "experience_batch_size": "experience_batch_size",
}


def _check_adaptation(cfg: RunConfig) -> None:
    """The test-time values are checked by AdaptationConfig, their one check, and reported
    with the flag's name (``--adapt_lr`` 0 means "the meta-learned step size")."""
    values = {new: getattr(cfg, old) for old, new in _ADAPTATION_FIELDS.items()}
    try:
        AdaptationConfig(**values)
    except ValueError as err:
        message = str(err)
        for old, new in _ADAPTATION_FIELDS.items():
            if message.startswith(new):
                raise ValueError(f"--{old}{message[len(new) :]}") from None
        raise


def validate(cfg: RunConfig) -> None:
    """Check every field (types, finiteness, ranges, names): raises ValueError naming the flag.

    Pure: it looks at no file and no device (see ``eaml_ssm.cli.preflight`` for those).
    """
    for f in config_fields():
        value = getattr(cfg, f.name)
        kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
        ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            raise ValueError(f"--{f.name} must be a {kind.__name__}, got {value!r}")
        if kind is float and not math.isfinite(value):
            raise ValueError(f"--{f.name} must be a finite number, got {value!r}")
    if cfg.name and (
        len(PurePath(cfg.name).parts) != 1
        or cfg.name in (".", "..")
        or "/" in cfg.name
        or "\\" in cfg.name
    ):
        raise ValueError(
            f"--name must be one folder name inside --out (no '/', '..' or absolute path), "
            f"got {cfg.name!r}"
        )
    if not cfg.out:
        raise ValueError("--out must be a folder path, got ''")
    positive = [
        "num_tasks",
        "buffer_size",
        "workers",
        "state_dim",
        "hidden_dim",
        "num_layers",
        "meta_batch_size",
        "support_len",
        "query_len",
        "num_inner_steps",
        "adapt_every",
        "stream_steps",
        "num_test_tasks",
    ]
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(cfg, name)}")
    for name in ["num_epochs", "steps_per_task", "episodes_per_task", "num_adapt_steps"]:
        if getattr(cfg, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(cfg, name)}")
    for name in ["inner_lr", "outer_lr"]:
        if not getattr(cfg, name) > 0:
            raise ValueError(f"--{name} must be > 0, got {getattr(cfg, name)}")
    _check_adaptation(cfg)
    if cfg.seed < 0:
        raise ValueError(f"--seed must be >= 0, got {cfg.seed}")
    if cfg.stream_steps < 2 * cfg.adapt_every:
        raise ValueError(
            f"--stream_steps ({cfg.stream_steps}) must be at least 2 x --adapt_every "
            f"({cfg.adapt_every}): each scored window follows one the model adapted on"
        )
    if cfg.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", cfg.device):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}")
    if cfg.meta_batch_size > cfg.num_tasks:
        raise ValueError(
            f"--meta_batch_size ({cfg.meta_batch_size}) cannot exceed --num_tasks ({cfg.num_tasks})"
        )


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def from_dict(data: dict[str, Any]) -> RunConfig:
    known = {f.name for f in config_fields()}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown config fields {unknown}; known: {sorted(known)}")
    cfg = RunConfig(**data)
    validate(cfg)
    return cfg
