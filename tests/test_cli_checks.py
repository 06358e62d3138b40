"""The CLI checks before it works: whole-config validation, file errors, stages, flags, progress."""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from tiny_run import TINY_TRAIN

from eaml_ssm.cli import HelpFormatter, build_parser, main, normalize_flags
from eaml_ssm.config import config_from_args

TINY = [*TINY_TRAIN, "--stream_steps", "48", "--num_test_tasks", "1"]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str]]:
    """`python -m eaml_ssm ...` in this process -> (exit status, stderr)."""

    def run(*argv: str) -> tuple[int, str]:
        capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # parser.exit: a user mistake, reported without traceback
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    return run


def assert_user_error(result: tuple[int, str], *fragments: str) -> None:
    code, err = result
    assert code == 2, err[-2000:]
    assert err.startswith("error: ") or "\nerror: " in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_a_user_mistake_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "eaml_ssm", "--experience_weight=nan", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --experience_weight must be a finite number")


@pytest.mark.parametrize(
    "flag, value",
    [("experience_weight", "nan"), ("inner_lr", "inf"), ("outer_lr", "-inf"), ("adapt_lr", "nan")],
)
def test_non_finite_numbers_are_refused_before_anything_is_created(
    cli: Callable[..., tuple[int, str]], tmp_path: Path, flag: str, value: str
) -> None:
    proc = cli(*TINY, f"--{flag}={value}", "--out", str(tmp_path / "runs"), "--quiet")
    assert_user_error(proc, f"--{flag}", "finite")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/abs"])
def test_name_must_be_one_folder_inside_out(
    cli: Callable[..., tuple[int, str]], tmp_path: Path, name: str
) -> None:
    proc = cli("collect", *TINY, "--out", str(tmp_path / "runs"), "--name", name, "--quiet")
    assert_user_error(proc, "--name")
    assert not any(tmp_path.iterdir())


def test_out_that_is_a_file_is_refused(cli: Callable[..., tuple[int, str]], tmp_path: Path) -> None:
    out = tmp_path / "runs"
    out.write_text("not a folder")
    assert_user_error(cli("collect", *TINY, "--out", str(out), "--quiet"), "is a file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_device_cuda_without_cuda_is_refused_up_front(
    cli: Callable[..., tuple[int, str]], tmp_path: Path
) -> None:
    proc = cli("collect", *TINY, "--device", "cuda", "--out", str(tmp_path / "runs"))
    assert_user_error(proc, "--device cuda", "no CUDA")
    assert not (tmp_path / "runs").exists()


def test_dashes_and_underscores_both_work_and_help_shows_underscores() -> None:
    parser = build_parser()
    argv = normalize_flags(parser, ["train", "--num-epochs", "7", "--experience-weight=0.5"])
    cfg = config_from_args(parser.parse_args(argv))
    assert (cfg.num_epochs, cfg.experience_weight) == (7, 0.5)
    switch = normalize_flags(parser, ["--no-learn-inner-lr", "--first_order"])
    cfg = config_from_args(parser.parse_args(switch))
    assert (cfg.learn_inner_lr, cfg.first_order) == (False, True)
    sub = normalize_flags(parser, ["sinusoid", "--meta-batch", "3", "--k_shot", "5"])
    args = parser.parse_args(sub)
    assert (args.meta_batch, args.k_shot) == (3, 5)
    for action in _all_actions(parser):
        for flag in action.option_strings:
            assert not flag.startswith("--") or "-" not in flag[2:], flag


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _all_actions(sub)
        else:
            out.append(action)
    return out


def test_every_flag_has_help_and_a_default() -> None:
    formatter = HelpFormatter("python -m eaml_ssm")
    for action in _all_actions(build_parser()):
        if action.dest in ("help", "version"):
            continue
        assert action.help, f"{action.option_strings} has no help"
        text = formatter._get_help_string(action) or ""
        switch = isinstance(action, argparse._StoreTrueAction)  # default: off
        assert switch or "default" in text.lower(), f"{action.option_strings}: no default"


def test_help_mentions_no_file_outside_the_repository() -> None:
    texts = [build_parser().format_help()]
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            texts += [sub.format_help() for sub in action.choices.values()]
    for text in texts:
        assert "/work/" not in text and "shared/" not in text and "../" not in text


@pytest.fixture(scope="module")
def collected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert main(["collect", *TINY, "--out", str(out), "--name", "s", "--quiet"]) == 0
    return out


