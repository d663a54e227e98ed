"""Plain-PyTorch backends: "torch", the readable closed form every fast path is
tested against, and "naive", the true Jacobian through torch.func.

Both are differentiable through ordinary autograd (double backward included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..activations import ACTIVATIONS


def penalty_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the penalty: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def empty_encode_outputs(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Uninitialized (h (B, H), p (B,), ‖W_j‖² (H,)) with the dtypes every fused op returns:
    the shape contract of the fused ops (their fake kernels for torch.compile use it)."""
    batch, hidden = x.shape[0], weight.shape[0]
    acc_dtype = penalty_dtype(x.dtype)
    return (
        x.new_empty((batch, hidden)),
        x.new_empty((batch,), dtype=acc_dtype),
        x.new_empty((hidden,), dtype=acc_dtype),
    )


def encode_torch(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """Closed form of the encoder and its contractive penalty, eagerly.

    z = x Wᵀ + b, h = φ(z), p_b = Σ_j φ'(z_bj)² ‖W_j‖², since the Jacobian of
    sample b is diag(φ'(z_b)) W. Half-precision inputs are promoted to float32
    after the GEMM; h is returned in x's dtype and p in ``penalty_dtype``.

    Shapes: x (B, D), weight (H, D), bias (H,) or None -> h (B, H), p (B,).
    """
    act = ACTIVATIONS[activation]
    compute_dtype = penalty_dtype(x.dtype)
    z = F.linear(x, weight, bias).to(compute_dtype)
    h = act.forward(z)
    row_norms_sq = weight.to(compute_dtype).pow(2).sum(dim=1)
    penalty = act.slope(z).pow(2) @ row_norms_sq
    return h.to(x.dtype), penalty


def jacobian_naive(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """The per-sample Jacobian ∂h_b/∂x_b (B, H, D) by reverse-mode autodiff, and h (B, H)."""
    act = ACTIVATIONS[activation]

    def code_of(sample: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor]:
        code = act.forward(F.linear(sample, weight, bias))
        return code, code

    jacobian_fn = torch.func.jacrev(code_of, argnums=0, has_aux=True)
    return torch.func.vmap(jacobian_fn, in_dims=(0, None, None))(x, weight, bias)


def encode_naive(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """The penalty as ‖∂h_b/∂x_b‖²_F of the true (B, H, D) Jacobian: the benchmark baseline."""
    jacobian, code = jacobian_naive(x, weight, bias, activation)
    penalty = jacobian.to(penalty_dtype(x.dtype)).pow(2).sum(dim=(1, 2))
    return code, penalty


def hessian_torch(preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str) -> Tensor:
    """CAE+H from pre-activations: (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖², plain autograd.

    Shapes: z (B, H), z̃ (n, B, H), ‖W_j‖² (H,) -> (B,).
    """
    act = ACTIVATIONS[activation]
    slope_gap = act.slope(preact) - act.slope(noisy_preact)
    return slope_gap.pow(2).mean(dim=0) @ row_norms_sq
