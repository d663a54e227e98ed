"""Triton kernels of the activate op (the encode op's epilogue on given
pre-activations) and their launchers (no autograd here).

Forward: ``_activate_kernel`` tiles z (B, U) in BLOCK_B × BLOCK_U blocks, writes
    h = φ(z) and each tile's share of p_b = Σ_u φ'(z_bu)² N_u into a
    (B, cdiv(U, BLOCK_U)) buffer that one small sum finishes (none when U fits
    one tile): no float atomics, a fixed order.
Backward: the encode op's dz pass (kernels/encode.py, ``grad_preact_pass``) with
    N in place of ‖W_j‖²: dz = g_h φ' + 2 g_p φ' φ'' N_u, and dN_u = Σ_b g_p φ'²
    from its per-unit sums.

Shapes: z (B, U), N (U,), h (B, U), p (B,), g_h (B, U), g_p (B,).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .activations import forward_and_slope
from .encode import _on_device, grad_preact_pass
from .tuning import ACTIVATE_CONFIG

BLOCK_B = ACTIVATE_CONFIG.kwargs["BLOCK_B"]
BLOCK_U = ACTIVATE_CONFIG.kwargs["BLOCK_U"]


@triton.jit
def _activate_kernel(
    preact_ptr, unit_norms_sq_ptr, code_ptr, penalty_partial_ptr,
    B, U,
    ACTIVATION: tl.constexpr, ACC_FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_U: tl.constexpr,
):  # fmt: skip
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    offs_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_u = tl.program_id(1) * BLOCK_U + tl.arange(0, BLOCK_U)
    mask_b = offs_b < B
    mask_u = offs_u < U
    mask = mask_b[:, None] & mask_u[None, :]
    index = offs_b[:, None].to(tl.int64) * U + offs_u[None, :]
    preact = tl.load(preact_ptr + index, mask=mask, other=0.0).to(acc_dtype)
    code, slope = forward_and_slope(preact, ACTIVATION)
    tl.store(code_ptr + index, code.to(code_ptr.dtype.element_ty), mask=mask)
    unit_norms_sq = tl.load(unit_norms_sq_ptr + offs_u, mask=mask_u, other=0.0)
    term = tl.where(mask, slope * slope * unit_norms_sq[None, :], 0.0)
    tl.store(
        penalty_partial_ptr + offs_b.to(tl.int64) * tl.num_programs(1) + tl.program_id(1),
        tl.sum(term, axis=1),
        mask=mask_b,
    )


def activate_forward(preact: Tensor, unit_norms_sq: Tensor, activation_id: int) -> tuple[Tensor, Tensor]:
    """h (B, U) in z's dtype and p (B,) in N's dtype (the accumulation dtype)."""
    preact, unit_norms_sq = preact.contiguous(), unit_norms_sq.contiguous()
    batch, units = preact.shape
    with _on_device(preact):
        code = torch.empty_like(preact)
        if batch == 0 or units == 0:
            return code, unit_norms_sq.new_zeros(batch)
        grid = (triton.cdiv(batch, BLOCK_B), triton.cdiv(units, BLOCK_U))
        partial = unit_norms_sq.new_empty((batch, grid[1]))
        _activate_kernel[grid](
            preact, unit_norms_sq, code, partial, batch, units,
            ACTIVATION=activation_id, ACC_FP64=unit_norms_sq.dtype == torch.float64,
            BLOCK_B=BLOCK_B, BLOCK_U=BLOCK_U, num_warps=ACTIVATE_CONFIG.num_warps,
        )  # fmt: skip
        penalty = partial.view(batch) if grid[1] == 1 else partial.sum(dim=1)
    return code, penalty


def activate_backward(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    code: Tensor,
    unit_norms_sq: Tensor,
    activation_id: int,
    output_mask: tuple[bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """(dz (B, U), dN (U,)), None where output_mask is False."""
    with _on_device(code):
        grad_preact, unit_sums = grad_preact_pass(
            grad_code, grad_penalty, code, unit_norms_sq.contiguous(), activation_id
        )
    # dN as its own tensor, not a view into unit_sums (the op's fake returns a fresh one).
    return (grad_preact if output_mask[0] else None), (unit_sums[1].clone() if output_mask[1] else None)
