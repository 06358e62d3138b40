"""Step sizes of the adapter: the meta-learned ones read off a MetaMAML, and one per parameter.

`learned_inner_lrs` reads Meta-SGD rates from a MetaMAML; `resolve_lrs` turns a config, the
learned rates and the model's trainable parameters into the step size of each parameter (a
float, or a tensor for per-element rates), clamped at >= 0 where the config says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from eaml_ssm.adaptation.config import AdaptationConfig


def as_float(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        return float(value.detach().cpu().item())
    return float(value)


def learned_inner_lrs(maml: Any) -> dict[str, float | Tensor]:
    """Per-parameter inner step sizes of a MetaMAML when they were learned, else ``{}``.

    Works with ``maml.inner_lr_for(name)`` (the shared interface) or an ``inner_lrs``
    mapping / ``nn.ParameterDict``. Values are detached copies (a float-like scalar tensor
    or a per-element tensor for Meta-SGD-style rates).
    """
    if not getattr(maml, "learn_inner_lr", False):
        return {}
    model = getattr(maml, "model", None)
    getter = getattr(maml, "inner_lr_for", None)
    if callable(getter) and isinstance(model, nn.Module):
        out: dict[str, float | Tensor] = {}
        for name, _ in model.named_parameters():
            value = getter(name)
            out[name] = value.detach().clone() if isinstance(value, Tensor) else float(value)
        return out
    table = getattr(maml, "inner_lrs", None)
    if isinstance(table, Mapping | nn.ParameterDict):
        return {
            str(k): v.detach().clone() if isinstance(v, Tensor) else float(v)
            for k, v in table.items()
        }
    return {}


def resolve_lrs(
    config: AdaptationConfig,
    meta: Mapping[str, Tensor],
    given: Mapping[str, float | Tensor] | None,
    device: torch.device,
    dtype: torch.dtype,
) -> dict[str, Any]:
    """The step size of each trainable parameter in ``meta``: ``given`` (e.g. learned rates)
    over ``config.param_lrs`` over ``config.learning_rate``; tensors on ``device``."""
    table: dict[str, float | Tensor] = dict(config.param_lrs or {})
    table.update(given or {})
    unknown = sorted(set(table) - set(meta))
    if unknown:
        raise ValueError(f"param_lrs names {unknown} are not trainable parameters of the model")
    out: dict[str, Any] = {}
    for name, p in meta.items():
        lr = table.get(name, config.learning_rate)
        if isinstance(lr, Tensor):
            lr = lr.detach().to(device, dtype)
            if lr.numel() != 1 and lr.shape != p.shape:
                raise ValueError(
                    f"param_lrs[{name!r}] has shape {tuple(lr.shape)}, expected a scalar "
                    f"or {tuple(p.shape)}"
                )
            if config.clamps_lrs:
                lr = lr.clamp(min=0.0)
        elif config.clamps_lrs:
            lr = max(float(lr), 0.0)
        out[name] = lr
    return out
