"""Hybrid test-time adaptation of a meta-learned model (see ``adapter.py`` for the semantics).

* ``config.py``: `AdaptationConfig`, every setting of one adaptation, validated once;
* ``adapter.py``: `Adapter` (``update_step`` on a window, ``predict``, ``reset``, ``fork``)
  and `UpdateResult`;
* ``online.py``: `OnlineAdapter`, one step at a time: predict, observe, adapt every
  ``adapt_every`` steps;
* ``replay.py``: `ExperienceSource`, what the adapter replays from the store given to it;
* ``step_sizes.py``: the meta-learned step sizes (`learned_inner_lrs`) and one per parameter;
* ``adam.py``: functional Adam moments for the inner steps.

The model is called through `eaml_ssm.model_call` (the one stateful/stateless rule).
"""

from eaml_ssm.adaptation.adapter import Adapter, UpdateResult
from eaml_ssm.adaptation.config import AdaptationConfig
from eaml_ssm.adaptation.online import OnlineAdapter
from eaml_ssm.adaptation.replay import ExperienceSource
from eaml_ssm.adaptation.step_sizes import learned_inner_lrs

__all__ = [
    "AdaptationConfig",
    "Adapter",
    "ExperienceSource",
    "OnlineAdapter",
    "UpdateResult",
    "learned_inner_lrs",
]
