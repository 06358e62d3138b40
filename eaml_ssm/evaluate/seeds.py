"""The seeding of the evaluation: each unit (family, seed) gets its own disjoint ranges of
task seeds, so no two seeds share a task and seeds are independent units for the intervals.
"""

from __future__ import annotations

from dataclasses import dataclass

SEED_STRIDE = 100_000  # task seeds of one evaluation unit: [seed * stride, (seed + 1) * stride)


@dataclass(frozen=True)
class UnitSeeds:
    """Disjoint task-seed ranges of one evaluation unit (family, seed): its own training
    tasks and its own test tasks, never shared with another seed's unit."""

    train: int  # first training-task seed (also the unit's RunConfig seed)
    test: int  # first test-task seed (every split)
    rollout: int  # first rollout seed of the test streams and old-task probes


def unit_seeds(seed: int, num_tasks: int, test_tasks: int) -> UnitSeeds:
    """Unit `seed` draws training tasks from [base, base + num_tasks) and test tasks from
    [base + stride/2, base + stride/2 + test_tasks), where base = seed * SEED_STRIDE: no two
    seeds share a task, so seeds are independent units for the intervals."""
    half = SEED_STRIDE // 2
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 0 < num_tasks <= half or not 0 < test_tasks <= half:
        raise ValueError(
            f"num_tasks ({num_tasks}) and test_tasks ({test_tasks}) must be in [1, {half}]"
        )
    base = seed * SEED_STRIDE
    return UnitSeeds(train=base, test=base + half, rollout=base + 7919)


__all__ = ["SEED_STRIDE", "UnitSeeds", "unit_seeds"]
