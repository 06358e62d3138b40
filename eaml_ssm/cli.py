"""Command line: `python -m eaml_ssm [subcommand] [flags]`.

With no subcommand it runs the whole pipeline on the default task family (CartPole-v1):
collect meta-training tasks into the store, meta-train the SSM, adapt online to held-out and
out-of-range tasks with the hybrid loss, evaluate against baselines, and write a run folder.

Flags are written with underscores (``--num_epochs``); dashes are accepted too
(``--num-epochs``). The whole configuration is checked before anything is created; a user
mistake ends with ``error: ...`` and exit status 2, without a traceback. ``main(argv)`` and
``eaml_ssm.pipeline.run_stage`` are the programmatic entry points.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from eaml_ssm import __version__, runtime
from eaml_ssm.config import RunConfig, add_config_arguments, config_from_args, validate
from eaml_ssm.flags import normalize_flags

log = logging.getLogger("eaml_ssm")

STAGES = {
    "run": "the whole pipeline: collect, train, adapt, evaluate (the default)",
    "collect": "collect meta-training tasks into the experience store",
    "train": "meta-train the SSM with MAML on windows from the store",
    "adapt": "adapt a trained model online to held-out and out-of-range tasks",
}


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and states every flag's default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        # `is`, not `in`: a default of 0 equals False but is worth stating
        quiet_default = any(action.default is v for v in (None, False, argparse.SUPPRESS))
        if action.option_strings and "default" not in text.lower() and not quiet_default:
            text += " (default: %(default)s)"
        return text


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    default = parser.argument_default if parser.argument_default is argparse.SUPPRESS else False
    parser.add_argument(
        "--resume",
        action="store_true",
        default=default,
        help="continue the run in --out/--name from its checkpoint (same config required)",
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        default=default,
        help="meta-train on torch.distributed (train and run); launch with "
        "`torchrun --nproc_per_node=N -m eaml_ssm train --distributed ...`",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eaml_ssm",
        formatter_class=HelpFormatter,
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=f"eaml_ssm {__version__}")
    _add_run_flags(parser)
    sub = parser.add_subparsers(
        dest="command", metavar="{run,collect,train,adapt,evaluate,control,sinusoid}"
    )
    for name, help_text in STAGES.items():
        # SUPPRESS: a flag given before the subcommand is not reset by the subcommand's default
        sp = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            argument_default=argparse.SUPPRESS,
            formatter_class=HelpFormatter,
        )
        _add_run_flags(sp)
    from eaml_ssm import evaluate, sinusoid
    from eaml_ssm.control import cli as control_cli

    # Commands that own their flags (module.add_arguments) and help page (module docstring).
    for name, module, summary in (
        (
            "evaluate",
            evaluate,
            "the evaluation protocol: streams of test tasks, forgetting, baselines, seeds",
        ),
        (
            "sinusoid",
            sinusoid,
            "reproduce the MAML sinusoid regression benchmark (Finn et al. 2017)",
        ),
        (
            "control",
            control_cli,
            "act with the adapted model: model-predictive control on a trained run folder",
        ),
    ):
        own = sub.add_parser(
            name, help=summary, description=module.__doc__, formatter_class=HelpFormatter
        )
        module.add_arguments(own)
    return parser


def preflight(cfg: RunConfig) -> None:
    """Checks that need the machine (files, devices), before anything is created."""
    runtime.check_device(cfg.device)
    out = Path(cfg.out)
    for parent in (out, *out.parents):
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"--out {cfg.out}: {parent} is a file, expected a folder")
    if cfg.name and (out / cfg.name).exists() and not (out / cfg.name).is_dir():
        raise ValueError(f"--name {cfg.name}: {out / cfg.name} is a file, expected a folder")


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalize_flags(parser, sys.argv[1:] if argv is None else argv))
    command = args.command or "run"
    setup_logging(bool(getattr(args, "quiet", False)))
    try:
        if command in ("sinusoid", "evaluate", "control"):
            runtime.check_device(args.device)
        if command == "sinusoid":
            from eaml_ssm import sinusoid

            return sinusoid.run(args)
        if command == "evaluate":
            from eaml_ssm import evaluate

            return evaluate.run(args)
        if command == "control":
            from eaml_ssm.control import cli as control_cli

            return control_cli.main(args)
        resume = bool(getattr(args, "resume", False))
        cfg: RunConfig = config_from_args(args, check=False)  # checked once its base is known
        from eaml_ssm.run_folders import existing_run, named_run, saved_config

        if resume or command == "adapt" or named_run(cfg) is not None:
            # a stage continuing a run: unspecified flags keep the saved run's values
            cfg = config_from_args(args, base=saved_config(existing_run(cfg)))
        else:
            validate(cfg)
        preflight(cfg)
        if getattr(args, "distributed", False):
            from eaml_ssm import distributed

            try:
                return distributed.run(command, cfg, resume=resume)
            except distributed.RankFailure as exc:
                parser.exit(1, f"error: {exc}\n")
        from eaml_ssm import pipeline

        return pipeline.run_stage(command, cfg, resume=resume)
    except (ValueError, OSError) as exc:  # user mistakes: bad flags, files, run folders
        parser.exit(2, f"error: {exc}\n")
