"""EAML-SSM: meta-learned state-space dynamics models with hybrid test-time adaptation.

The public names are imported lazily, so `import eaml_ssm` stays cheap and does not load
torch until a model-side name is used. How the modules fit together: docs/architecture.md.

Glossary (the one for the whole package: one letter, one meaning; shape comments such as
``# (b, l, d)`` and docstrings in every module use these letters):

    b   batch: sequences, windows or rows handled together
    l   steps of one sequence or window (its length)
    n   rows: a flat count of transitions (``b * l`` once flattened)
    t   tasks (of a meta-batch, a store or a stream)
    s   support steps of a MAML task set       q   query steps (``l = s + q``)
    w   windows of an evaluation stream (each ``l`` steps long); only in method names and
        their prose ("hybrid (w=0.3)", "continual w = 0") is w the replay weight
        ``experience_weight``: those names are the results files' keys and stay as they are
    d   model input features (``d = ds + da``)
    o   model output (target) features (the state change, ``o = ds``)
    ds  environment state features              da  action-encoding features
    h   hidden width of the SSM layer stack (``hidden_dim``)
    m   complex state modes per SSM layer (``state_dim``)
    k   stacked SSM layers (``num_layers``)
    z   flat hidden-state size of a stateful model (``k * m * 2`` for the SSM)
    e   environments stepped together by one collection worker
    c   candidate rows scored by nearest-neighbour replay
    p   meta-parameters, flattened

Words: a *task* is one setting of an environment's physics (``tasks.Task``); the *store* is
the Rust experience ring (``rust_buffer.RingBuffer``) and ``store.sample_tasks`` draws MAML
task sets from it; a *stream* is the sequence of transitions an agent meets at test time; a
*window* is ``l`` consecutive steps of one episode; a *unit* is one (family, seed) of the
evaluation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "SSM": "eaml_ssm.ssm",
    "SSMConfig": "eaml_ssm.ssm",
    "MetaMAML": "eaml_ssm.maml",
    "Adapter": "eaml_ssm.adaptation",
    "AdaptationConfig": "eaml_ssm.adaptation",
    "ExperienceBuffer": "eaml_ssm.buffer",
    "Run": "eaml_ssm.run",
    "load_run": "eaml_ssm.run",
    "main": "eaml_ssm.cli",
    "run_stage": "eaml_ssm.pipeline",
}

__all__ = [
    "SSM",
    "AdaptationConfig",
    "Adapter",
    "ExperienceBuffer",
    "MetaMAML",
    "Run",
    "SSMConfig",
    "__version__",
    "load_run",
    "main",
    "run_stage",
]

if TYPE_CHECKING:  # pragma: no cover
    from eaml_ssm.adaptation import AdaptationConfig, Adapter
    from eaml_ssm.buffer import ExperienceBuffer
    from eaml_ssm.cli import main
    from eaml_ssm.maml import MetaMAML
    from eaml_ssm.pipeline import run_stage
    from eaml_ssm.run import Run, load_run
    from eaml_ssm.ssm import SSM, SSMConfig


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'eaml_ssm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
