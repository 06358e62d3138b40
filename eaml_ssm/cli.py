"""Command line: `python -m eaml_ssm [subcommand] [flags]`.

With no subcommand it runs the whole pipeline on the default task family (CartPole-v1):
collect meta-training tasks into the store, meta-train the SSM, adapt online to held-out and
out-of-range tasks with the hybrid loss, evaluate against baselines, and write a run folder.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from eaml_ssm import __version__
from eaml_ssm.config import RunConfig, add_config_arguments, config_from_args

log = logging.getLogger("eaml_ssm")

STAGES = {
    "run": "the whole pipeline: collect, train, adapt, evaluate (the default)",
    "collect": "collect meta-training tasks into the experience store",
    "train": "meta-train the SSM with MAML on windows from the store",
    "adapt": "adapt a trained model online to held-out and out-of-range tasks",
}


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
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None,
    )
    parser.add_argument("--version", action="version", version=f"eaml_ssm {__version__}")
    _add_run_flags(parser)
    sub = parser.add_subparsers(
        dest="command", metavar="{run,collect,train,adapt,evaluate,sinusoid}"
    )
    for name, help_text in STAGES.items():
        # SUPPRESS: a flag given before the subcommand is not reset by the subcommand's default
        sp = sub.add_parser(
            name, help=help_text, description=help_text, argument_default=argparse.SUPPRESS
        )
        _add_run_flags(sp)
    from eaml_ssm import evaluate, sinusoid

    ev = sub.add_parser(
        "evaluate",
        help="the evaluation protocol: streams of test tasks, forgetting, baselines, seeds",
        description=evaluate.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    evaluate.add_arguments(ev)
    sn = sub.add_parser(
        "sinusoid",
        help="reproduce the MAML sinusoid regression benchmark (Finn et al. 2017)",
        description=sinusoid.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sinusoid.add_arguments(sn)
    from eaml_ssm.control import run as control_run

    ct = sub.add_parser(
        "control",
        help="act with the adapted model: model-predictive control on a trained run folder",
        description=control_run.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    control_run.add_arguments(ct)
    return parser


def setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args.command or "run"
    setup_logging(bool(getattr(args, "quiet", False)))
    try:
        if command == "sinusoid":
            from eaml_ssm import sinusoid

            return sinusoid.run(args)
        if command == "evaluate":
            from eaml_ssm import evaluate

            return evaluate.run(args)
        if command == "control":
            from eaml_ssm.control import run as control_run

            return control_run.main(args)
        resume = bool(getattr(args, "resume", False))
        cfg: RunConfig = config_from_args(args)
        if resume or command == "adapt":  # unspecified flags keep the saved run's values
            from eaml_ssm.pipeline import existing_run, saved_config

            cfg = config_from_args(args, base=saved_config(existing_run(cfg)))
        if getattr(args, "distributed", False):
            from eaml_ssm import distributed

            try:
                return distributed.run(command, cfg, resume=resume)
            except distributed.RankFailure as exc:
                parser.exit(1, f"error: {exc}\n")
        from eaml_ssm import pipeline

        return pipeline.run_stage(command, cfg, resume=resume)
    except (ValueError, FileNotFoundError) as exc:
        parser.exit(2, f"error: {exc}\n")
