"""EAML-SSM: meta-learned state-space dynamics models with hybrid test-time adaptation.

The public names are imported lazily, so `import eaml_ssm` stays cheap and does not load
torch until a model-side name is used.
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
