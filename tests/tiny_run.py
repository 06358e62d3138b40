"""The smallest training flags the CLI and run-folder tests train with (seconds on a CPU)."""

from __future__ import annotations

from typing import Any

TINY_TRAIN = [
    "--num_tasks", "4",
    "--meta_batch_size", "2",
    "--steps_per_task", "150",
    "--num_epochs", "3",
    "--hidden_dim", "16",
    "--state_dim", "8",
    "--device", "cpu",
]  # fmt: skip

# the tiny end-to-end run (collect, train 4 steps, adapt): test_pipeline and the golden record
TINY_RUN = [
    "--num_tasks", "4",
    "--meta_batch_size", "2",
    "--steps_per_task", "200",
    "--num_epochs", "4",
    "--stream_steps", "48",
    "--num_test_tasks", "1",
    "--hidden_dim", "16",
    "--state_dim", "8",
    "--quiet",
]  # fmt: skip


def tiny_profile(**changes: Any) -> Any:
    """The smallest evaluation profile (one Pendulum seed, "sanity" grid, 8-step windows) that
    the golden record was made with; ``changes`` set other Profile fields."""
    from eaml_ssm import evaluate

    fields: dict[str, Any] = {
        "seeds": 1,
        "families": ("Pendulum-v1",),
        "levels": (("Pendulum-v1", "sanity"),),
        "num_tasks": 8,
        "steps_per_task": 150,
        "meta_steps": 6,
        "joint_steps": 6,
        "stream_steps": 32,
        "test_tasks": 2,
        "window": 8,
        "old_tasks": 2,
        "pairs_per_task": 1,
        "pairs_task_a": 2,
    }
    return evaluate.Profile(**{**fields, **changes})
