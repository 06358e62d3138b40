"""Progress of long work, for a terminal and for a log file alike.

On a terminal it is a tqdm bar; when stderr is not a terminal (CI, ``nohup``, a pipe to a
file) the same bar is written as a log line every ``every_s`` seconds and once at the end,
so that a long run shows it is alive there too. ``quiet`` shows nothing.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm  # type: ignore[import-untyped]

log = logging.getLogger("eaml_ssm.progress")

# Seconds between log lines when the output is not a terminal.
LOG_EVERY_S = 5.0


class _NullFile:
    """Swallows tqdm's own writes (the log line carries the bar instead)."""

    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


class _LoggedBar(tqdm):  # type: ignore[misc]
    """A tqdm bar that logs its status line instead of redrawing it: at most once per
    ``mininterval`` seconds (``set_postfix`` refreshes do not add lines), and once at the end."""

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if self.n == 0 and self.total != 0:  # the 0% line at the start says nothing yet
            return True
        now = time.monotonic()
        done = self.total is not None and self.n >= self.total
        last = getattr(self, "_logged_at", None)
        if done and getattr(self, "_logged_done", False):
            return True
        if done or last is None or now - last >= self.mininterval:
            self._logged_at, self._logged_done = now, done
            log.info("%s", msg if msg is not None else str(self).strip())
        return True


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    quiet: bool = False,
    every_s: float = LOG_EVERY_S,
) -> Any:
    """A tqdm-compatible bar (iterate it, or call ``update``/``set_postfix``/``close``)."""
    if quiet:
        return tqdm(iterable, total=total, disable=True)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr)
    return _LoggedBar(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        file=_NullFile(),
        mininterval=every_s,
        maxinterval=every_s,
        ascii=True,
    )
