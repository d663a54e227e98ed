"""The activation table of the Python side: φ and φ'(z), for the plain-PyTorch backends.

φ' is taken from z, where it is accurate even for saturated units (from a
rounded h, 1 - h loses all relative precision). The fused kernels' twins of
this table, which also write φ' and φ'' from h for their backward passes, are
``csrc/include/fastcae/cae_math.h`` (C++/CUDA) and ``kernels/activations.py``
(Triton); the ids below are shared by all three. A NaN pre-activation gives a
NaN derivative for every activation, so NaN inputs always reach the penalty.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """One elementwise activation φ and its derivative.

    Attributes:
        name: the public name ("sigmoid", ...).
        id: the index shared with the C++ enum and the Triton kernels.
        forward: z -> h.
        slope: z -> φ'(z).
    """

    name: str
    id: int
    forward: Callable[[Tensor], Tensor]
    slope: Callable[[Tensor], Tensor]


def _propagate_nan(z: Tensor, value: Tensor) -> Tensor:
    return torch.where(torch.isnan(z), z, value)


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
        ),
        Activation(
            "tanh",
            1,
            forward=torch.tanh,
            slope=_tanh_slope,
            # (1-h)(1+h) keeps relative accuracy as |h| -> 1, unlike 1 - h².
        ),
        Activation(
            "softplus",
            2,
            forward=F.softplus,
            slope=torch.sigmoid,
            # φ'(z) = sigmoid(z) = 1 - exp(-h) because h = log(1 + e^z).
        ),
        Activation(
            "relu",
            3,
            forward=torch.relu,
            slope=lambda z: _propagate_nan(z, (z > 0).to(z.dtype)),
        ),
        Activation(
            "identity",
            4,
            forward=lambda z: z,
            slope=lambda z: _propagate_nan(z, torch.ones_like(z)),
        ),
    )
}

ACTIVATION_NAMES: tuple[str, ...] = tuple(ACTIVATIONS)
