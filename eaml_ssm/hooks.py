"""The points where a torchrun rank differs from one process, as overridable hooks.

`eaml_ssm.run_data.collect_data` and `eaml_ssm.train.meta_train` are the one collect stage and
the one meta-training loop. `Hooks` is what one process does at each point where a rank
does something else; `eaml_ssm.distributed.hooks.RankHooks` overrides them (collect a shard,
merge statistics, draw the rank's tasks of a meta-batch, all-reduce the gradients). Nothing
else of the stages is copied. See the glossary in eaml_ssm/__init__.py for t, s, q, d.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from eaml_ssm.artifacts import RunDir, load_checkpoint
from eaml_ssm.config import RunConfig, to_dict
from eaml_ssm.features import Normalizer
from eaml_ssm.feed import StoreLoader
from eaml_ssm.maml import MetaMAML, TaskBatch

if TYPE_CHECKING:  # they import this module
    from eaml_ssm.run_data import Data
    from eaml_ssm.train import Trained


def meta_batch(cfg: RunConfig, loader: StoreLoader) -> TaskBatch:
    """The next meta-step's per-task contiguous support/query windows, normalized, as
    sequences (t, 1, s, d) support and (t, 1, q, d) query: one sequence per task."""
    sx, sy, qx, qy, _ = loader.tasks(
        cfg.meta_batch_size, cfg.support_len, cfg.query_len, contiguous=True
    )
    return TaskBatch(sx.unsqueeze(1), sy.unsqueeze(1), qx.unsqueeze(1), qy.unsqueeze(1))


class Hooks:
    """One process: it holds every task, writes the run folder, and needs no collective."""

    rank = 0
    world_size = 1
    #: the run folder keeps the store (store.rbuf, or the file-backed store of the workers);
    #: a rank's store is its shard only
    keeps_store = True
    #: resuming restores the global RNG states saved in the checkpoint
    restores_rng = True

    @property
    def is_main(self) -> bool:
        """The process that writes the run folder, logs at INFO and shows progress bars."""
        return self.rank == 0

    # --- collect -----------------------------------------------------------------------------

    def check(self, cfg: RunConfig) -> None:
        """Refuse a config this job cannot run, before anything is collected."""

    def tasks_held(self, num_tasks: int) -> list[int]:
        """The training task ids this process collects and serves: all of them."""
        return list(range(num_tasks))

    def total(self, transitions: int, episodes: int) -> tuple[int, int]:
        """The collection counts of the whole job (this process's own)."""
        return transitions, episodes

    def collect_metrics(self) -> dict[str, Any]:
        """Extra fields of the run folder's `collect` metrics row."""
        return {}

    def normalizer(self, store: Any) -> Normalizer:
        """The normalization statistics of the job's training data."""
        return Normalizer.from_store(store)

    # --- meta-training -----------------------------------------------------------------------

    def read_checkpoint(self, cfg: RunConfig, run: RunDir | None) -> dict[str, Any] | None:
        """The run folder's checkpoint to resume from, or None."""
        if run is None or not run.checkpoint_path.exists():
            return None
        return load_checkpoint(run.checkpoint_path, to_dict(cfg))

    def start(self, cfg: RunConfig, data: Data, trained: Trained) -> None:
        """Called once before the first meta-step, after any resume."""

    def draw(self, cfg: RunConfig, loader: StoreLoader, step: int) -> tuple[TaskBatch | None, int]:
        """Meta-step `step`'s tasks held here and how many: the loader's next draw."""
        return meta_batch(cfg, loader), cfg.meta_batch_size

    def update(self, maml: MetaMAML, batch: TaskBatch | None, n_local: int, n_total: int) -> float:
        """One meta-optimizer step; returns the meta-loss over the whole meta-batch."""
        assert batch is not None  # one process holds every task
        return maml.meta_update(batch)

    def finish(self, trained: Trained) -> None:
        """Called once after the last meta-step."""


ONE_PROCESS = Hooks()
