"""The activation table of the Python side: φ, φ'(z), and φ' and φ'' written from h = φ(z).

The forward passes take φ' from z, where it is accurate even for saturated
units (from a rounded h, 1 - h loses all relative precision). The backward
passes take φ' and φ'' from h, so they save the code h they already have
instead of the pre-activation z. The C++/CUDA twin of this table is
``csrc/include/fastcae/cae_math.h`` and the Triton one ``kernels/activations.py``;
the ids below are shared by all three. A NaN code gives a NaN derivative for
every activation, so NaN inputs always reach the penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """One elementwise activation φ with its derivatives expressed through h = φ(z).

    Attributes:
        name: the public name ("sigmoid", ...).
        id: the index shared with the C++ enum and the Triton kernels.
        forward: z -> h.
        slope: z -> φ'(z).
        dphi: h -> φ'(z).
        d2phi: (h, φ'(z)) -> φ''(z).
    """

    name: str
    id: int
    forward: Callable[[Tensor], Tensor]
    slope: Callable[[Tensor], Tensor]
    dphi: Callable[[Tensor], Tensor]
    d2phi: Callable[[Tensor, Tensor], Tensor]


def _propagate_nan(h: Tensor, value: Tensor) -> Tensor:
    return torch.where(torch.isnan(h), h, value)


def _tanh_slope(z: Tensor) -> Tensor:
    # sech²(z) = 4e / (1 + e)² with e = exp(-2|z|): no overflow, no cancellation.
    e = torch.exp(-2 * z.abs())
    return 4 * e / (1 + e) ** 2


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation(
            "sigmoid",
            0,
            forward=torch.sigmoid,
            slope=lambda z: torch.sigmoid(z) * torch.sigmoid(-z),
            dphi=lambda h: h * (1 - h),
            d2phi=lambda h, dphi: dphi * (1 - 2 * h),
        ),
        Activation(
            "tanh",
            1,
            forward=torch.tanh,
            slope=_tanh_slope,
            # (1-h)(1+h) keeps relative accuracy as |h| -> 1, unlike 1 - h².
            dphi=lambda h: (1 - h) * (1 + h),
            d2phi=lambda h, dphi: -2 * h * dphi,
        ),
        Activation(
            "softplus",
            2,
            forward=F.softplus,
            slope=torch.sigmoid,
            # φ'(z) = sigmoid(z) = 1 - exp(-h) because h = log(1 + e^z).
            dphi=lambda h: -torch.expm1(-h),
            d2phi=lambda h, dphi: dphi * (1 - dphi),
        ),
        Activation(
            "relu",
            3,
            forward=torch.relu,
            slope=lambda z: _propagate_nan(z, (z > 0).to(z.dtype)),
            dphi=lambda h: _propagate_nan(h, (h > 0).to(h.dtype)),
            d2phi=lambda h, dphi: torch.zeros_like(h),
        ),
        Activation(
            "identity",
            4,
            forward=lambda z: z,
            slope=lambda z: _propagate_nan(z, torch.ones_like(z)),
            dphi=lambda h: _propagate_nan(h, torch.ones_like(h)),
            d2phi=lambda h, dphi: torch.zeros_like(h),
        ),
    )
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATIONS)
