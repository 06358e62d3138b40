"""Every bad-input path of rust_buffer.RingBuffer: a ValueError or TypeError whose message says
what was expected, never a crash, and nothing inserted by a rejected ``add``.

Message checks are loose: each case lists fragments, and at least one must appear
(case-insensitive) in the message.

Shape glossary: b batch, do obs_dim (4 here), dt target_dim (2 here).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from rust_buffer import RingBuffer

DO = 4
DT = 2
BAD = (ValueError, TypeError)


def expect_error(fn: Callable[[], Any], *fragments: str) -> str:
    """Call fn, require ValueError/TypeError mentioning one of the fragments; return message."""
    with pytest.raises(BAD) as info:
        fn()
    message = str(info.value).lower()
    assert message, "error without a message"
    if fragments:
        assert any(f.lower() in message for f in fragments), (
            f"message {message!r} mentions none of {fragments}"
        )
    return message


def store_with(n: int, capacity: int = 32, **meta: Any) -> RingBuffer:
    store = RingBuffer(capacity, DO, DT, seed=0)
    if n:
        obs = np.arange(n * DO, dtype=np.float32).reshape(n, DO)  # (b, do)
        store.add(obs, np.zeros((n, DT), np.float32), **meta)
    return store


def assert_unchanged(store: RingBuffer, n: int) -> None:
    assert len(store) == n
    assert store.total_added == n


# ---------------------------------------------------------------------------- constructor


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        ((0, DO, DT), ("capacity",)),
        ((8, 0, DT), ("obs_dim", "obs")),
        ((8, DO, 0), ("target_dim", "target")),
        ((-1, DO, DT), ("capacity", "negative", "unsigned")),
        ((8, -3, DT), ("obs_dim", "negative", "unsigned")),
        ((8, DO, -2), ("target_dim", "negative", "unsigned")),
    ],
    ids=["capacity0", "obs_dim0", "target_dim0", "capacity-neg", "obs_dim-neg", "target_dim-neg"],
)
def test_constructor_rejects_zero_and_negative_sizes(args: tuple[int, int, int], fragments):  # type: ignore[no-untyped-def]
    expect_error(lambda: RingBuffer(*args), *fragments)


@pytest.mark.parametrize("bad", ["8", 8.5, None, [8]], ids=["str", "float", "none", "list"])
def test_constructor_rejects_non_integer_capacity(bad: Any) -> None:
    expect_error(lambda: RingBuffer(bad, DO, DT), "int", "capacity")


def test_constructor_rejects_unknown_retention() -> None:
    expect_error(lambda: RingBuffer(8, DO, DT, retention="lifo"), "fifo", "reservoir", "retention")


# ------------------------------------------------------------------------------------ add

OBS1 = np.ones(DO, np.float32)
TGT1 = np.ones(DT, np.float32)
OBS3 = np.ones((3, DO), np.float32)
TGT3 = np.ones((3, DT), np.float32)


@pytest.mark.parametrize(
    ("obs", "target", "fragments"),
    [
        (np.ones(DO + 1), TGT1, (str(DO), "obs")),
        (OBS1, np.ones(DT + 2), (str(DT), "target")),
        (np.ones((3, DO - 1)), TGT3, (str(DO), "obs", "column")),
        (OBS3, np.ones((3, DT + 1)), (str(DT), "target", "column")),
        (OBS3, np.ones((2, DT)), ("row", "3", "2", "match")),
        (np.ones((4, DO)), TGT3, ("row", "3", "4", "match")),
        (np.ones((2, 3, DO)), np.ones((2, 3, DT)), ("dim", "1-d", "2-d", "shape")),
        (np.ones(()), TGT1, ("dim", "1-d", "2-d", "shape", "obs")),
        (OBS1, np.ones((2, DT)), ("row", "1", "2", "match", "shape")),
        (np.ones((0, DO + 1)), np.ones((0, DT)), (str(DO), "obs", "column")),
    ],
    ids=[
        "obs-row-too-long",
        "target-row-too-long",
        "obs-batch-too-few-columns",
        "target-batch-too-many-columns",
        "target-fewer-rows",
        "obs-more-rows",
        "obs-3d",
        "obs-0d",
        "single-obs-two-targets",
        "empty-batch-wrong-columns",
    ],
)
def test_add_rejects_bad_shapes(obs: np.ndarray, target: np.ndarray, fragments) -> None:  # type: ignore[no-untyped-def]
    store = store_with(2)
    expect_error(lambda: store.add(obs, target), *fragments)
    assert_unchanged(store, 2)


@pytest.mark.parametrize(
    ("obs", "target"),
    [
        ("abcd", TGT1),
        (OBS1, None),
        (None, TGT1),
        ([["a", "b", "c", "d"]], [[1.0, 2.0]]),
        ([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], [[1.0, 2.0], [1.0, 2.0]]),
        (object(), TGT1),
    ],
    ids=["str", "target-none", "obs-none", "str-elements", "ragged", "object"],
)
def test_add_rejects_non_numeric_input(obs: Any, target: Any) -> None:
    store = store_with(1)
    expect_error(lambda: store.add(obs, target))
    assert_unchanged(store, 1)


@pytest.mark.parametrize("key", ["task_id", "episode_id", "step"])
@pytest.mark.parametrize("length", [2, 4, 0])
def test_add_rejects_metadata_of_wrong_length(key: str, length: int) -> None:
    store = store_with(1)
    bad = {key: np.arange(length)}
    expect_error(lambda: store.add(OBS3, TGT3, **bad), key, "3", "length", "row")
    assert_unchanged(store, 1)


@pytest.mark.parametrize("key", ["task_id", "episode_id", "step"])
def test_add_rejects_per_row_metadata_for_single_row(key: str) -> None:
    store = store_with(1)
    expect_error(lambda: store.add(OBS1, TGT1, **{key: [1, 2]}), key, "1", "length", "row")
    assert_unchanged(store, 1)


@pytest.mark.parametrize("key", ["task_id", "episode_id", "step"])
@pytest.mark.parametrize(
    "bad", ["x", 1.5, [[1, 2, 3]], [1.5, 2.5, 3.5]], ids=["str", "float", "2d", "floats"]
)
def test_add_rejects_non_integer_metadata(key: str, bad: Any) -> None:
    store = store_with(1)
    expect_error(lambda: store.add(OBS3, TGT3, **{key: bad}))
    assert_unchanged(store, 1)


@pytest.mark.parametrize("key", ["task_id", "episode_id", "step"])
@pytest.mark.parametrize(
    "bad",
    [2**63, -(2**63) - 1, np.array([2**64 - 1, 1, 2], dtype=np.uint64)],
    ids=["2**63", "-2**63-1", "uint64-max"],
)
def test_add_rejects_metadata_outside_int64(key: str, bad: Any) -> None:
    """Metadata is int64: values outside its range must be rejected, not wrapped."""
    store = store_with(1)
    expect_error(lambda: store.add(OBS3, TGT3, **{key: bad}), key, "int64", "range", "overflow")
    assert_unchanged(store, 1)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("column", ["obs", "target"])
def test_add_rejects_non_finite_rows_and_inserts_nothing(value: float, column: str) -> None:
    store = store_with(2)
    before = store.obs_view().copy()
    obs = np.ones((5, DO), np.float32)
    target = np.ones((5, DT), np.float32)
    (obs if column == "obs" else target)[3, 1] = value  # one bad value in the 4th row
    expect_error(lambda: store.add(obs, target), "finite", "nan", "inf")
    assert_unchanged(store, 2)
    np.testing.assert_array_equal(store.obs_view(), before)
    expect_error(lambda: store.add(obs[3], target[3]), "finite", "nan", "inf")
    assert_unchanged(store, 2)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_add_rejects_float64_overflowing_float32() -> None:
    store = store_with(0)
    obs = np.full(DO, 1e300)  # finite in float64, inf once converted to float32
    try:
        store.add(obs, TGT1)
    except BAD:
        assert_unchanged(store, 0)
    else:  # accepted: then the stored value must not be non-finite garbage
        assert np.isfinite(store.obs_view()).all()


# --------------------------------------------------------------------------------- sample


def test_sample_from_empty_store() -> None:
    store = store_with(0)
    expect_error(lambda: store.sample(1), "empty", "0 rows", "no rows")
    expect_error(lambda: store.sample(1, with_meta=True), "empty", "0 rows", "no rows")


def test_sample_more_than_held() -> None:
    store = store_with(5)
    expect_error(lambda: store.sample(6), "5", "6")


@pytest.mark.parametrize("bad", [-1, -100])
def test_sample_negative_batch(bad: int) -> None:
    store = store_with(5)
    expect_error(lambda: store.sample(bad), "batch", "negative", "unsigned", ">=")


@pytest.mark.parametrize("bad", [2**64, 2**70])
def test_sample_huge_batch(bad: int) -> None:
    store = store_with(5)
    expect_error(lambda: store.sample(bad), "5", "batch", "large", "rows")


@pytest.mark.parametrize("bad", [2**64, 2**70])
def test_constructor_rejects_huge_capacity(bad: int) -> None:
    expect_error(lambda: RingBuffer(bad, DO, DT), "capacity", "large", "allocate")


HUGE_REQUEST = """
import numpy as np, rust_buffer
store = rust_buffer.RingBuffer(32, 4, 2, seed=0)
store.add(np.ones((10, 4)), np.ones((10, 2)), task_id=0, episode_id=0, step=np.arange(10))
try:
    store.{call}
