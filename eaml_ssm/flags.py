"""One flag style shown, both understood: ``--num-epochs`` is read as ``--num_epochs``.

Shared by the main command line (`eaml_ssm.cli`) and the commands with their own parser
(`python -m eaml_ssm.sinusoid`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every --flag of the parser and of its subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= _option_strings(sub)
    return found


def normalize_flags(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Accept ``--num-epochs`` for ``--num_epochs``: one style shown, both understood."""
    known = _option_strings(parser)
    out: list[str] = []
    for i, token in enumerate(argv):
        if token == "--":  # everything after is positional
            return [*out, *argv[i:]]
        if token.startswith("--") and "-" in token[2:]:
            flag, eq, value = token.partition("=")
            alt = "--" + flag[2:].replace("-", "_")
            if flag not in known and alt in known:
                token = alt + eq + value
        out.append(token)
    return out


__all__ = ["normalize_flags"]
