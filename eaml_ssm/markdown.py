"""Markdown tables: the one table writer of the reports and rendered docs (evaluation,
control, sinusoid)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def _row(cells: Sequence[str]) -> str:
    """One table line: ``| a | b |``."""
    return "| " + " | ".join(cells) + " |"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A markdown table: the header line, the ``|---|`` separator, one line per row."""
    lines = [_row(header), "|---" * len(header) + "|"]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


__all__ = ["md_table"]