except (ValueError, TypeError) as exc:
    print("rejected:", exc)
else:
    print("accepted")
"""


@pytest.mark.parametrize(
    "call",
    [
        "sample(10**12)",
        "sample(2**62, with_meta=True)",
        "sample_recent(10**12, 3)",
        "sample_task_rows(0, 10**12)",
        "sample_sequences(10**12, 5)",
        "sample_sequences(2, 10**12)",
        "sample_tasks(10**12, 1, 1)",
        "sample_tasks(1, 10**12, 1)",
    ],
)
def test_huge_requests_are_rejected_not_crashing(call: str) -> None:
    """Requests far beyond the rows held: a ValueError before any output is allocated.

    Run in a subprocess: a failed huge allocation aborts the whole interpreter.
    """
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_REQUEST.format(call=call)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"{call} crashed the interpreter: {proc.stderr[-500:]}"
    assert proc.stdout.startswith("rejected:"), proc.stdout


@pytest.mark.parametrize("bad", [1.5, "2", None])
def test_sample_non_integer_batch(bad: Any) -> None:
    store = store_with(5)
    expect_error(lambda: store.sample(bad))


# ---------------------------------------------------------------------------- sample_into


def into_case(name: str) -> tuple[Any, Any]:
    f32 = np.float32
    cases: dict[str, tuple[Any, Any]] = {
        "obs-wrong-columns": (np.empty((4, DO + 1), f32), np.empty((4, DT), f32)),
        "target-wrong-columns": (np.empty((4, DO), f32), np.empty((4, DT - 1), f32)),
        "row-mismatch": (np.empty((4, DO), f32), np.empty((3, DT), f32)),
        "obs-1d": (np.empty(DO, f32), np.empty((1, DT), f32)),
        "obs-3d": (np.empty((2, 2, DO), f32), np.empty((2, DT), f32)),
        "obs-float64": (np.empty((4, DO)), np.empty((4, DT), f32)),
        "target-float16": (np.empty((4, DO), f32), np.empty((4, DT), np.float16)),
        "obs-int32": (np.empty((4, DO), np.int32), np.empty((4, DT), f32)),
        "obs-fortran": (np.asfortranarray(np.empty((4, DO), f32)), np.empty((4, DT), f32)),
        "target-strided-rows": (np.empty((4, DO), f32), np.empty((8, DT), f32)[::2]),
        "obs-strided-columns": (np.empty((4, 2 * DO), f32)[:, ::2], np.empty((4, DT), f32)),
        "obs-list": ([[0.0] * DO] * 4, np.empty((4, DT), f32)),
        "target-none": (np.empty((4, DO), f32), None),
    }
    return cases[name]


INTO_FRAGMENTS = {
    "obs-wrong-columns": (str(DO), "shape", "column"),
    "target-wrong-columns": (str(DT), "shape", "column"),
    "row-mismatch": ("row", "4", "3", "match", "shape"),
    "obs-1d": ("2-d", "2d", "dim", "shape"),
    "obs-3d": ("2-d", "2d", "dim", "shape"),
    "obs-float64": ("float32", "dtype"),
    "target-float16": ("float32", "dtype"),
    "obs-int32": ("float32", "dtype"),
    "obs-fortran": ("contiguous", "layout"),
    "target-strided-rows": ("contiguous", "layout"),
    "obs-strided-columns": ("contiguous", "layout"),
    "obs-list": ("array", "ndarray", "float32", "buffer"),
    "target-none": ("array", "ndarray", "float32", "buffer", "none"),
}


@pytest.mark.parametrize("case", sorted(INTO_FRAGMENTS))
def test_sample_into_rejects_bad_outputs(case: str) -> None:
    store = store_with(10)
    obs_out, target_out = into_case(case)
    expect_error(lambda: store.sample_into(obs_out, target_out), *INTO_FRAGMENTS[case])


@pytest.mark.parametrize("which", ["obs", "target"])
def test_sample_into_rejects_read_only(which: str) -> None:
    store = store_with(10)
    obs_out = np.empty((4, DO), np.float32)
    target_out = np.empty((4, DT), np.float32)
    (obs_out if which == "obs" else target_out).flags.writeable = False
    expect_error(lambda: store.sample_into(obs_out, target_out), "writ", "read-only", "readonly")


def test_sample_into_rejects_store_view_as_output() -> None:
    store = store_with(10)
    view = store.obs_view()[:4]  # read-only zero-copy view of the store itself
    expect_error(lambda: store.sample_into(view, np.empty((4, DT), np.float32)))


def test_sample_into_from_empty_or_too_small_store() -> None:
    obs_out = np.empty((4, DO), np.float32)
    target_out = np.empty((4, DT), np.float32)
    expect_error(lambda: store_with(0).sample_into(obs_out, target_out), "empty", "0 rows")
    expect_error(lambda: store_with(3).sample_into(obs_out, target_out), "3", "4")


# ---------------------------------------------------------------------------- sample_tasks


def task_store() -> RingBuffer:
    """Tasks 0, 1, 2 with 6 rows each (one 6-step episode each) and task 3 with 2 rows."""
    store = RingBuffer(64, DO, DT, seed=0)
    for task in range(3):
        store.add(
            np.ones((6, DO), np.float32),
            np.ones((6, DT), np.float32),
            task_id=task,
            episode_id=task,
            step=np.arange(6),
        )
    store.add(np.ones((2, DO), np.float32), np.ones((2, DT), np.float32), task_id=3)
    return store


@pytest.mark.parametrize(
    ("args", "kwargs", "fragments"),
    [
        ((4, 3, 3), {}, ("task", "3", "4")),
        ((2, 5, 2), {}, ("row", "task", "7", "6")),
        ((3, 6, 1), {}, ("row", "task", "7", "6")),
        ((-1, 2, 2), {}, ("n_tasks", "negative", "unsigned", ">=")),
        ((2, -2, 2), {}, ("n_support", "negative", "unsigned", ">=")),
        ((2, 2, -1), {}, ("n_query", "negative", "unsigned", ">=")),
        ((0, 2, 2), {}, ("n_tasks", "task", ">=", "0")),
        ((2, 4, 3), {"contiguous": True}, ("episode", "step", "7", "row", "task")),
    ],
    ids=[
        "too-many-tasks",
        "too-few-rows-per-task",
        "no-task-has-enough",
        "n_tasks-neg",
        "n_support-neg",
        "n_query-neg",
        "n_tasks-zero",
        "contiguous-episodes-too-short",
    ],
)
def test_sample_tasks_rejects(args: tuple[int, int, int], kwargs: dict[str, Any], fragments):  # type: ignore[no-untyped-def]
    store = task_store()
    expect_error(lambda: store.sample_tasks(*args, **kwargs), *fragments)


def test_sample_tasks_from_empty_store() -> None:
    expect_error(lambda: store_with(0).sample_tasks(1, 1, 1), "empty", "task", "row")


def test_sample_tasks_contiguous_needs_episode_metadata() -> None:
    # Default metadata (episode_id=-1, step=-1) gives no consecutive steps to take windows from.
    store = store_with(20, task_id=1)
    try:
        out = store.sample_tasks(1, 2, 2, contiguous=True)
    except BAD:
        return
    assert out[0].shape == (1, 2, DO)  # if accepted, it must still return the documented shape


# ------------------------------------------------------------------------ sample_sequences


def episode_store(lengths: list[int]) -> RingBuffer:
    store = RingBuffer(64, DO, DT, seed=0)
    for ep, length in enumerate(lengths):
        store.add(
            np.ones((length, DO), np.float32),
            np.ones((length, DT), np.float32),
            episode_id=ep,
            step=np.arange(length),
        )
    return store


def test_sample_sequences_episodes_too_short() -> None:
    store = episode_store([4, 6, 5])
    expect_error(lambda: store.sample_sequences(2, 7), "7", "episode", "seq_len")


def test_sample_sequences_longer_than_capacity() -> None:
    store = episode_store([30, 30])
    expect_error(lambda: store.sample_sequences(2, 65), "65", "seq_len", "capacity", "episode")


def test_sample_sequences_from_empty_store() -> None:
    expect_error(lambda: store_with(0).sample_sequences(2, 3), "empty", "episode", "0")


@pytest.mark.parametrize(
    ("batch", "seq_len", "fragments"),
    [
        (-1, 3, ("batch", "negative", "unsigned", ">=")),
        (2, -3, ("seq_len", "negative", "unsigned", ">=")),
        (2, 0, ("seq_len", ">=", "0", "positive")),
    ],
    ids=["batch-neg", "seq_len-neg", "seq_len-zero"],
)
def test_sample_sequences_bad_sizes(batch: int, seq_len: int, fragments) -> None:  # type: ignore[no-untyped-def]
    store = episode_store([10])
    expect_error(lambda: store.sample_sequences(batch, seq_len), *fragments)


# --------------------------------------------------------------------------------- extras


def test_sample_recent_bad_window() -> None:
    store = store_with(10)
    expect_error(lambda: store.sample_recent(2, 0), "window", "0", ">=")
    expect_error(lambda: store.sample_recent(2, -5), "window", "negative", "unsigned")
    expect_error(lambda: store.sample_recent(-2, 5), "batch", "negative", "unsigned")
    expect_error(lambda: store_with(0).sample_recent(1, 1), "empty", "0 rows", "window")


def test_sample_recent_window_larger_than_held() -> None:
    store = store_with(10)
    expect_error(lambda: store.sample_recent(2, 11), "10", "11", "window")


def test_sample_task_rows_unknown_task() -> None:
    store = store_with(10, task_id=2)
    expect_error(lambda: store.sample_task_rows(5, 2), "5", "task")
    expect_error(lambda: store_with(0).sample_task_rows(0, 1), "0", "task", "empty")


def test_sample_task_rows_negative_batch() -> None:
    store = store_with(10, task_id=2)
    expect_error(lambda: store.sample_task_rows(2, -1), "batch", "negative", "unsigned")


def test_store_survives_every_error() -> None:
    """After a run of rejected calls, the store still works and holds what it held."""
    store = store_with(6)
    for call in (
        lambda: store.add(np.ones(DO + 1), TGT1),
        lambda: store.add(np.full(DO, np.nan), TGT1),
        lambda: store.sample(-1),
        lambda: store.sample_into(np.empty((2, DO)), np.empty((2, DT))),
        lambda: store.sample_sequences(1, 100),
    ):
        with pytest.raises(BAD):
            call()
    assert_unchanged(store, 6)
    obs, _ = store.sample(3)
    assert obs.shape == (3, DO)
