"""The runtime block of a process: threads, seeds and the torch device, set once.

Every process that computes calls `setup` once at its start: the CLI's stages
(`eaml_ssm.pipeline.run_stage`), each torchrun rank (`eaml_ssm.distributed.run`) and each
evaluation worker. `resolve_device` is the one reading of a ``--device`` value.
"""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """The one seeding block: Python, NumPy's legacy global RNG and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def check_device(name: str) -> None:
    """Refuse ``cuda`` / ``cuda:N`` up front when torch cannot use that device (the one
    machine check of a --device value; its syntax is checked where the value enters)."""
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for, but torch sees no CUDA device")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ValueError(
                f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)"
            )


def resolve_device(name: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The torch device of a ``--device`` value: ``auto`` picks CUDA when torch sees it.

    One process: ``cpu``, ``cuda``, ``cuda:N`` (or any torch device name) as given. A torchrun
    rank (``local_rank`` given) accepts auto, cpu and cuda only, and ``cuda`` means its own
    GPU, ``cuda:<local_rank>``. A ``torch.device`` is returned as it is.
    """
    if isinstance(name, torch.device):
        return name
    if local_rank is not None and name not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    check_device(name)
    if local_rank is None or name != "cuda":
        return torch.device(name)
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ValueError(
            f"LOCAL_RANK {local_rank} needs GPU {local_rank}, but this node has {count}; "
            "use --nproc_per_node <= the number of GPUs"
        )
    return torch.device("cuda", local_rank)


def setup(seed: int, threads: int = 1, device: str | torch.device = "cpu") -> torch.device:
    """Set torch's intra-op threads and every global RNG; return the resolved ``device``.

    One core per process by default: the stages, ranks and evaluation workers of this
    package run side by side and scale by processes, not by intra-op threads.
    """
    torch.set_num_threads(threads)
    seed_everything(seed)
    return resolve_device(device)


__all__ = ["check_device", "resolve_device", "seed_everything", "setup"]
