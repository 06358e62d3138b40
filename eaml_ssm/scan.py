"""Out-of-place parallel scan for the diagonal linear recurrence ``x_t = a_t * x_{t-1} + b_t``.

The recurrence runs over complex numbers held as separate real and imaginary tensors, so that
every op is a plain real-valued, out-of-place torch op. That is what lets the scan run under
``torch.func.grad`` (including grad-of-grad, as second-order MAML needs) and ``torch.func.vmap``:
no in-place writes, no custom ``autograd.Function``, no complex dtype.

Shapes: see the glossary in eaml_ssm/__init__.py (``l`` steps, ``m`` state modes; in this module
``a`` and ``b`` name the recurrence's coefficients and inputs). The time axis is always dim -2,
so tensors look like ``(..., l, m)``; ``a`` may have fewer leading dims than ``b`` (it broadcasts,
e.g. ``(l, m)`` for a time-invariant layer without resets).

Algorithm: the recursive odd/even reduction (Blelloch-style, as in ``accelerated_scan/ref.py``
and ``s5-pytorch``'s ``associative_scan``). Adjacent pairs ``(2i, 2i+1)`` are combined into one
element of a half-length recurrence, which is solved recursively and yields the states at the
odd positions; the even positions then follow with one more step each. Work is O(l m), depth
about log2(l) levels of a handful of ops, and no padding to a power of two is needed.

The state before the first step is zero; callers fold a nonzero initial state ``h0`` into the
first input (``b_0 <- b_0 + a_0 * h0``), and express resets by zeroing ``a_t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["complex_mul", "linear_recurrence", "linear_recurrence_reference"]


def complex_mul(ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor) -> tuple[Tensor, Tensor]:
    """Elementwise ``(ar + i ai) * (br + i bi)`` with broadcasting; returns (real, imag)."""
    return ar * br - ai * bi, ar * bi + ai * br


def _interleave(even: Tensor, odd: Tensor) -> Tensor:
    """Merge even-index rows (..., ceil(l/2), m) and odd-index rows (..., l//2, m) in time order."""
    pairs = odd.shape[-2]
    both = torch.stack((even[..., :pairs, :], odd), dim=-2)  # (..., pairs, 2, m)
    merged = both.reshape(*both.shape[:-3], 2 * pairs, both.shape[-1])  # (..., 2 pairs, m)
    if even.shape[-2] > pairs:  # odd length: one trailing even element
        merged = torch.cat((merged, even[..., pairs:, :]), dim=-2)
    return merged


def _scan(ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor) -> tuple[Tensor, Tensor]:
    """Recursive odd/even scan; ``b`` already has the full broadcast shape (..., l, m)."""
    length = br.shape[-2]
    if length == 1:
        return br, bi
    pairs = length // 2
    # Pairs (2i, 2i+1) combine into coefficient a_{2i+1} a_{2i}, input a_{2i+1} b_{2i} + b_{2i+1}.
    a_ev_r, a_ev_i = ar[..., 0 : 2 * pairs : 2, :], ai[..., 0 : 2 * pairs : 2, :]
    a_od_r, a_od_i = ar[..., 1 : 2 * pairs : 2, :], ai[..., 1 : 2 * pairs : 2, :]
    b_ev_r, b_ev_i = br[..., 0 : 2 * pairs : 2, :], bi[..., 0 : 2 * pairs : 2, :]
    b_od_r, b_od_i = br[..., 1 : 2 * pairs : 2, :], bi[..., 1 : 2 * pairs : 2, :]
    pa_r, pa_i = complex_mul(a_od_r, a_od_i, a_ev_r, a_ev_i)  # (..., pairs, m)
    pb_r, pb_i = complex_mul(a_od_r, a_od_i, b_ev_r, b_ev_i)
    odd_r, odd_i = _scan(pa_r, pa_i, pb_r + b_od_r, pb_i + b_od_i)  # states at 1, 3, 5, ...
    # Even positions 2i (i >= 1): x_{2i} = a_{2i} x_{2i-1} + b_{2i}; x_0 = b_0.
    n_even = (length + 1) // 2
    ea_r, ea_i = ar[..., 2::2, :], ai[..., 2::2, :]  # (..., n_even - 1, m)
    prev_r, prev_i = odd_r[..., : n_even - 1, :], odd_i[..., : n_even - 1, :]
    ex_r, ex_i = complex_mul(ea_r, ea_i, prev_r, prev_i)
    even_r = torch.cat((br[..., :1, :], ex_r + br[..., 2::2, :]), dim=-2)  # (..., n_even, m)
    even_i = torch.cat((bi[..., :1, :], ex_i + bi[..., 2::2, :]), dim=-2)
    return _interleave(even_r, odd_r), _interleave(even_i, odd_i)


def linear_recurrence(ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor) -> tuple[Tensor, Tensor]:
    """All states of ``x_t = a_t x_{t-1} + b_t`` (complex, elementwise, ``x_{-1} = 0``).

    Args:
        ar, ai: real and imaginary parts of the coefficients, (..., l, m), broadcastable to b.
        br, bi: real and imaginary parts of the inputs, (..., l, m).

    Returns:
        (xr, xi): the states at every step, each of the broadcast shape (..., l, m).
    """
    if ar.shape[-2] != br.shape[-2]:
        raise ValueError(f"a has length {ar.shape[-2]} but b has length {br.shape[-2]}")
    if br.shape[-2] == 0:
        raise ValueError("linear_recurrence needs a sequence of length >= 1, got 0")
    shape = torch.broadcast_shapes(ar.shape, ai.shape, br.shape, bi.shape)
    return _scan(ar, ai, br.expand(shape), bi.expand(shape))


def linear_recurrence_reference(
    ar: Tensor, ai: Tensor, br: Tensor, bi: Tensor
) -> tuple[Tensor, Tensor]:
    """The same recurrence as a step-by-step Python loop (the oracle for tests and benchmarks)."""
    shape = torch.broadcast_shapes(ar.shape, ai.shape, br.shape, bi.shape)
    ar, ai, br, bi = (t.expand(shape) for t in (ar, ai, br, bi))
    xr = torch.zeros_like(br[..., 0, :])  # (..., m)
    xi = torch.zeros_like(bi[..., 0, :])
    out_r, out_i = [], []
    for t in range(shape[-2]):
        xr, xi = complex_mul(ar[..., t, :], ai[..., t, :], xr, xi)
        xr, xi = xr + br[..., t, :], xi + bi[..., t, :]
        out_r.append(xr)
        out_i.append(xi)
    return torch.stack(out_r, dim=-2), torch.stack(out_i, dim=-2)
