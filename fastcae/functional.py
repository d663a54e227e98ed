"""The public functional API: the encoder layer and its contractive penalty.

For an encoder layer h = φ(z), z = x Wᵀ + b, with x (B, D), W (H, D), b (H,),
the Jacobian of sample b is J_b = ∂h_b/∂x_b = diag(φ'(z_b)) W, so its squared
Frobenius norm needs no (B, H, D) tensor:

    p_b = ‖J_b‖²_F = Σ_j φ'(z_bj)² ‖W_j‖²

The fast backends compute h and p in one fused pass after the GEMM and
differentiate them with hand-written backward kernels.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ._precision import acc_dtype
from ._validation import (
    check_encoder_args,
    check_generator,
    check_non_negative,
    check_positive_int,
    check_reduction,
)
from .dispatch import resolve_backend
from .ops import encode as encode_op
from .ops import hessian as hessian_op


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
        differentiable with respect to x, weight and bias. Under torch.autocast
        the inputs are cast like F.linear's (h then has the autocast dtype).

    Raises:
        TypeError: non-tensor or non-floating inputs, mixed dtypes, a backend that
            does not take the dtype.
        ValueError: wrong shapes, mixed devices, unknown activation or backend, a
            backend that cannot run here or on x's device.
    """
    check_encoder_args(x, weight, bias, activation)
    device_type = x.device.type
    autocast_dtype = _autocast_dtype(device_type)
    if autocast_dtype is None:
        run = encode_op.IMPLEMENTATIONS[resolve_backend(backend, x, weight, bias, activation)]
        return EncoderOutput(*run(x, weight, bias, activation))
    x, weight, bias = _cast_for_autocast((x, weight, bias), autocast_dtype)
    run = encode_op.IMPLEMENTATIONS[resolve_backend(backend, x, weight, bias, activation)]
    with torch.autocast(device_type, enabled=False):  # inputs are cast already; p accumulates in float32
        return EncoderOutput(*run(x, weight, bias, activation))


@torch.compiler.assume_constant_result
def _autocast_available(device_type: str) -> bool:
    """Whether ``device_type`` has autocast at all (``torch.is_autocast_enabled``
    raises for those that do not). A constant to Dynamo: torch 2.11 cannot trace
    ``torch._C._is_autocast_available`` (2.14 can) and would break the graph here."""
    return torch.amp.is_autocast_available(device_type)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype of ``device_type`` while autocast is on there, else None."""
    if _autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast_for_autocast(tensors: tuple[Tensor | None, ...], dtype: torch.dtype) -> tuple[Tensor | None, ...]:
    """F.linear's autocast policy: floating inputs other than float64 are cast to
    the autocast dtype. The fused kernels still accumulate in float32 and return
    a float32 penalty."""
    return tuple(t if t is None or t.dtype in (torch.float64, dtype) else t.to(dtype) for t in tensors)


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
    return _reduce(per_sample, reduction)


def _reduce(per_sample: Tensor, reduction: str) -> Tensor:
    """ "none" (B,), "sum", or "mean" over the batch (0 for an empty batch)."""
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    return total / max(per_sample.shape[0], 1)


def penalty_hessian(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    *,
    activation: str = "sigmoid",
    sigma: float = 0.1,
    n_samples: int = 4,
    generator: torch.Generator | None = None,
    reduction: str = "mean",
    backend: str = "auto",
) -> Tensor:
    """The CAE+H penalty: a stochastic estimate of how fast the Jacobian changes around x.

    Rifai et al. (ECML 2011) penalize E_ε ‖J(x) − J(x + ε)‖²_F with ε ~ N(0, σ² I).
    For one encoder layer J(x) = diag(φ'(z)) W and the noisy pre-activation is
    z̃ = z + ε Wᵀ, so no Jacobian is formed:

        p^H_b = (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖²

    Args:
        x, weight, bias, activation: as in :func:`encode`.
        sigma: standard deviation σ ≥ 0 of the input corruption.
        n_samples: number n ≥ 1 of corrupted copies per sample.
        generator: a torch.Generator on x's device, for reproducible noise.
        reduction: "none" (B,), "sum", or "mean" over the batch.
        backend: as in :func:`encode`. The GEMMs for z and z̃ run through ATen;
            the fast backends ("cpu", "cuda", "triton") then compute the sum in
            one fused pass with a hand-written backward, "torch"/"naive" with
            plain autograd.

    Returns:
        The estimate, float32 (float64 for float64 inputs), differentiable with
        respect to x, weight and bias. Memory: one (n, B, H) pre-activation.
    """
    check_encoder_args(x, weight, bias, activation)
    check_reduction(reduction)
    sigma = check_non_negative("sigma", sigma)
    check_positive_int("n_samples", n_samples)
    check_generator(generator, x.device)
    autocast_dtype = _autocast_dtype(x.device.type)
    if autocast_dtype is not None:
        x, weight, bias = _cast_for_autocast((x, weight, bias), autocast_dtype)
    run = hessian_op.IMPLEMENTATIONS[resolve_backend(backend, x, weight, bias, activation)]
    compute_dtype = acc_dtype(x.dtype)
    autocast_off = (
        contextlib.nullcontext() if autocast_dtype is None else torch.autocast(x.device.type, enabled=False)
    )
    with autocast_off:  # inputs are cast already; accumulate in compute_dtype
        noise = torch.randn(
            (n_samples, *x.shape), generator=generator, device=x.device, dtype=compute_dtype
        ).mul_(sigma)
        weight_c = weight.to(compute_dtype)
        preact = F.linear(x, weight, bias).to(compute_dtype)  # (B, H)
        noisy_preact = preact + noise @ weight_c.t()  # (n, B, H): (x + ε) Wᵀ + b by linearity
        row_norms_sq = weight_c.pow(2).sum(dim=1)
        per_sample = run(preact, noisy_preact, row_norms_sq, activation)
    return _reduce(per_sample, reduction)
