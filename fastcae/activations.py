"""The activation table: φ and its derivatives in PyTorch, and the ids every kernel uses.

This table is the source of truth. The Triton kernels read their ids from it
(kernels/activations.py); the C++ kernels list theirs in
``FASTCAE_ACTIVATIONS`` (csrc/include/fastcae/cae_math.h), which
tests/test_activations.py checks against it. Each activation is written three
times (here, cae_math.h, kernels/activations.py), with the same function names:

- ``slope(z)`` = φ'(z), from z: accurate even for saturated units (from a
  rounded h, 1 - h loses all relative precision). The forward passes use it.
- ``slope_from_code(h)`` = φ'(z) and ``curvature_from_code(h, φ')`` = φ''(z),
  written from h = φ(z): what the backward passes have saved.
- ``tangent_from_code(u, h)`` = u φ'(z) (Python only): a tangent pushed through
  φ, as the deep encoders' projection estimate does per layer; one fused ATen
  op where there is one (sigmoid_backward, itself differentiable), so that a
  step pays one elementwise pass instead of three, and fewer in its backward.

NaN propagates: a NaN pre-activation or code gives a NaN slope for every
activation, so NaN inputs always reach the penalty. Everything here is made
of differentiable PyTorch ops, so the closed forms built on it
(fastcae/ops/reference.py) are differentiable to any order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """One elementwise activation φ and its derivatives.

    Attributes:
        name: the public name ("sigmoid", ...).
        id: the index shared with the C++ and Triton kernels.
        forward: z -> h = φ(z).
        slope: z -> φ'(z).
        slope_from_code: h -> φ'(z).
        curvature_from_code: (h, φ'(z)) -> φ''(z).
        fused_tangent: (u, h) -> u φ'(z) as one ATen op, where there is one.
    """

    name: str
    id: int
    forward: Callable[[Tensor], Tensor]
    slope: Callable[[Tensor], Tensor]
    slope_from_code: Callable[[Tensor], Tensor]
    curvature_from_code: Callable[[Tensor, Tensor], Tensor]
    fused_tangent: Callable[[Tensor, Tensor], Tensor] | None = None

    def tangent_from_code(self, u: Tensor, h: Tensor) -> Tensor:
        """u φ'(z) from the code h = φ(z), u broadcast against h."""
        if self.fused_tangent is not None:
            return self.fused_tangent(u, h)
        return u * self.slope_from_code(h)


def _propagate_nan(t: Tensor, value: Tensor) -> Tensor:
    return torch.where(torch.isnan(t), t, value)


def _tanh_slope(z: Tensor) -> Tensor:
    # sech²(z) = 4e / (1 + e)² with e = exp(-2|z|): no overflow, no cancellation.
    e = torch.exp(-2 * z.abs())
    return 4 * e / (1 + e) ** 2


def _no_curvature(h: Tensor, slope: Tensor) -> Tensor:
    return torch.zeros_like(h)


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation(
            "sigmoid",
            0,
            forward=torch.sigmoid,
            slope=lambda z: torch.sigmoid(z) * torch.sigmoid(-z),
            slope_from_code=lambda h: h * (1 - h),
            curvature_from_code=lambda h, slope: slope * (1 - 2 * h),
            fused_tangent=torch.ops.aten.sigmoid_backward,  # u h (1 - h)
        ),
        Activation(
            "tanh",
            1,
            forward=torch.tanh,
            slope=_tanh_slope,
            # (1-h)(1+h) keeps relative accuracy as |h| -> 1, unlike 1 - h².
            slope_from_code=lambda h: (1 - h) * (1 + h),
            curvature_from_code=lambda h, slope: -2 * h * slope,
        ),
        Activation(
            "softplus",
            2,
            forward=F.softplus,
            slope=torch.sigmoid,
            # h = log(1 + e^z), so φ'(z) = σ(z) = 1 - e^{-h} and φ'' = σ(1 - σ).
            slope_from_code=lambda h: -torch.expm1(-h),
            curvature_from_code=lambda h, slope: slope * (1 - slope),
        ),
        Activation(
            "relu",
            3,
            forward=torch.relu,
            slope=lambda z: _propagate_nan(z, (z > 0).to(z.dtype)),
            slope_from_code=lambda h: _propagate_nan(h, (h > 0).to(h.dtype)),
            curvature_from_code=_no_curvature,
        ),
        Activation(
            "identity",
            4,
            forward=lambda z: z,
            slope=lambda z: _propagate_nan(z, torch.ones_like(z)),
            slope_from_code=lambda h: _propagate_nan(h, torch.ones_like(h)),
            curvature_from_code=_no_curvature,
        ),
    )
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATIONS)
