"""Collection: tasks stepped in vectorized gymnasium envs, their rows written into the store.

    collect(tasks, store, ...) --> one Job per worker --> run_job (steps.py): envs stepped
    together, rows cut into episode segments --> writers.py: thread / process / shared
    backend --> store.add(obs, target, task_id, episode_id, step)

* ``collector.py``: `collect` and `CollectStats`;
* ``budget.py``: how long each task runs (`max_rows`: the rows a collection adds at most);
* ``exploration.py``: the action schedules (`exploration_actions`);
* ``steps.py``: one worker's vectorized step loop (`EPISODE_STRIDE`: episode ids);
* ``writers.py``: the three backends (thread, process, shared);
* ``store.py``: `build_store`, a store sized for the tasks and filled in one call;
* ``rollout.py``: one task as a `Stream` (`rollout`), for test streams.
"""

from eaml_ssm.collect.budget import max_rows
from eaml_ssm.collect.collector import CollectStats, collect
from eaml_ssm.collect.exploration import exploration_actions
from eaml_ssm.collect.rollout import Stream, rollout
from eaml_ssm.collect.steps import EPISODE_STRIDE
from eaml_ssm.collect.store import build_store

__all__ = [
    "EPISODE_STRIDE",
    "CollectStats",
    "Stream",
    "build_store",
    "collect",
    "exploration_actions",
    "max_rows",
    "rollout",
]
