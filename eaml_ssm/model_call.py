"""Calling a model with given weights: the one stateful/stateless rule and functional call.

A model is *stateful* when its ``forward`` takes a ``hidden_state`` argument; it is then
called as ``forward(x, hidden_state[, reset=...]) -> (y, next_hidden_state)`` (like
`eaml_ssm.ssm.SSM`). Any other ``nn.Module`` is stateless: ``forward(x) -> y``. Both the
meta-training inner loop (`eaml_ssm.maml`) and test-time adaptation (`eaml_ssm.adaptation`)
run the model through `call`, a ``torch.func.functional_call`` with the weights they hold.

Shapes: see the glossary in eaml_ssm/__init__.py.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["call", "initial_hidden", "is_stateful"]


def is_stateful(model: nn.Module) -> bool:
    """True when ``model.forward`` takes a ``hidden_state`` argument (then it returns (y, h))."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # builtins without a signature: treat as x -> y
        return False
    return "hidden_state" in params


def initial_hidden(model: nn.Module, batch_size: int, *, hint: str) -> Tensor:
    """``model.init_hidden(batch_size)`` (zeros) of a stateful model; ValueError, with
    ``hint`` (what the caller can pass instead), when the model has none."""
    init = getattr(model, "init_hidden", None)
    if not callable(init):
        raise ValueError(
            f"{type(model).__name__} is stateful but has no init_hidden(batch_size); {hint}"
        )
    out: Tensor = init(batch_size)
    return out


def call(
    model: nn.Module,
    params: Mapping[str, Tensor],
    x: Tensor,
    hidden: Tensor | None = None,
    reset: Tensor | None = None,
    *,
    stateful: bool,
) -> tuple[Tensor, Tensor | None]:
    """``model`` run with the weights ``params`` -> ``(y, next hidden state or None)``.

    ``params`` names every tensor to use (parameters and buffers; missing ones keep the
    model's own). A stateless model ignores ``hidden`` and ``reset`` and returns ``None`` as
    its state (a tuple output gives its first element). A stateful model needs ``hidden``
    (ValueError otherwise), gets ``reset`` (episode-start mask) as a keyword, and must
    return ``(y, next_hidden_state)`` (TypeError otherwise).
    """
    if not stateful:
        out = functional_call(model, dict(params), (x,))
        return (out[0] if isinstance(out, tuple) else out), None
    if hidden is None:
        raise ValueError(
            f"{type(model).__name__} is stateful (forward takes hidden_state) but "
            "hidden_state is None; pass a (b, z) tensor, e.g. model.init_hidden(b)"
        )
    kwargs = {} if reset is None else {"reset": reset}
    out = functional_call(model, dict(params), (x, hidden), kwargs)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise TypeError(
            "a stateful model's forward(x, hidden_state) must return (y, next_hidden_state), "
            f"got {type(out).__name__}"
        )
    return out[0], out[1]
