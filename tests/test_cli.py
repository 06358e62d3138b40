"""The command line: every subcommand has --help, the original flags parse, bad flags fail."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eaml_ssm.cli import build_parser
from eaml_ssm.config import RunConfig, config_from_args

SUBCOMMANDS = ["run", "collect", "train", "adapt", "evaluate", "sinusoid"]

ORIGINAL_FLAGS = [
    "--env_name", "Pendulum-v1",
    "--num_epochs", "7",
    "--state_dim", "12",
    "--hidden_dim", "24",
    "--episodes_per_task", "3",
    "--inner_lr", "0.02",
    "--outer_lr", "0.002",
    "--adapt_lr", "0.03",
    "--num_adapt_steps", "4",
    "--buffer_size", "5000",
    "--experience_batch_size", "16",
    "--experience_weight", "0.3",
]  # fmt: skip


def test_top_level_help_lists_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([name, "--help"])
    assert exc.value.code == 0


@pytest.mark.parametrize("where", ["top", "run", "train"])
def test_original_flags_are_accepted(where: str) -> None:
    argv = ORIGINAL_FLAGS if where == "top" else [where, *ORIGINAL_FLAGS]
    cfg = config_from_args(build_parser().parse_args(argv))
    assert cfg.env_name == "Pendulum-v1"
    assert (cfg.num_epochs, cfg.state_dim, cfg.hidden_dim, cfg.episodes_per_task) == (7, 12, 24, 3)
    assert (cfg.inner_lr, cfg.outer_lr, cfg.adapt_lr) == (0.02, 0.002, 0.03)
    assert (cfg.num_adapt_steps, cfg.buffer_size) == (4, 5000)
    assert (cfg.experience_batch_size, cfg.experience_weight) == (16, 0.3)


def test_defaults_come_from_the_dataclass() -> None:
    cfg = config_from_args(build_parser().parse_args([]))
    assert cfg == RunConfig()


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--num_epochs", "-1"], "num_epochs"),
        (["--device", "tpu"], "device"),
        (["--meta_batch_size", "50", "--num_tasks", "4"], "meta_batch_size"),
        (["--hidden_dim", "0"], "hidden_dim"),
    ],
)
def test_bad_values_fail_with_a_clear_message(argv: list[str], fragment: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", *argv], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2
    assert fragment in proc.stderr


def test_unknown_env_is_a_clear_error(tmp_path: Path) -> None:
    argv = ["collect", "--env_name", "CartPol-v1", "--quiet", "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "CartPole-v1" in proc.stderr  # the message lists what is supported
    assert not any(tmp_path.iterdir())  # nothing was written


def test_distributed_only_applies_to_train_and_run(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", "collect", "--distributed", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "--distributed applies to" in proc.stderr


def test_flags_before_the_subcommand_are_kept() -> None:
    args = build_parser().parse_args(["--seed", "3", "--resume", "train", "--hidden_dim", "8"])
    assert (args.command, args.seed, args.resume, args.hidden_dim) == ("train", 3, True, 8)
    cfg = config_from_args(args)
    assert (cfg.seed, cfg.hidden_dim) == (3, 8)


def test_short_streams_and_negative_seeds_are_refused_up_front() -> None:
    for argv in (["--stream_steps", "20"], ["--seed", "-1"]):
        with pytest.raises(ValueError):
            config_from_args(build_parser().parse_args(argv))
