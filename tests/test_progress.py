"""Progress off a terminal: log lines, at most one per interval, and the final one once."""

from __future__ import annotations

import logging

import pytest

from eaml_ssm.progress import progress


def test_off_terminal_progress_logs_the_end_once_and_not_every_refresh(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="eaml_ssm.progress")
    bar = progress(total=50, desc="work", every_s=3600.0)  # pytest's stderr is no terminal
    for i in range(50):
        bar.update(1)
        bar.set_postfix(step=i)  # refreshes: none of them may add a line within the interval
    bar.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "eaml_ssm.progress"]
    assert len(lines) == 2, lines  # the first step, then the end (once, though close redraws)
    assert lines[0].startswith("work:") and "1/50" in lines[0]
    assert "50/50" in lines[-1] and "100%" in lines[-1]


def test_quiet_progress_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="eaml_ssm.progress")
    bar = progress(total=3, desc="quiet", quiet=True)
    bar.update(3)
    bar.close()
    assert not [r for r in caplog.records if r.name == "eaml_ssm.progress"]
