"""Command line: `python -m eaml_ssm [subcommand] ...`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from eaml_ssm import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eaml_ssm",
        description="Meta-learn an SSM of environment dynamics and adapt it at test time.",
    )
    parser.add_argument("--version", action="version", version=f"eaml_ssm {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    return 0
