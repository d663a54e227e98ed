"""Triton kernels of the contractive encoder and their launchers (no autograd here).

Forward, two kernels:
    ‖W_j‖²   one pass over W (``_row_norms_sq_kernel``), once per call;
    z = x Wᵀ + b tiled over (B, H) (``_encode_forward_kernel``), whose epilogue,
    in registers, writes h = φ(z) and each tile's share of
    p_b = Σ_j φ'(z_bj)² ‖W_j‖² into a (B, cdiv(H, BLOCK_H)) buffer that one small
    sum finishes (none when H fits one tile): no float atomics.

Backward: ``_grad_preact_kernel`` writes dz = g_h φ' + 2 g_p φ' φ'' ‖W_j‖² once
    (the one B×H temporary, in the inputs' dtype) with, per fixed chunk of rows,
    the per-unit sums Σ_b dz and Σ_b g_p φ'²; then cuBLAS (torch.mm, honouring the
    TF32 setting) finishes dx = dz W and dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W, and
    db = Σ_b dz. DEVELOPERS.md says why this replaced a fused dx/dW GEMM.

Bitwise reproducible across processes: the forward's configs share BLOCK_K
and BLOCK_H (kernels/tuning.py), and the elementwise kernels' blocks and
chunks depend on the shape alone. Offsets are int64 wherever a product of an
index and a stride can pass 2³¹ (transposed views of large operands).

Shapes: x (B, D), W (H, D), b (H,), h (B, H), p (B,), g_h (B, H), g_p (B,).
"""

from __future__ import annotations

