"""The smallest training flags the CLI and run-folder tests train with (seconds on a CPU)."""

from __future__ import annotations

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
