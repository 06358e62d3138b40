"""A trained run folder as a Python object: ``eaml_ssm.load_run(path)``.

    run = eaml_ssm.load_run("runs/CartPole-v1-seed0")
    next_states = run.predict(states, actions)   # raw (b, ds) states, actions -> (b, ds)
    adapter = run.adapter(experience_weight=0.3) # an Adapter on run.model, like the pipeline's

A run (written by ``python -m eaml_ssm``) holds the model weights, the normalizer and the
config in ``checkpoint.pt``; the feature encoding is the task family's (``eaml_ssm.features``);
the experience store is ``store.rbuf`` (or ``store.shared``) when collection kept one.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from eaml_ssm.adaptation import Adapter
from eaml_ssm.artifacts import RunDir, load_checkpoint
from eaml_ssm.config import RunConfig
from eaml_ssm.features import Normalizer, apply_delta, encode_inputs
from eaml_ssm.maml import MetaMAML
from eaml_ssm.models import build_maml
from eaml_ssm.run_adapter import adapter_for
from eaml_ssm.run_data import saved_store, train_tasks
from eaml_ssm.run_folders import checkpoint_config
from eaml_ssm.runtime import resolve_device
from eaml_ssm.ssm import SSM, SSMConfig
from eaml_ssm.tasks import Task, TaskFamily, get_family

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """A loaded run: model, normalizer, feature encoding (``family``), config and tasks."""

    path: Path
    config: RunConfig
    model: SSM  # on `device`, in eval mode, at the meta-learned weights
    normalizer: Normalizer  # on `device`
    family: TaskFamily  # the feature encoding: state/action layout of the task family
    tasks: list[Task]  # the meta-training tasks (physics), in task_id order
    maml: MetaMAML  # carries the meta-learned inner step sizes
    device: torch.device
    _store: Any = field(default=None, repr=False)

    @property
    def store(self) -> Any:
        """The run's experience store (``rust_buffer.RingBuffer``), or None if none was kept."""
        if self._store is None:
            self._store = saved_store(self.config, RunDir(self.path, create=False))
        return self._store

    @torch.no_grad()
    def predict(
        self,
        states: Any,
        actions: Any,
        hidden_state: Tensor | None = None,
        *,
        return_hidden: bool = False,
    ) -> Any:
        """Next raw states for raw ``states`` and ``actions`` (one model step per row).

        ``states`` (b, ds) or a sequence (b, l, ds); ``actions`` (b,)/(b, l) discrete or
        (b, da)/(b, l, da) continuous. Tensors may live on any device: the result comes back
        as a tensor on the states' device (NumPy in, NumPy out). The features are encoded on
        the CPU (``eaml_ssm.features``, one encoding for every path); the model runs on
        ``run.device``. A sequence runs through the model's hidden state from
        ``hidden_state`` (default zeros); ``return_hidden=True`` also returns the final state.
        """
        out_device = states.device if isinstance(states, Tensor) else None
        s = _numpy(states)
        a = _numpy(actions)
        if s.ndim not in (2, 3):
            raise ValueError(
                f"states must be (b, {self.family.state_dim}) or (b, l, {self.family.state_dim}),"
                f" got shape {s.shape}"
            )
        if a.shape[: s.ndim - 1] != s.shape[:-1]:
            raise ValueError(
                f"actions have shape {a.shape}; expected one action per state, leading shape "
                f"{s.shape[:-1]}"
            )
        seq = s.ndim == 3
        b, length = s.shape[0], (s.shape[1] if seq else 1)
        flat_s = s.reshape(b * length, -1)  # (b*l, ds)
        flat_a = a.reshape(b * length, *a.shape[(2 if seq else 1) :])
        x = torch.from_numpy(encode_inputs(self.family, flat_s, flat_a)).to(self.device)
        x = self.normalizer.normalize_inputs(x).reshape(b, length, -1)  # (b, l, d)
        h = self.model.init_hidden(b) if hidden_state is None else hidden_state.to(self.device)
        y, h_next = self.model(x if seq else x[:, 0], h)
        delta = self.normalizer.denormalize_targets(y.reshape(b * length, -1))  # raw (b*l, ds)
        nxt = apply_delta(self.family, flat_s, delta.cpu().numpy()).reshape(s.shape)
        result: Any = nxt if out_device is None else torch.from_numpy(nxt).to(out_device)
        return (result, h_next) if return_hidden else result

    def adapter(self, **overrides: Any) -> Adapter:
        """An ``Adapter`` on ``run.model`` set up as the pipeline's (replay from the store).

        ``overrides`` are ``AdaptationConfig`` fields (e.g. ``experience_weight=0.3``). Like
        every Adapter it adapts ``run.model`` in place (``reset()`` restores it); use
        ``run.adapter().fork()`` to keep ``run.model`` at the meta-learned weights.
        """
        return adapter_for(
            self.config, self.maml, self.store, self.normalizer, self.device, **overrides
        )


def load_run(path: str | os.PathLike[str], device: str | torch.device = "auto") -> Run:
    """Open a run folder written by ``python -m eaml_ssm`` (after its ``train`` stage).

    ``path`` is the run folder (or its ``checkpoint.pt``); ``device`` is auto (CUDA when
    available), cpu, cuda or a ``torch.device``. A folder without a checkpoint, or a file
    that is not one, raises ValueError / FileNotFoundError naming the file.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such run folder")
    ckpt_path = RunDir(folder, create=False).checkpoint_path
    if not ckpt_path.exists():
        raise FileNotFoundError(
            f"{ckpt_path}: no checkpoint; train the run first (python -m eaml_ssm train "
            f"--out {folder.parent} --name {folder.name})"
        )
    ck = load_checkpoint(ckpt_path)
    cfg = checkpoint_config(ck, ckpt_path)
    dev = device if isinstance(device, torch.device) else resolve_device(str(device))
    try:
        model = SSM.from_config(SSMConfig.from_dict(ck["model_config"]))
        model.load_state_dict(ck["model"])
        normalizer = Normalizer.from_state_dict(ck["normalizer"]).to(dev)
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        raise ValueError(f"{ckpt_path}: damaged run checkpoint ({exc})") from exc
    model = model.to(dev).eval()
    maml = build_maml(cfg, model)
    maml.load_state_dict(ck["maml"])
    tasks = train_tasks(cfg)
    return Run(folder, cfg, model, normalizer, get_family(cfg.env_name), tasks, maml, dev)


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)
