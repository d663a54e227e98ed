"""Per-element math of the contractive encoder for the Triton kernels.

The Triton twin of csrc/include/fastcae/cae_math.h, with the activation ids
of fastcae/activations.py (read from it below). `ACTIVATION` is a constexpr,
so each kernel is compiled with one branch only. All math is in float32
(float64 for float64 inputs).

- forward_and_slope(z) -> (h, φ'(z)): φ' from z, accurate for saturated units.
- slope_from_code(h) -> φ'(z) and curvature_from_code(h, φ') -> φ''(z), written
  from h, which is what the backward pass saves.

Triton has no expm1/log1p, so they are written with Kahan's and Goldberg's
tricks, which keep full relative accuracy near 0 with any correctly rounded-ish
exp and log. NaN propagates through every function.
"""

import triton
import triton.language as tl

from ..activations import ACTIVATIONS

SIGMOID: tl.constexpr = tl.constexpr(ACTIVATIONS["sigmoid"].id)
TANH: tl.constexpr = tl.constexpr(ACTIVATIONS["tanh"].id)
SOFTPLUS: tl.constexpr = tl.constexpr(ACTIVATIONS["softplus"].id)
RELU: tl.constexpr = tl.constexpr(ACTIVATIONS["relu"].id)  # identity is every `else` branch


@triton.jit
def expm1(x):
    """exp(x) - 1, accurate near 0 (Kahan): (u - 1) x / log(u) with u = exp(x)."""
    u = tl.exp(x)
    u_minus_one = u - 1.0
    exact = (u == 1.0) | (u_minus_one == -1.0)  # the ratio is 0/0 or inf/inf there
    ratio = u_minus_one * (x / tl.where(exact, 1.0, tl.log(u)))
    result = tl.where(u == 1.0, x, ratio)
    return tl.where(u_minus_one == -1.0, -1.0, result)


@triton.jit
def log1p(v):
    """log(1 + v), accurate near 0 (Goldberg): log(u) v / (u - 1) with u = 1 + v."""
    u = 1.0 + v
    exact = u == 1.0  # the ratio is 0/0 there
    return tl.where(exact, v, tl.log(u) * (v / tl.where(exact, 1.0, u - 1.0)))


@triton.jit
def forward_and_slope(z, ACTIVATION: tl.constexpr):
    """h = φ(z) and φ'(z), from z. exp is only taken of -|z|, so nothing overflows."""
    if ACTIVATION == SIGMOID:
        e = tl.exp(-tl.abs(z))
        inv = 1.0 / (1.0 + e)
        e_inv = e * inv
        code = tl.where(z >= 0, inv, e_inv)
        slope = e_inv * inv  # σ(z) σ(-z) = e / (1 + e)²
    elif ACTIVATION == TANH:
        minus_two_abs_z = -2.0 * tl.abs(z)
        e = tl.exp(minus_two_abs_z)
        t = expm1(minus_two_abs_z)
        magnitude = -t / (2.0 + t)
        code = tl.where(z < 0, -magnitude, magnitude)
        inv = 1.0 / (1.0 + e)
        slope = 4.0 * e * inv * inv  # sech²(z)
    elif ACTIVATION == SOFTPLUS:
        e = tl.exp(-tl.abs(z))
        tail = log1p(e)
        inv = 1.0 / (1.0 + e)
        positive = z > 0
        code = tl.where(positive, z + tail, tail)
        slope = tl.where(positive, inv, e * inv)  # σ(z)
    elif ACTIVATION == RELU:
        code = tl.where(z < 0, 0.0, z)  # NaN stays NaN
        slope = slope_from_code(code, ACTIVATION)
    else:
        code = z
        slope = slope_from_code(z, ACTIVATION)
    return code, slope


@triton.jit
def slope_from_code(h, ACTIVATION: tl.constexpr):
    """φ'(z) written from h = φ(z); a NaN code gives a NaN slope for every activation."""
    if ACTIVATION == SIGMOID:
        slope = h * (1.0 - h)
    elif ACTIVATION == TANH:
        slope = (1.0 - h) * (1.0 + h)
    elif ACTIVATION == SOFTPLUS:
        slope = -expm1(-h)  # σ(z) = 1 - exp(-h)
    elif ACTIVATION == RELU:
        slope = tl.where(h > 0, 1.0, tl.where(h == h, 0.0, h))
    else:
        slope = tl.where(h == h, 1.0, h)
    return slope


@triton.jit
def curvature_from_code(h, slope, ACTIVATION: tl.constexpr):
    """φ''(z) written from h and φ'(z)."""
    if ACTIVATION == SIGMOID:
        curvature = slope * (1.0 - 2.0 * h)
    elif ACTIVATION == TANH:
        curvature = -2.0 * h * slope
    elif ACTIVATION == SOFTPLUS:
        curvature = slope * (1.0 - slope)
    else:
        curvature = slope * 0.0
    return curvature


@triton.jit
def grad_preactivation(grad_code, grad_penalty, h, row_norms_sq, ACTIVATION: tl.constexpr):
    """dz = g_h φ' + 2 g_p φ' φ'' ‖W_j‖², and g_p φ'² (the row-scale summand).

    grad_code (BLOCK_B, BLOCK_H) or 0.0, grad_penalty (BLOCK_B, 1) or 0.0,
    h (BLOCK_B, BLOCK_H), row_norms_sq (1, BLOCK_H).
    """
    slope = slope_from_code(h, ACTIVATION)
    curvature = curvature_from_code(h, slope, ACTIVATION)
    grad_preact = grad_code * slope + 2.0 * grad_penalty * slope * curvature * row_norms_sq
    return grad_preact, grad_penalty * slope * slope
