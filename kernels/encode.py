"""Triton kernels of the contractive encoder and their launchers (no autograd here).

Forward, one kernel:  z = x Wᵀ + b tiled over (B, H); the K-loop also sums
    ‖W_j‖² from the W tiles it loads, and the epilogue, in registers, writes
    h = φ(z) and each tile's share of p_b = Σ_j φ'(z_bj)² ‖W_j‖² into a
    (B, cdiv(H, BLOCK_H)) buffer that one small sum finishes: no float
    atomics, so two runs are bitwise equal.

Backward, two kernels, no B×H temporary: dz = g_h φ' + 2 g_p φ' φ'' ‖W_j‖² is
    recomputed from h inside the loads of both GEMMs,
    dx = dz W       tiled over (B, D), reduction over H;
    dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W   tiled over (H, D), reduction over B,
    whose loop over the batch also sums db = Σ_b dz and the row scale.

Shapes: x (B, D), W (H, D), b (H,), h (B, H), p (B,), g_h (B, H), g_p (B,).
Offsets are int64 where a product of sizes can pass 2³¹.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._precision import acc_dtype as accumulation_dtype
from .._precision import cuda_fp32_uses_tf32
from .activations import forward_and_slope, grad_preactivation
from .tuning import (
    INTERPRETED,
    forward_block_h,
    forward_configs,
    forward_prune,
    grad_input_configs,
    grad_input_prune,
    grad_weight_configs,
    grad_weight_prune,
)


@triton.jit
def _grouped_tile(pid, rows, cols, BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, GROUP: tl.constexpr):
    """Map a linear program id to a (row tile, column tile), visiting GROUP row
    tiles per column sweep so the column operand's tiles are reused from L2."""
    num_row_tiles = tl.cdiv(rows, BLOCK_ROWS)
    num_col_tiles = tl.cdiv(cols, BLOCK_COLS)
    tiles_per_group = GROUP * num_col_tiles
    group = pid // tiles_per_group
    first_row_tile = group * GROUP
    group_rows = tl.minimum(num_row_tiles - first_row_tile, GROUP)
    row_tile = first_row_tile + (pid % tiles_per_group) % group_rows
    col_tile = (pid % tiles_per_group) // group_rows
    return row_tile, col_tile


