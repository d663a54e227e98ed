"""The readable closed forms, in plain PyTorch, that every fast path is tested against.

- ``encode_torch``: the "torch" backend, h = φ(x Wᵀ + b) and p_b = Σ_j φ'(z_bj)² ‖W_j‖².
- ``encode_naive``: the "naive" backend, ‖J_b‖²_F of the true (B, H, D) Jacobian.
- ``hessian_torch``: the CAE+H estimate from pre-activations.
- ``activate_torch``: the penalty epilogue on given pre-activations and per-unit
  norms, h = φ(z) and p_b = Σ_u φ'(z_bu)² N_u (the convolutional layer's op).
- The derivatives of the fused ops, written as differentiable PyTorch ops: their
  autograd (fastcae/ops/encode.py, hessian.py) runs these where a graph of the
  gradient is needed (double backward, torch.func transforms) and the fused
  backward kernels otherwise, and their forward-mode rules are these.

Everything here is differentiable to any order through ordinary autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .._precision import acc_dtype
from ..activations import ACTIVATIONS

Grads = tuple[Tensor | None, Tensor | None, Tensor | None]


def encode_torch(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str) -> tuple[Tensor, Tensor]:
    """Closed form of the encoder and its contractive penalty, eagerly.

    z = x Wᵀ + b, h = φ(z), p_b = Σ_j φ'(z_bj)² ‖W_j‖², since the Jacobian of
    sample b is diag(φ'(z_b)) W. Half-precision inputs are promoted to float32
    after the GEMM; h is returned in x's dtype and p in ``acc_dtype``.

    Shapes: x (B, D), weight (H, D), bias (H,) or None -> h (B, H), p (B,).
    """
    act = ACTIVATIONS[activation]
    compute_dtype = acc_dtype(x.dtype)
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
    penalty = jacobian.to(acc_dtype(x.dtype)).pow(2).sum(dim=(1, 2))
    return code, penalty


def encode_backward_closed_form(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    x: Tensor,
    weight: Tensor,
    code: Tensor,
    activation: str,
    output_mask: tuple[bool, bool, bool],
) -> Grads:
    """The encode op's backward from the code h it saved, in differentiable ops:

        dz = g_h φ' + 2 g_p φ' φ'' ‖W_j‖²,  dx = dz W,
        dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W,  db = Σ_b dz

    with φ', φ'' written from h. ‖W_j‖² is recomputed from W (not the op's saved
    copy) so that a second derivative reaches W through it. Computed in the
    accumulation dtype; gradients are returned in the inputs' dtype, None where
    output_mask is False.
    """
    act = ACTIVATIONS[activation]
    compute = acc_dtype(x.dtype)
    h = code.to(compute)
    weight_c = weight.to(compute)
    slope = act.slope_from_code(h)
    grad_preact = torch.zeros_like(h)
    if grad_code is not None:
        grad_preact = grad_preact + grad_code.to(compute) * slope
    if grad_penalty is not None:
        curvature = act.curvature_from_code(h, slope)
        row_norms_sq = weight_c.pow(2).sum(dim=1)
        grad_penalty_c = grad_penalty.to(compute).unsqueeze(1)
        grad_preact = grad_preact + 2 * grad_penalty_c * slope * curvature * row_norms_sq
    need_x, need_weight, need_bias = output_mask
    grad_x = (grad_preact @ weight_c).to(x.dtype) if need_x else None
    grad_weight = None
    if need_weight:
        grad_weight = grad_preact.t() @ x.to(compute)
        if grad_penalty is not None:
            row_scale = 2 * (grad_penalty_c * slope.pow(2)).sum(dim=0)
            grad_weight = grad_weight + row_scale.unsqueeze(1) * weight_c
        grad_weight = grad_weight.to(weight.dtype)
    grad_bias = grad_preact.sum(dim=0).to(x.dtype) if need_bias else None
    return grad_x, grad_weight, grad_bias


def encode_jvp_closed_form(
    x: Tensor,
    weight: Tensor,
    code: Tensor,
    tangents: tuple[Tensor | None, Tensor | None, Tensor | None],
    activation: str,
) -> tuple[Tensor, Tensor]:
    """Forward-mode derivative of (h, p) along tangents (ẋ, Ẇ, ḃ) (None: zero):

    ż = ẋ Wᵀ + x Ẇᵀ + ḃ,  ḣ = φ' ż,
    ṗ_b = Σ_j 2 φ' φ'' ż_bj ‖W_j‖² + φ'² · 2 W_j·Ẇ_j
    """
    x_dot, weight_dot, bias_dot = tangents
    act = ACTIVATIONS[activation]
    compute = acc_dtype(x.dtype)
    h = code.to(compute)
    weight_c = weight.to(compute)
    slope = act.slope_from_code(h)
    curvature = act.curvature_from_code(h, slope)
    preact_dot = torch.zeros_like(h)
    if x_dot is not None:
        preact_dot = preact_dot + x_dot.to(compute) @ weight_c.t()
    if weight_dot is not None:
        preact_dot = preact_dot + x.to(compute) @ weight_dot.to(compute).t()
    if bias_dot is not None:
        preact_dot = preact_dot + bias_dot.to(compute)
    penalty_dot = (2 * slope * curvature * preact_dot) @ weight_c.pow(2).sum(dim=1)
    if weight_dot is not None:
        penalty_dot = penalty_dot + slope.pow(2) @ (2 * (weight_c * weight_dot.to(compute)).sum(dim=1))
    return (slope * preact_dot).to(code.dtype), penalty_dot


def hessian_torch(preact: Tensor, noisy_preact: Tensor, row_norms_sq: Tensor, activation: str) -> Tensor:
    """CAE+H from pre-activations: (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖², plain autograd.

    Shapes: z (B, H), z̃ (n, B, H), ‖W_j‖² (H,) -> (B,).
    """
    act = ACTIVATIONS[activation]
    slope_gap = act.slope(preact) - act.slope(noisy_preact)
    return slope_gap.pow(2).mean(dim=0) @ row_norms_sq


def _slope_and_curvature(preact: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    act = ACTIVATIONS[activation]
    slope = act.slope(preact)
    return slope, act.curvature_from_code(act.forward(preact), slope)


def hessian_backward_closed_form(
    grad_penalty: Tensor,
    preact: Tensor,
    noisy_preact: Tensor,
    row_norms_sq: Tensor,
    activation: str,
    output_mask: tuple[bool, bool, bool],
) -> Grads:
    """The CAE+H op's backward in differentiable ops, with Δ = φ'(z) − φ'(z̃):

    dz = (2/n) g_b ‖W_j‖² φ''(z) Σ_s Δ,  dz̃_s = −(2/n) g_b ‖W_j‖² φ''(z̃_s) Δ_s,
    d‖W_j‖² = (1/n) Σ_b g_b Σ_s Δ²
    """
    copies = noisy_preact.shape[0]
    slope, curvature = _slope_and_curvature(preact, activation)
    noisy_slope, noisy_curvature = _slope_and_curvature(noisy_preact, activation)
    gap = slope - noisy_slope  # (n, B, H)
    grad = grad_penalty.to(preact.dtype).unsqueeze(1)
    scale = grad * row_norms_sq * (2 / max(copies, 1))  # (B, H)
    need_preact, need_noisy, need_norms = output_mask
    grad_preact = scale * curvature * gap.sum(dim=0) if need_preact else None
    grad_noisy = -scale * noisy_curvature * gap if need_noisy else None
    grad_norms = (grad * gap.pow(2)).sum(dim=(0, 1)) / max(copies, 1) if need_norms else None
    return grad_preact, grad_noisy, grad_norms


def hessian_jvp_closed_form(
    preact: Tensor,
    noisy_preact: Tensor,
    row_norms_sq: Tensor,
    tangents: tuple[Tensor | None, Tensor | None, Tensor | None],
    activation: str,
) -> Tensor:
    """Forward-mode derivative of the CAE+H estimate along (ż, ż̃, ṅ) (None: zero):
    (1/n) Σ_s Σ_j 2 Δ (φ''(z) ż − φ''(z̃) ż̃) ‖W_j‖² + Δ² ṅ_j."""
    preact_dot, noisy_dot, norms_dot = tangents
    copies = max(noisy_preact.shape[0], 1)
    slope, curvature = _slope_and_curvature(preact, activation)
    noisy_slope, noisy_curvature = _slope_and_curvature(noisy_preact, activation)
    gap = slope - noisy_slope
    gap_dot = torch.zeros_like(gap)
    if preact_dot is not None:
        gap_dot = gap_dot + curvature * preact_dot
    if noisy_dot is not None:
        gap_dot = gap_dot - noisy_curvature * noisy_dot
    penalty_dot = (2 * gap * gap_dot).sum(dim=0) @ row_norms_sq / copies
    if norms_dot is not None:
        penalty_dot = penalty_dot + gap.pow(2).sum(dim=0) @ norms_dot / copies
    return penalty_dot


def activate_torch(preact: Tensor, unit_norms_sq: Tensor, activation: str) -> tuple[Tensor, Tensor]:
    """The penalty epilogue, eagerly: h = φ(z) and p_b = Σ_u φ'(z_bu)² N_u.

    N_u is the squared norm of unit u's row of the Jacobian of z with respect
    to the input (‖W_j‖² for a dense layer). Computed in ``acc_dtype``; h is
    returned in z's dtype and p in ``acc_dtype``.

    Shapes: z (B, U), N (U,) -> h (B, U), p (B,).
    """
    act = ACTIVATIONS[activation]
    z = preact.to(acc_dtype(preact.dtype))
    return act.forward(z).to(preact.dtype), act.slope(z).pow(2) @ unit_norms_sq.to(z.dtype)


def activate_backward_closed_form(
    grad_code: Tensor | None,
    grad_penalty: Tensor | None,
    code: Tensor,
    unit_norms_sq: Tensor,
    activation: str,
    output_mask: tuple[bool, bool],
) -> tuple[Tensor | None, Tensor | None]:
    """The epilogue op's backward from the code h it saved, in differentiable ops:

        dz = g_h φ' + 2 g_p φ' φ'' N_u,   dN_u = Σ_b g_p φ'²

    with φ', φ'' written from h. Returns (dz in h's dtype, dN in N's dtype),
    None where output_mask is False.
    """
    act = ACTIVATIONS[activation]
    h = code.to(acc_dtype(code.dtype))
    slope = act.slope_from_code(h)
    need_preact, need_norms = output_mask
    grad_preact = grad_norms = None
    if need_preact:
        grad_preact = torch.zeros_like(h)
        if grad_code is not None:
            grad_preact = grad_preact + grad_code.to(h.dtype) * slope
        if grad_penalty is not None:
            curvature = act.curvature_from_code(h, slope)
            grad_penalty_c = grad_penalty.to(h.dtype).unsqueeze(1)
            grad_preact = grad_preact + 2 * grad_penalty_c * slope * curvature * unit_norms_sq.to(h.dtype)
        grad_preact = grad_preact.to(code.dtype)
    if need_norms:
        if grad_penalty is None:
            grad_norms = torch.zeros_like(unit_norms_sq)
        else:
            grad_norms = (grad_penalty.to(h.dtype) @ slope.pow(2)).to(unit_norms_sq.dtype)
    return grad_preact, grad_norms


def activate_jvp_closed_form(
    code: Tensor,
    unit_norms_sq: Tensor,
    tangents: tuple[Tensor | None, Tensor | None],
    activation: str,
) -> tuple[Tensor, Tensor]:
    """Forward-mode derivative of (h, p) along (ż, Ṅ) (None: zero):
    ḣ = φ' ż,  ṗ_b = Σ_u 2 φ' φ'' ż_bu N_u + φ'² Ṅ_u."""
    preact_dot, norms_dot = tangents
    act = ACTIVATIONS[activation]
    h = code.to(acc_dtype(code.dtype))
    slope = act.slope_from_code(h)
    norms = unit_norms_sq.to(h.dtype)
    code_dot = torch.zeros_like(h)
    penalty_dot = h.new_zeros(h.shape[:1])
    if preact_dot is not None:
        z_dot = preact_dot.to(h.dtype)
        code_dot = slope * z_dot
        penalty_dot = penalty_dot + (2 * slope * act.curvature_from_code(h, slope) * z_dot) @ norms
    if norms_dot is not None:
        penalty_dot = penalty_dot + slope.pow(2) @ norms_dot.to(h.dtype)
    return code_dot.to(code.dtype), penalty_dot.to(unit_norms_sq.dtype)