import contextlib
import threading

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._precision import acc_dtype as accumulation_dtype
from .._precision import cuda_fp32_uses_tf32
from .activations import forward_and_slope, grad_preactivation
from .tuning import (
    GRAD_PREACT_CONFIG,
    INTERPRETED,
    ROW_NORMS_CONFIG,
    batch_bucket,
    forward_block_h,
    forward_block_k,
    forward_configs,
    forward_prune,
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


@triton.jit
def _row_norms_sq_kernel(
    weight_ptr, row_norms_sq_ptr,
    D, H,
    stride_wh, stride_wd,
    ACC_FP64: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """‖W_j‖² for BLOCK_R rows of W, accumulated in a fixed order."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_d = tl.arange(0, BLOCK_D)
    mask_r = offs_r < H
    rows = weight_ptr + offs_r[:, None].to(tl.int64) * stride_wh
    sums = tl.zeros((BLOCK_R, BLOCK_D), dtype=acc_dtype)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + offs_d
        w = tl.load(
            rows + cols[None, :].to(tl.int64) * stride_wd,
            mask=mask_r[:, None] & (cols < D)[None, :],
            other=0.0,
        )
        w = w.to(acc_dtype)
        sums += w * w
    tl.store(row_norms_sq_ptr + offs_r, tl.sum(sums, axis=1), mask=mask_r)


@triton.autotune(
    configs=forward_configs(),
    key=["B_BUCKET", "D_ROWS", "H", "ACTIVATION", "INPUT_PRECISION", "ROW_ALIGN"],
    prune_configs_by={"early_config_prune": forward_prune},
)
@triton.heuristics(
    {
        "BLOCK_H": lambda args: forward_block_h(args["H"]),
        "BLOCK_K": lambda args: forward_block_k(args["x_ptr"].element_size(), args["INPUT_PRECISION"]),
    }
)
@triton.jit
def _encode_forward_kernel(
    x_ptr, weight_ptr, bias_ptr, row_norms_sq_ptr, code_ptr, penalty_partial_ptr,
    B, D_ROWS, H, B_BUCKET,
    stride_xb, stride_xd, stride_wh, stride_wd,
    HAS_BIAS: tl.constexpr, ACTIVATION: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ACC_FP64: tl.constexpr, ROW_ALIGN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_B: tl.constexpr,
):  # fmt: skip
    """h = φ(x Wᵀ + b) for a (BLOCK_B, BLOCK_H) tile and its share of p_b.

    ROW_ALIGN (a power of two ≤ 16) divides D and both row strides, as the
    launcher checked, and D arrives as D_ROWS = D / ROW_ALIGN: Triton then knows
    that rows of x and W start 16-byte aligned and that the mask along K is
    constant over ROW_ALIGN elements, so 16-bit inputs keep vectorized,
    pipelined loads when D is a multiple of 8 (D = 1000, say), which it
    otherwise proves only for multiples of 16.
    """
    D = D_ROWS * ROW_ALIGN
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    tile_b, tile_h = _grouped_tile(tl.program_id(0), B, H, BLOCK_B, BLOCK_H, GROUP_B)
    offs_b = tile_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_h = tile_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_k = tl.arange(0, BLOCK_K)
    mask_b = offs_b < B
    mask_h = offs_h < H
    x_rows = x_ptr + tl.multiple_of(offs_b[:, None].to(tl.int64) * stride_xb, [ROW_ALIGN, 1])
    w_rows = weight_ptr + tl.multiple_of(offs_h[:, None].to(tl.int64) * stride_wh, [ROW_ALIGN, 1])

    preact = tl.zeros((BLOCK_B, BLOCK_H), dtype=acc_dtype)
    for k0 in range(0, D, BLOCK_K):
        cols = (k0 + offs_k)[None, :]
        mask_k = cols < D
        x = tl.load(x_rows + cols.to(tl.int64) * stride_xd, mask=mask_b[:, None] & mask_k, other=0.0)
        w = tl.load(w_rows + cols.to(tl.int64) * stride_wd, mask=mask_h[:, None] & mask_k, other=0.0)
        preact = tl.dot(x, tl.trans(w), preact, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)

    if HAS_BIAS:
        preact += tl.load(bias_ptr + offs_h, mask=mask_h, other=0.0).to(acc_dtype)[None, :]
    code, slope = forward_and_slope(preact, ACTIVATION)
    mask = mask_b[:, None] & mask_h[None, :]
    code_ptrs = code_ptr + offs_b[:, None].to(tl.int64) * H + offs_h[None, :]
    tl.store(code_ptrs, code.to(code_ptr.dtype.element_ty), mask=mask)
    row_norms_sq = tl.load(row_norms_sq_ptr + offs_h, mask=mask_h, other=0.0)
    # Padded columns have ‖W_j‖² = 0, but mask them so NaN-free padding is not assumed.
    contribution = tl.where(mask, slope * slope * row_norms_sq[None, :], 0.0)
    tl.store(
        penalty_partial_ptr + offs_b.to(tl.int64) * tl.cdiv(H, BLOCK_H) + tile_h,
        tl.sum(contribution, axis=1),
        mask=mask_b,
    )


@triton.jit
def _grad_preact_kernel(
    grad_code_ptr, grad_penalty_ptr, code_ptr, row_norms_sq_ptr, grad_preact_ptr, partials_ptr,
    B, H, CHUNK_ROWS,
    stride_gcb, stride_gpb,
    HAS_GRAD_CODE: tl.constexpr, HAS_GRAD_PENALTY: tl.constexpr, ACTIVATION: tl.constexpr,
    ACC_FP64: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    """dz for one chunk of CHUNK_ROWS rows × BLOCK_H units, and the chunk's
    per-unit sums partials[chunk] = (Σ dz, Σ g_p φ'²)."""
    acc_dtype = tl.float64 if ACC_FP64 else tl.float32
    offs_h = tl.program_id(0) * BLOCK_H + tl.arange(0, BLOCK_H)
    chunk = tl.program_id(1)
    mask_h = offs_h < H
    row_norms_sq = tl.load(row_norms_sq_ptr + offs_h, mask=mask_h, other=0.0).to(acc_dtype)[None, :]
    grad_bias_sum = tl.zeros((BLOCK_H,), dtype=acc_dtype)
    row_scale_sum = tl.zeros((BLOCK_H,), dtype=acc_dtype)
    first_row = chunk.to(tl.int64) * CHUNK_ROWS
    for r0 in range(0, CHUNK_ROWS, BLOCK_B):
        offs_r = r0 + tl.arange(0, BLOCK_B)
        rows = first_row + offs_r
        mask_b = (offs_r < CHUNK_ROWS) & (rows < B)
        mask = mask_b[:, None] & mask_h[None, :]
        index = rows[:, None] * H + offs_h[None, :]
        code = tl.load(code_ptr + index, mask=mask, other=0.0).to(acc_dtype)
        if HAS_GRAD_CODE:
            grad_code = tl.load(
                grad_code_ptr + rows[:, None] * stride_gcb + offs_h[None, :], mask=mask, other=0.0
            )
            grad_code = grad_code.to(acc_dtype)
        else:
            grad_code = 0.0
        if HAS_GRAD_PENALTY:
            grad_penalty = tl.load(grad_penalty_ptr + rows * stride_gpb, mask=mask_b, other=0.0)
            grad_penalty = grad_penalty.to(acc_dtype)[:, None]
        else:
            grad_penalty = 0.0
        grad_preact, scale_term = grad_preactivation(grad_code, grad_penalty, code, row_norms_sq, ACTIVATION)
        grad_preact = tl.where(mask, grad_preact, 0.0)
        tl.store(grad_preact_ptr + index, grad_preact.to(grad_preact_ptr.dtype.element_ty), mask=mask)
        grad_bias_sum += tl.sum(grad_preact, axis=0)
        if HAS_GRAD_PENALTY:
            row_scale_sum += tl.sum(tl.where(mask, scale_term, 0.0), axis=0)
    partial = partials_ptr + chunk.to(tl.int64) * 2 * H + offs_h
    tl.store(partial, grad_bias_sum, mask=mask_h)
    tl.store(partial + H, row_scale_sum, mask=mask_h)


def _input_precision(dtype: torch.dtype) -> str:
    """PyTorch's float32 matmul setting decides between exact fp32 and TF32."""
    if dtype == torch.float32 and not INTERPRETED and cuda_fp32_uses_tf32():
        return "tf32"
    return "ieee"


def _row_alignment(*sizes: int) -> int:
    """The largest power of two ≤ 16 that divides every size."""
    alignment = 16
    while alignment > 1 and any(s % alignment for s in sizes):
        alignment //= 2
    return alignment


# Triton's autotuner is not thread-safe while it times configs; launches are
# asynchronous, so holding this around them costs nothing measurable.
_LAUNCH_LOCK = threading.Lock()


def _on_device(t: Tensor):
    """Launch on t's GPU even when another one is current (Triton launches on the current device)."""
    if t.is_cuda and t.device.index != torch.cuda.current_device():
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


def backward_chunk_rows(batch: int) -> int:
    """Rows per chunk of the backward's per-unit sums: a function of B alone, the
    same rule as the C++ kernels (csrc/include/fastcae/reduction.h)."""
    return max(16, (batch + 255) // 256)


def row_norms_sq(weight: Tensor) -> Tensor:
    """‖W_j‖² (H,) in the accumulation dtype."""
    hidden, in_features = weight.shape
    out = torch.empty((hidden,), dtype=accumulation_dtype(weight.dtype), device=weight.device)
    if hidden:
        config = ROW_NORMS_CONFIG
        _row_norms_sq_kernel[(triton.cdiv(hidden, config.kwargs["BLOCK_R"]),)](
            weight, out, in_features, hidden, weight.stride(0), weight.stride(1),
            ACC_FP64=out.dtype == torch.float64, num_warps=config.num_warps, **config.kwargs,
        )  # fmt: skip
    return out


def encode_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, activation_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Launch the fused forward. Returns h (B, H), p (B,) and ‖W_j‖² (H,)."""
    batch, in_features = x.shape
    hidden = weight.shape[0]
    acc = accumulation_dtype(x.dtype)
    with _on_device(x), _LAUNCH_LOCK:
        norms = row_norms_sq(weight)
        code = torch.empty((batch, hidden), dtype=x.dtype, device=x.device)
        num_tiles_h = triton.cdiv(hidden, forward_block_h(hidden))
        penalty_partial = torch.empty((batch, num_tiles_h), dtype=acc, device=x.device)
        if batch == 0 or hidden == 0:
            return code, x.new_zeros((batch,), dtype=acc), norms
        if bias is not None:
            bias = bias.contiguous()  # H elements; the kernel indexes it densely

        def grid(meta):
            return (triton.cdiv(batch, meta["BLOCK_B"]) * triton.cdiv(hidden, meta["BLOCK_H"]),)

        row_align = _row_alignment(in_features, x.stride(0), weight.stride(0))
        _encode_forward_kernel[grid](
            x, weight, bias if bias is not None else x, norms, code, penalty_partial,
            batch, in_features // row_align, hidden, batch_bucket(batch),
            x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
            HAS_BIAS=bias is not None, ACTIVATION=activation_id, INPUT_PRECISION=_input_precision(x.dtype),
            ACC_FP64=acc == torch.float64, ROW_ALIGN=row_align,
        )  # fmt: skip
        penalty = penalty_partial.view(batch) if num_tiles_h == 1 else penalty_partial.sum(dim=1)
    return code, penalty, norms


def grad_preact_pass(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    code: Tensor,
    row_norms_sq: Tensor,
    activation_id: int,
) -> tuple[Tensor, Tensor]:
    """The backward's fused pass (also the activate op's): dz (B, H) in code's dtype and
    the per-unit sums (2, H) = (Σ_b dz, Σ_b g_p φ'²), chunks added in order."""
    batch, hidden = code.shape
    acc = row_norms_sq.dtype
    code = code.contiguous()
    if grad_code is not None and grad_code.stride(1) != 1:
        grad_code = grad_code.contiguous()
    chunk_rows = backward_chunk_rows(batch)
    num_chunks = triton.cdiv(batch, chunk_rows)
    grad_preact = torch.empty_like(code)
    partials = torch.empty((num_chunks, 2, hidden), dtype=acc, device=code.device)
    if batch and hidden:
        config = GRAD_PREACT_CONFIG
        _grad_preact_kernel[(triton.cdiv(hidden, config.kwargs["BLOCK_H"]), num_chunks)](
            grad_code if grad_code is not None else code,  # unread without HAS_GRAD_CODE
            grad_penalty if grad_penalty is not None else row_norms_sq,  # likewise
            code, row_norms_sq, grad_preact, partials,
            batch, hidden, chunk_rows,
            grad_code.stride(0) if grad_code is not None else 0,
            grad_penalty.stride(0) if grad_penalty is not None else 0,
            HAS_GRAD_CODE=grad_code is not None, HAS_GRAD_PENALTY=grad_penalty is not None,
            ACTIVATION=activation_id, ACC_FP64=acc == torch.float64,
            num_warps=config.num_warps, **config.kwargs,
        )  # fmt: skip
    return grad_preact, partials.sum(dim=0)


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
    """Launch the backward. Returns (dx, dW, db), None where output_mask is False."""
    need_x, need_weight, need_bias = output_mask
    with _on_device(x):
        grad_preact, unit_sums = grad_preact_pass(grad_code, grad_penalty, code, row_norms_sq, activation_id)
        grad_x = grad_preact @ weight if need_x else None
        grad_weight = None
        if need_weight:
            if grad_penalty is not None:
                # cuBLAS accumulates dzᵀ x into the scaled weight (beta = 1): one pass over W.
                scaled = weight * (2 * unit_sums[1]).to(weight.dtype).unsqueeze(1)
                grad_weight = torch.addmm(scaled, grad_preact.t(), x)
            else:
                grad_weight = grad_preact.t() @ x
        grad_bias = unit_sums[0].to(x.dtype) if need_bias else None
    return grad_x, grad_weight, grad_bias