@triton.autotune(
    configs=forward_configs(),
    key=["B", "D", "H", "ACTIVATION", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": forward_prune},
)
@triton.heuristics({"BLOCK_H": lambda args: forward_block_h(args["H"])})
@triton.jit
def _encode_forward_kernel(
    x_ptr, weight_ptr, bias_ptr, code_ptr, penalty_partial_ptr, row_norms_sq_ptr,
    B, D, H,
    stride_xb, stride_xd, stride_wh, stride_wd,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ACC_FP64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_B: tl.constexpr,
):  # fmt: skip
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    tile_b, tile_h = _grouped_tile(tl.program_id(0), B, H, BLOCK_B, BLOCK_H, GROUP_B)
    offs_b = tile_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_h = offs_h < H
    x_ptrs = x_ptr + offs_b[:, None].to(tl.int64) * stride_xb + offs_k[None, :] * stride_xd
    w_ptrs = weight_ptr + offs_h[:, None].to(tl.int64) * stride_wh + offs_k[None, :] * stride_wd

    preact = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    row_norms_sq = tl.zeros((BLOCK_H,), dtype=acc_dtype)
    # range(0, D, BLOCK_K) rather than over tl.cdiv(D, BLOCK_K): the Triton 3.6 interpreter
    # cannot iterate over a tl.cdiv result; compiled Triton lowers both alike.
    for k0 in range(0, D, BLOCK_K):
        mask_k = offs_k < D - k0
        x = tl.load(x_ptrs, mask=mask_b[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_h[:, None] & mask_k[None, :], other=0.0)
        preact = tl.dot(x, tl.trans(w), preact, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)
        # ‖W_j‖² from the tile already in registers: no second pass over W.
        w_wide = w.to(acc_dtype)
        row_norms_sq += tl.sum(w_wide * w_wide, axis=1)
        x_ptrs += BLOCK_K * stride_xd
        w_ptrs += BLOCK_K * stride_wd

    if HAS_BIAS:
        preact += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(acc_dtype)[None, :]
    code, slope = forward_and_slope(preact, ACTIVATION)
    mask = mask_b[:, None] & mask_h[None, :]
    code_ptrs = code_ptr + offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    tl.store(code_ptrs, code.to(code_ptr.dtype.element_ty), mask=mask)
    # Padded columns have ‖W_j‖² = 0, but mask them so NaN-free padding is not assumed.
    contribution = tl.where(mask, slope * slope * row_norms_sq[None, :], 0.0)
    num_tiles_h = tl.cdiv(H, BLOCK_H)
    tl.store(
        penalty_partial_ptr + offs_b.to(tl.int64) * num_tiles_h + tile_h,
        tl.sum(contribution, axis=1),
        mask=mask_b,
    )
    if tile_b == 0:
        tl.store(row_norms_sq_ptr + offs_h, row_norms_sq, mask=mask_h)


@triton.autotune(
    configs=grad_input_configs(),
    key=["B", "D", "H", "ACTIVATION", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": grad_input_prune},
)
@triton.jit
def _grad_input_kernel(
    grad_code_ptr, grad_penalty_ptr, code_ptr, row_norms_sq_ptr, weight_ptr, grad_x_ptr,
    B, D, H,
    stride_gcb, stride_gpb, stride_wh, stride_wd,
    HAS_GRAD_CODE: tl.constexpr, HAS_GRAD_PENALTY: tl.constexpr, ACTIVATION: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, GROUP_B: tl.constexpr,
):  # fmt: skip
    """dx = dz W, with dz recomputed from h tile by tile."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    tile_b, tile_d = _grouped_tile(tl.program_id(0), B, D, BLOCK_B, BLOCK_D, GROUP_B)
    offs_b = tile_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_h = tl.arange(0, BLOCK_H)
    mask_b = offs_b < B
    mask_d = offs_d < D
    rows_b = offs_b[:, None].to(tl.int64)
    if HAS_GRAD_PENALTY:
        grad_penalty = tl.load(grad_penalty_ptr + offs_b.to(tl.int64) * stride_gpb, mask=mask_b, other=0.0)
        grad_penalty = grad_penalty.to(acc_dtype)[:, None]
    else:
        grad_penalty = 0.0

    grad_x = tl.zeros((BLOCK_B, BLOCK_D), dtype=acc_dtype)
    for h0 in range(0, H, BLOCK_H):
        cols = h0 + offs_h
        mask_h = cols < H
        mask = mask_b[:, None] & mask_h[None, :]
        code = tl.load(code_ptr + rows_b * H + cols[None, :], mask=mask, other=0.0).to(acc_dtype)
        if HAS_GRAD_CODE:
            grad_code = tl.load(grad_code_ptr + rows_b * stride_gcb + cols[None, :], mask=mask, other=0.0)
            grad_code = grad_code.to(acc_dtype)
        else:
            grad_code = 0.0
        row_norms_sq = tl.load(row_norms_sq_ptr + cols, mask=mask_h, other=0.0).to(acc_dtype)[None, :]
        grad_preact, _ = grad_preactivation(grad_code, grad_penalty, code, row_norms_sq, ACTIVATION)
        grad_preact = tl.where(mask, grad_preact, 0.0)
        w = tl.load(
            weight_ptr + cols[:, None].to(tl.int64) * stride_wh + offs_d[None, :] * stride_wd,
            mask=mask_h[:, None] & mask_d[None, :],
            other=0.0,
        )
        grad_x = tl.dot(
            grad_preact.to(w.dtype), w, grad_x, input_precision=INPUT_PRECISION, out_dtype=acc_dtype
        )
    tl.store(
        grad_x_ptr + rows_b * D + offs_d[None, :],
        grad_x.to(grad_x_ptr.dtype.element_ty),
        mask=mask_b[:, None] & mask_d[None, :],
    )


@triton.autotune(
    configs=grad_weight_configs(),
    key=["B", "D", "H", "ACTIVATION", "INPUT_PRECISION"],
    prune_configs_by={"early_config_prune": grad_weight_prune},
)
@triton.jit
def _grad_weight_kernel(
    grad_code_ptr, grad_penalty_ptr, code_ptr, row_norms_sq_ptr, x_ptr, weight_ptr,
    grad_weight_ptr, grad_bias_ptr,
    B, D, H,
    stride_gcb, stride_gpb, stride_xb, stride_xd, stride_wh, stride_wd,
    HAS_GRAD_CODE: tl.constexpr, HAS_GRAD_PENALTY: tl.constexpr, ACTIVATION: tl.constexpr,
    NEED_GRAD_WEIGHT: tl.constexpr, NEED_GRAD_BIAS: tl.constexpr,
    INPUT_PRECISION: tl.constexpr, ACC_FP64: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_B: tl.constexpr, GROUP_H: tl.constexpr,
):  # fmt: skip
    """dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W and db = Σ_b dz, with dz recomputed
    from h; the loop over the batch also accumulates both per-unit sums."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    tile_h, tile_d = _grouped_tile(tl.program_id(0), H, D, BLOCK_H, BLOCK_D, GROUP_H)
    offs_h = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_d = tile_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_b = tl.arange(0, BLOCK_B)
    mask_h = offs_h < H
    mask_d = offs_d < D
    row_norms_sq = tl.load(row_norms_sq_ptr + offs_h, mask=mask_h, other=0.0).to(acc_dtype)[None, :]

    grad_weight = tl.zeros((BLOCK_H, BLOCK_D), dtype=acc_dtype)
    grad_bias = tl.zeros((BLOCK_H,), dtype=acc_dtype)
    row_scale = tl.zeros((BLOCK_H,), dtype=acc_dtype)
    for b0 in range(0, B, BLOCK_B):
        rows = b0 + offs_b
        mask_b = rows < B
        rows_b = rows[:, None].to(tl.int64)
        mask = mask_b[:, None] & mask_h[None, :]
        code = tl.load(code_ptr + rows_b * H + offs_h[None, :], mask=mask, other=0.0).to(acc_dtype)
        if HAS_GRAD_CODE:
            grad_code = tl.load(grad_code_ptr + rows_b * stride_gcb + offs_h[None, :], mask=mask, other=0.0)
            grad_code = grad_code.to(acc_dtype)
        else:
            grad_code = 0.0
        if HAS_GRAD_PENALTY:
            grad_penalty = tl.load(grad_penalty_ptr + rows.to(tl.int64) * stride_gpb, mask=mask_b, other=0.0)
            grad_penalty = grad_penalty.to(acc_dtype)[:, None]
        else:
            grad_penalty = 0.0
        grad_preact, scale_term = grad_preactivation(grad_code, grad_penalty, code, row_norms_sq, ACTIVATION)
        grad_preact = tl.where(mask, grad_preact, 0.0)
        grad_bias += tl.sum(grad_preact, axis=0)
        if HAS_GRAD_PENALTY:
            row_scale += tl.sum(tl.where(mask, scale_term, 0.0), axis=0)
        if NEED_GRAD_WEIGHT:
            x = tl.load(
                x_ptr + rows_b * stride_xb + offs_d[None, :] * stride_xd,
                mask=mask_b[:, None] & mask_d[None, :],
                other=0.0,
            )
            grad_weight = tl.dot(
                tl.trans(grad_preact.to(x.dtype)),
                x,
                grad_weight,
                input_precision=INPUT_PRECISION,
                out_dtype=acc_dtype,
            )

    if NEED_GRAD_WEIGHT:
        mask_hd = mask_h[:, None] & mask_d[None, :]
        if HAS_GRAD_PENALTY:
            w = tl.load(
                weight_ptr + offs_h[:, None].to(tl.int64) * stride_wh + offs_d[None, :] * stride_wd,
                mask=mask_hd,
                other=0.0,
            )
            grad_weight += 2.0 * row_scale[:, None] * w.to(acc_dtype)
        tl.store(
            grad_weight_ptr + offs_h[:, None].to(tl.int64) * D + offs_d[None, :],
            grad_weight.to(grad_weight_ptr.dtype.element_ty),
            mask=mask_hd,
        )
    if NEED_GRAD_BIAS:
        if tile_d == 0:
            tl.store(grad_bias_ptr + offs_h, grad_bias.to(grad_bias_ptr.dtype.element_ty), mask=mask_h)


def _input_precision(dtype: torch.dtype) -> str:
    """PyTorch's float32 matmul setting decides between exact fp32 and TF32."""
    if dtype == torch.float32 and not INTERPRETED and cuda_fp32_uses_tf32():
        return "tf32"
    return "ieee"


def encode_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the fused forward. Returns h (B, H), p (B,) and ‖W_j‖² (H,)."""
    batch, in_features = x.shape
    hidden = weight.shape[0]
    acc = accumulation_dtype(x.dtype)
    code = torch.empty((batch, hidden), dtype=x.dtype, device=x.device)
    row_norms_sq = torch.empty((hidden,), dtype=acc, device=x.device)
    num_tiles_h = triton.cdiv(hidden, forward_block_h(hidden))
    penalty_partial = torch.empty((batch, num_tiles_h), dtype=acc, device=x.device)
    if batch == 0 or hidden == 0:
        row_norms_sq.copy_(weight.to(acc).pow(2).sum(dim=1))
        return code, x.new_zeros((batch,), dtype=acc), row_norms_sq
    if bias is not None:
        bias = bias.contiguous()  # H elements; the kernel indexes it densely

    def grid(meta):
        return (triton.cdiv(batch, meta["BLOCK_B"]) * triton.cdiv(hidden, meta["BLOCK_H"]),)

    _encode_forward_kernel[grid](
        x, weight, bias if bias is not None else x, code, penalty_partial, row_norms_sq,
        batch, in_features, hidden,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
        HAS_BIAS=bias is not None, ACTIVATION=activation_id, INPUT_PRECISION=_input_precision(x.dtype),
        ACC_FP64=acc == torch.float64,
    )  # fmt: skip
    penalty = penalty_partial.view(batch) if num_tiles_h == 1 else penalty_partial.sum(dim=1)
    return code, penalty, row_norms_sq


def encode_backward(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    x: Tensor,
    weight: Tensor,
    code: Tensor,
    row_norms_sq: Tensor,
    activation_id: int,
    output_mask: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Launch the fused backward. Returns (dx, dW, db), None where output_mask is False."""
    need_x, need_weight, need_bias = output_mask
    batch, in_features = x.shape
    hidden = weight.shape[0]
    acc = accumulation_dtype(x.dtype)
    code = code.contiguous()
    if grad_code is not None and grad_code.stride(1) != 1:
        grad_code = grad_code.contiguous()
    flags = {
        "HAS_GRAD_CODE": grad_code is not None,
        "HAS_GRAD_PENALTY": grad_penalty is not None,
        "ACTIVATION": activation_id,
        "INPUT_PRECISION": _input_precision(x.dtype),
        "ACC_FP64": acc == torch.float64,
    }
    # Unused pointers get a valid tensor; the constexpr flags keep them unread.
    grad_code_arg = grad_code if grad_code is not None else code
    grad_penalty_arg = grad_penalty if grad_penalty is not None else row_norms_sq
    stride_gcb = grad_code_arg.stride(0)
    stride_gpb = grad_penalty_arg.stride(0) if grad_penalty is not None else 0

    grad_x = grad_weight = grad_bias = None
    if need_x:
        grad_x = torch.empty((batch, in_features), dtype=x.dtype, device=x.device)
        if batch and in_features:
            if hidden == 0:
                grad_x.zero_()
            else:

                def grid_x(meta):
                    return (triton.cdiv(batch, meta["BLOCK_B"]) * triton.cdiv(in_features, meta["BLOCK_D"]),)

                _grad_input_kernel[grid_x](
                    grad_code_arg, grad_penalty_arg, code, row_norms_sq, weight, grad_x,
                    batch, in_features, hidden,
                    stride_gcb, stride_gpb, weight.stride(0), weight.stride(1),
                    **flags,
                )  # fmt: skip
    if need_weight or need_bias:
        grad_weight = (
            torch.empty((hidden, in_features), dtype=x.dtype, device=x.device) if need_weight else None
        )
        grad_bias = torch.empty((hidden,), dtype=x.dtype, device=x.device) if need_bias else None
        if hidden:
            # With only db asked for, one column of tiles suffices (the dot is compiled out).
            columns = in_features if need_weight else 1

            def grid_w(meta):
                return (triton.cdiv(hidden, meta["BLOCK_H"]) * triton.cdiv(max(columns, 1), meta["BLOCK_D"]),)

            _grad_weight_kernel[grid_w](
                grad_code_arg, grad_penalty_arg, code, row_norms_sq, x, weight,
                code if grad_weight is None else grad_weight, code if grad_bias is None else grad_bias,
                batch, columns, hidden,
                stride_gcb, stride_gpb, x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
                NEED_GRAD_WEIGHT=need_weight, NEED_GRAD_BIAS=need_bias, **flags,
            )  # fmt: skip
    return grad_x, grad_weight, grad_bias
