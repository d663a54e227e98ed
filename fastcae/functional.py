"""The public functional API: the encoder layer and its contractive penalty.

For an encoder layer h = φ(z), z = x Wᵀ + b, with x (B, D), W (H, D), b (H,),
the Jacobian of sample b is J_b = ∂h_b/∂x_b = diag(φ'(z_b)) W, so its squared
Frobenius norm needs no (B, H, D) tensor:

    p_b = ‖J_b‖²_F = Σ_j φ'(z_bj)² ‖W_j‖²

The fast backends compute h and p in one fused pass after the GEMM and
differentiate them with hand-written backward kernels.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from ._validation import check_encoder_args, check_reduction
from .dispatch import resolve_backend


class EncoderOutput(NamedTuple):
    """What :func:`encode` returns: the code h (B, H) and the per-sample penalty p (B,)."""

    code: Tensor
    penalty: Tensor


def encode(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    activation: str = "sigmoid",
    backend: str = "auto",
) -> EncoderOutput:
    """Encode x and compute the contractive penalty of every sample, in one fused pass.

    .. math::
        h = φ(x W^T + b), \\qquad p_b = \\|∂h_b/∂x_b\\|_F^2 = \\sum_j φ'(z_{bj})^2 \\|W_j\\|^2

    Args:
        x: inputs, shape (B, D).
        weight: encoder weight W, shape (H, D) (the layout of ``nn.Linear.weight``).
        bias: encoder bias, shape (H,), or None.
        activation: φ, one of "sigmoid" (the CAE of Rifai et al. 2011), "tanh",
            "softplus", "relu" (φ' = 1[z > 0]) and "identity".
        backend: "auto" (the fastest available for x's device), "torch" (eager
            reference), "naive" (true Jacobian through torch.func), "cpu" (fused C++),
            and on CUDA devices "triton" and "cuda" where available; see
            :func:`fastcae.backends`.

    Returns:
        ``EncoderOutput(code, penalty)``: h of shape (B, H) in x's dtype and p of
        shape (B,) in float32 (float64 for float64 inputs). Both are
        differentiable with respect to x, weight and bias.

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, a backend that
            does not take the dtype.
        ValueError: wrong shapes, mixed devices, unknown activation or backend, a
            backend that cannot run here or on x's device.
    """
    check_encoder_args(x, weight, bias, activation)
    chosen = resolve_backend(backend, x, weight, bias, activation)
    code, penalty = chosen.encode(x, weight, bias, activation)
    return EncoderOutput(code, penalty)


def penalty(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    activation: str = "sigmoid",
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """The contractive penalty ‖∂h/∂x‖²_F of the encoder h = φ(x Wᵀ + b).

    Args:
        x, weight, bias, activation, backend: as in :func:`encode`.
        reduction: "none" (shape (B,)), "sum", or "mean" over the batch (0 for an
            empty batch).

    Returns:
        The penalty, float32 (float64 for float64 inputs), differentiable with
        respect to x, weight and bias.

    Example:
        >>> loss = F.binary_cross_entropy(reconstruction, x) + 0.1 * fastcae.penalty(x, W, b)
    """
    check_reduction(reduction)
    per_sample = encode(x, weight, bias, activation=activation, backend=backend).penalty
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / max(per_sample.shape[0], 1)