def test_collect_then_train_continue_the_same_run(
    collected: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # `train --name s`: the saved config of run s is used (flags given override it)
    caplog.set_level(logging.INFO)
    assert main(["train", "--out", str(collected), "--name", "s", "--no-quiet"]) == 0
    assert sorted(p.name for p in collected.iterdir()) == ["s"]  # no s-2
    assert (collected / "s" / "checkpoint.pt").is_file()
    assert "collected" not in caplog.text  # the store collected before was reused
    # the progress of meta-training is logged although the output is not a terminal
    assert "meta-train: 100%" in caplog.text


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_run_files_are_errors_naming_the_file(
    cli: Callable[..., tuple[int, str]], collected: Path, tmp_path: Path
) -> None:
    src = collected / "s"
    if not (src / "checkpoint.pt").exists():
        assert main(["train", "--out", str(collected), "--name", "s", "--quiet"]) == 0
    out = tmp_path / "runs"
    run = _copy_run(src, out / "r")
    (run / "checkpoint.pt").write_bytes(b"garbage")
    assert_user_error(cli("adapt", "--out", str(out), "--name", "r"), "r/checkpoint.pt")
    run = _copy_run(src, out / "c")
    (run / "config.json").write_text("{not json")
    assert_user_error(cli("train", "--out", str(out), "--name", "c"), "c/config.json")
    run = _copy_run(src, out / "u")
    (run / "config.json").write_text(json.dumps({"bogus_field": 1}))
    assert_user_error(cli("train", "--out", str(out), "--name", "u"), "u/config.json", "bogus")
    run = _copy_run(src, out / "m")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    lines.insert(1, "{broken")
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert_user_error(
        cli("train", "--resume", "--out", str(out), "--name", "m"), "m/metrics.jsonl:2"
    )


def test_resume_skips_a_cut_off_last_metrics_line(
    collected: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    src = collected / "s"
    if not (src / "checkpoint.pt").exists():
        assert main(["train", "--out", str(collected), "--name", "s", "--quiet"]) == 0
    run = _copy_run(src, tmp_path / "runs" / "k")
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "step": 9, "meta_lo')  # killed mid-write
    argv = ["train", "--resume", "--num_epochs", "4", "--out", str(run.parent), "--name", "k"]
    assert main(argv) == 0
    assert "cut-off last line" in caplog.text
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "name", ["run", "collect", "train", "adapt", "evaluate", "sinusoid", "control"]
)
def test_every_computing_subcommand_takes_device(name: str) -> None:
    args = build_parser().parse_args([name, "--device", "cpu"])
    assert args.device == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("name", ["evaluate", "sinusoid", "control"])
def test_cuda_without_cuda_is_refused_by_evaluate_and_sinusoid(
    cli: Callable[..., tuple[int, str]], name: str, tmp_path: Path
) -> None:
    proc = cli(name, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert_user_error(proc, "--device cuda")
    assert not (tmp_path / "out").exists()


def test_a_continued_run_is_checked_against_its_saved_values(collected: Path) -> None:
    """`--num_tasks 4` alone is fine for run s (its saved meta_batch_size is 2, not 8)."""
    parser = build_parser()
    args = parser.parse_args(["train", "--num_tasks", "4", "--out", str(collected), "--name", "s"])
    with pytest.raises(ValueError, match="meta_batch_size"):
        config_from_args(args)  # against the defaults: 8 tasks per meta-batch > 4
    from eaml_ssm.run_folders import existing_run, saved_config

    base = saved_config(existing_run(config_from_args(args, check=False)))
    assert config_from_args(args, base=base).meta_batch_size == 2


def test_device_syntax_is_checked_once_where_it_enters() -> None:
    from eaml_ssm.config import RunConfig, validate

    for ok in ("auto", "cpu", "cuda", "cuda:1"):
        validate(RunConfig(device=ok))  # syntax only: the machine check is runtime's
    for bad in ("gpu", "cuda:", "cuda:x", "CPU"):
        with pytest.raises(ValueError, match="--device must be auto, cpu, cuda or cuda:N"):
            validate(RunConfig(device=bad))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_runtime_refuses_cuda_without_cuda() -> None:
    from eaml_ssm import runtime

    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="no CUDA"):
            runtime.check_device(name)
        with pytest.raises(ValueError, match="no CUDA"):
            runtime.resolve_device(name)
    runtime.check_device("cpu")


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("experience_weight", -1.0, "--experience_weight must be finite and >= 0"),
        ("adapt_lr", -0.1, "--adapt_lr must be finite and >= 0"),
        ("experience_batch_size", 0, "--experience_batch_size must be >= 1"),
    ],
)
def test_adaptation_flags_are_checked_by_adaptation_config_under_their_flag_name(
    flag: str, value: float, message: str
) -> None:
    from eaml_ssm.config import RunConfig, validate

    with pytest.raises(ValueError, match=message):
        validate(RunConfig(**{flag: value}))
