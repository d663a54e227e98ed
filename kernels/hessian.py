"""Triton kernels of the CAE+H penalty and their launchers (no autograd here).

From pre-activations z (B, H), n corrupted copies z̃ (n, B, H) and ‖W_j‖² (H,):
    forward:   p_b = (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖², per (B, H) tile into a
               (B, cdiv(H, BLOCK_H)) buffer that one small sum finishes (no atomics)
    backward:  dz = (2/n) g_b ‖W_j‖² φ''(z) Σ_s Δ,  dz̃ = −(2/n) g_b ‖W_j‖² φ''(z̃) Δ,
               d‖W_j‖² = (1/n) Σ_b g_b Σ_s Δ² per (B tile) into a (cdiv(B, BLOCK_B), H) buffer
with Δ = φ'(z) − φ'(z̃). φ'(z) of a tile is computed once for its n copies.
Inputs are float32 or float64 (the callers promote half precision first).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .activations import curvature_from_code, forward_and_slope
from .tuning import HESSIAN_CONFIG

BLOCK_B = HESSIAN_CONFIG.kwargs["BLOCK_B"]
BLOCK_H = HESSIAN_CONFIG.kwargs["BLOCK_H"]


@triton.jit
def _hessian_forward_kernel(
    preact_ptr, noisy_ptr, row_norms_sq_ptr, partial_ptr,
    COPIES, B, H, COPY_STRIDE,
    ACTIVATION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    tile_b = tl.program_id(0)
    tile_h = tl.program_id(1)
    offs_b = tile_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (offs_b < B)[:, None] & (offs_h < H)[None, :]
    index = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    _, slope = forward_and_slope(tl.load(preact_ptr + index, mask=mask, other=0.0), ACTIVATION)
    gap_sq = tl.zeros((BLOCK_B, BLOCK_H), dtype=slope.dtype)
    noisy_ptrs = noisy_ptr + index
    for _ in range(0, COPIES):
        _, noisy_slope = forward_and_slope(tl.load(noisy_ptrs, mask=mask, other=0.0), ACTIVATION)
        gap = slope - noisy_slope
        gap_sq += gap * gap
        noisy_ptrs += COPY_STRIDE
    row_norms_sq = tl.load(row_norms_sq_ptr + offs_h, mask=offs_h < H, other=0.0)
    contribution = tl.where(mask, gap_sq * row_norms_sq[None, :], 0.0)
    tl.store(partial_ptr + offs_b.to(tl.int64) * tl.num_programs(1) + tile_h, tl.sum(contribution, axis=1),
             mask=offs_b < B)  # fmt: skip


@triton.jit
def _hessian_backward_kernel(
    grad_ptr, grad_stride, preact_ptr, noisy_ptr, row_norms_sq_ptr,
    grad_preact_ptr, grad_noisy_ptr, partial_ptr,
    COPIES, B, H, COPY_STRIDE,
    NEED_PREACT: tl.constexpr, NEED_NOISY: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    tile_b = tl.program_id(0)
    tile_h = tl.program_id(1)
    offs_b = tile_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_h = offs_h < H
    mask = mask_b[:, None] & mask_h[None, :]
    index = offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    code, slope = forward_and_slope(tl.load(preact_ptr + index, mask=mask, other=0.0), ACTIVATION)
    grad_b = tl.load(grad_ptr + offs_b.to(tl.int64) * grad_stride, mask=mask_b, other=0.0).to(slope.dtype)
    row_norms_sq = tl.load(row_norms_sq_ptr + offs_h, mask=mask_h, other=0.0)
    # Tensor first: a scalar 2.0 / COPIES would be computed in float32 even for float64 inputs.
    scale = grad_b[:, None] * row_norms_sq[None, :] * 2.0 / COPIES
    gap_sum = tl.zeros((BLOCK_B, BLOCK_H), dtype=slope.dtype)
    gap_sq = tl.zeros((BLOCK_B, BLOCK_H), dtype=slope.dtype)
    noisy_ptrs = noisy_ptr + index
    grad_noisy_ptrs = grad_noisy_ptr + index
    for _ in range(0, COPIES):
        noisy_code, noisy_slope = forward_and_slope(tl.load(noisy_ptrs, mask=mask, other=0.0), ACTIVATION)
        gap = slope - noisy_slope
        if NEED_NOISY:
            grad_noisy = -scale * curvature_from_code(noisy_code, noisy_slope, ACTIVATION) * gap
            tl.store(grad_noisy_ptrs, grad_noisy, mask=mask)
        gap_sum += gap
        gap_sq += gap * gap
        noisy_ptrs += COPY_STRIDE
        grad_noisy_ptrs += COPY_STRIDE
    if NEED_PREACT:
        tl.store(
            grad_preact_ptr + index, scale * curvature_from_code(code, slope, ACTIVATION) * gap_sum, mask=mask
        )
    unit_sum = tl.sum(tl.where(mask, grad_b[:, None] * gap_sq, 0.0), axis=0)
    tl.store(partial_ptr + tile_b.to(tl.int64) * H + offs_h, unit_sum, mask=mask_h)


def _grid(batch: int, hidden: int) -> tuple[int, int]:
    return triton.cdiv(batch, BLOCK_B), triton.cdiv(hidden, BLOCK_H)


def hessian_forward(preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation_id: int) -> Tensor:
    """p (B,) of CAE+H from z (B, H), z̃ (n, B, H), ‖W_j‖² (H,)."""
    preact, noisy_preact, row_norms_sq = (
        preact.contiguous(),
        noisy_preact.contiguous(),
        row_norms_sq.contiguous(),
    )
    copies, (batch, hidden) = noisy_preact.shape[0], preact.shape
    if batch == 0 or hidden == 0 or copies == 0:
        return preact.new_zeros(batch)
    grid = _grid(batch, hidden)
    partial = preact.new_empty((batch, grid[1]))
    _hessian_forward_kernel[grid](
        preact, noisy_preact, row_norms_sq, partial, copies, batch, hidden, batch * hidden,
        ACTIVATION=activation_id, BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, num_warps=HESSIAN_CONFIG.num_warps,
    )  # fmt: skip
    return partial.sum(dim=1) / copies


def hessian_backward(
    grad_penalty: Tensor,
    preact: Tensor,
    noisy_preact: Tensor,
    row_norms_sq: Tensor,
    activation_id: int,
    output_mask: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """(dz (B, H), dz̃ (n, B, H), d‖W_j‖² (H,)), None where output_mask is False."""
    need_preact, need_noisy, need_norms = output_mask
    preact, noisy_preact, row_norms_sq = (
        preact.contiguous(),
        noisy_preact.contiguous(),
        row_norms_sq.contiguous(),
    )
    copies, (batch, hidden) = noisy_preact.shape[0], preact.shape
    grad_preact = torch.zeros_like(preact) if need_preact else None
    grad_noisy = torch.zeros_like(noisy_preact) if need_noisy else None
    grid = _grid(batch, hidden)
    partial = preact.new_zeros((grid[0], hidden))
    if batch and hidden and copies:
        grad_penalty = grad_penalty.to(preact.dtype)
        _hessian_backward_kernel[grid](
            grad_penalty, grad_penalty.stride(0), preact, noisy_preact, row_norms_sq,
            grad_preact if need_preact else preact, grad_noisy if need_noisy else preact, partial,
            copies, batch, hidden, batch * hidden,
            NEED_PREACT=need_preact, NEED_NOISY=need_noisy, ACTIVATION=activation_id,
            BLOCK_B=BLOCK_B, BLOCK_H=BLOCK_H, num_warps=HESSIAN_CONFIG.num_warps,
        )  # fmt: skip
    grad_norms = partial.sum(dim=0) / max(copies, 1) if need_norms else None
    return grad_preact, grad_noisy, grad_norms
