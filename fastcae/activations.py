"""The activation table of the Python side: φ, and φ' and φ'' written from h = φ(z).

Writing the derivatives from h lets every backward pass save the code h it
already has instead of the pre-activation z. The C++/CUDA twin of this table is
``csrc/include/fastcae/cae_math.h`` and the Triton one ``kernels/activations.py``;
the ids below are shared by all three. A NaN code gives a NaN derivative for
every activation, so NaN inputs always reach the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

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
        dphi: h -> φ'(z).
        d2phi: (h, φ'(z)) -> φ''(z).
    """

    name: str
    id: int
    forward: Callable[[Tensor], Tensor]
    dphi: Callable[[Tensor], Tensor]
    d2phi: Callable[[Tensor, Tensor], Tensor]


def _propagate_nan(h: Tensor, value: Tensor) -> Tensor:
    return torch.where(torch.isnan(h), h, value)


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation(
            "sigmoid",
            0,
            forward=torch.sigmoid,
            dphi=lambda h: h * (1 - h),
            d2phi=lambda h, dphi: dphi * (1 - 2 * h),
        ),
        Activation(
            "tanh",
            1,
            forward=torch.tanh,
            # (1-h)(1+h) keeps relative accuracy as |h| -> 1, unlike 1 - h².
            dphi=lambda h: (1 - h) * (1 + h),
            d2phi=lambda h, dphi: -2 * h * dphi,
        ),
        Activation(
            "softplus",
            2,
            forward=F.softplus,
            # φ'(z) = sigmoid(z) = 1 - exp(-h) because h = log(1 + e^z).
            dphi=lambda h: -torch.expm1(-h),
            d2phi=lambda h, dphi: dphi * (1 - dphi),
        ),
        Activation(
            "relu",
            3,
            forward=torch.relu,
            dphi=lambda h: _propagate_nan(h, (h > 0).to(h.dtype)),
            d2phi=lambda h, dphi: torch.zeros_like(h),
        ),
        Activation(
            "identity",
            4,
            forward=lambda z: z,
            dphi=lambda h: _propagate_nan(h, torch.ones_like(h)),
            d2phi=lambda h, dphi: torch.zeros_like(h),
        ),
    )
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATIONS)
