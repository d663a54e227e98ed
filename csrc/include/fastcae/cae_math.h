// Per-element math of the contractive encoder, shared unchanged by the CPU
// kernels (csrc/cpu) and the CUDA kernels (csrc/cuda).
//
// Encoder: z = x Wᵀ + b, h = φ(z). Per sample the Jacobian is diag(φ'(z)) W, so
//
//   penalty_b       = Σ_j φ'(z_bj)² ‖W_j‖²
//   grad_preact_bj  = g_h[b,j] φ'(z_bj) + 2 g_p[b] φ'(z_bj) φ''(z_bj) ‖W_j‖²
//   row_scale_j     = 2 Σ_b g_p[b] φ'(z_bj)²      (dW = grad_preactᵀ x + diag(row_scale) W)
//
// The forward pass takes φ' from z (accurate for saturated units); the
// backward pass takes φ' and φ'' from h, so it saves the code h it already has
// instead of the pre-activation z.
//
// Float transcendental functions: on the device they are CUDA's libm. On the
// host they are branch-free polynomial versions (≤ 2 ulp on the ranges used
// here) because an extension cannot reach ATen's per-ISA SLEEF kernels, and
// calls to glibc's scalar expf would keep the fused row loops from
// vectorizing. Every caller only needs exp on (-inf, 0], which keeps the
// range reduction simple. NaN propagates through every function; ±inf gives
// the mathematical limit.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#define FASTCAE_INLINE C10_HOST_DEVICE C10_ALWAYS_INLINE

namespace fastcae {

// Every activation as X(name, id). The ids are those of fastcae/activations.py
// (the source of truth, which the Triton kernels read too);
// tests/test_activations.py checks that this list agrees with it.
#define FASTCAE_ACTIVATIONS(X) \
  X(sigmoid, 0)                \
  X(tanh, 1)                   \
  X(softplus, 2)               \
  X(relu, 3)                   \
  X(identity, 4)

#define FASTCAE_ACTIVATION_ENUMERATOR(name, id) name = id,
enum class Activation : int { FASTCAE_ACTIVATIONS(FASTCAE_ACTIVATION_ENUMERATOR) };
#undef FASTCAE_ACTIVATION_ENUMERATOR

namespace math {

#if !defined(__CUDA_ARCH__)
C10_ALWAYS_INLINE float float_from_bits(int32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}
#endif

// The host float exp's constants, shared with the AVX-512 sigmoid pass
// (csrc/cpu/sigmoid_avx512.h), which computes the same polynomial.
namespace exp_float {
// Below this exp(x) rounds to zero even as a denormal (exp(-104) < 2^-150).
constexpr float kLowest = -104.0f;
constexpr float kLog2e = 1.44269504088896341f;
// ln 2 split in two so n·ln2 is subtracted without rounding error (Cody-Waite).
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
// exp(r) on [-ln2/2, ln2/2] as one polynomial of degree 6, highest power
// first, evaluated by Horner's rule: 1 + r + r² P(r) with P a relative-error
// minimax fit (scripts/fit_exp_polynomial.py; float32 coefficients). With the
// range reduction above, exp's error over every float in [-87, 0] is ≤ 8e-8
// relative with fused multiply-adds, 1e-7 without (Cephes's degree-7 form:
// 8.4e-8), two multiply-adds cheaper: the AVX-512 sigmoid pass is bound by
// arithmetic.
constexpr int kPolyTerms = 7;
constexpr float kPoly[kPolyTerms] = {1.3814612e-3f, 8.3687101e-3f, 4.1668389e-2f, 1.6666521e-1f,
                                     4.9999994e-1f, 1.0f, 1.0f};
}  // namespace exp_float

// exp(x) for x <= 0 (NaN passes through).
FASTCAE_INLINE float exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return ::expf(x);
#else
  using namespace exp_float;
  // Adding and subtracting 1.5·2^23 rounds to the nearest integer without a
  // libm call (valid for |v| < 2^22; here |v| <= 151).
  constexpr float kRoundMagic = 12582912.0f;

  const float clamped = x < kLowest ? kLowest : x;  // NaN compares false and stays NaN
  float n = (clamped * kLog2e + kRoundMagic) - kRoundMagic;
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;  // r in [-ln2/2, ln2/2]
  float exp_r = kPoly[0];
  for (int i = 1; i < kPolyTerms; ++i) exp_r = exp_r * r + kPoly[i];
  // 2^n for n in [-150, 0] as the normal 2^(n+64) times 2^-64: the first
  // product is exact and the second rounds once, so results in the denormal
  // range are still correct. NaN never reaches the int conversion.
  n = n == n ? n : 0.0f;
  const int32_t n_int = static_cast<int32_t>(n);
  constexpr float kTwoToMinus64 = 5.42101086242752217e-20f;
  const float result = exp_r * float_from_bits((n_int + 64 + 127) << 23) * kTwoToMinus64;
  return x < kLowest ? 0.0f : result;
#endif
}

FASTCAE_INLINE double exp_nonpositive(double x) { return ::exp(x); }

// exp(x) - 1 for x <= 0, accurate relative to the result near 0, given
// exp_x = exp_nonpositive(x) (callers need both; this shares the work).
FASTCAE_INLINE float expm1_nonpositive(float x, float exp_x) {
#if defined(__CUDA_ARCH__)
  return ::expm1f(x);
#else
  // |x| < ln2/2: Taylor series to x⁸ (truncation < 1e-9 relative).
  // Further out exp(x) <= 0.71, so exp(x) - 1 loses at most ~1.3 bits.
  float poly = 1.0f / 40320.0f;
  poly = poly * x + 1.0f / 5040.0f;
  poly = poly * x + 1.0f / 720.0f;
  poly = poly * x + 1.0f / 120.0f;
  poly = poly * x + 1.0f / 24.0f;
  poly = poly * x + 1.0f / 6.0f;
  poly = poly * x + 0.5f;
  const float small = poly * (x * x) + x;
  return x > -0.34657359f ? small : exp_x - 1.0f;  // NaN takes the second branch
#endif
}

FASTCAE_INLINE double expm1_nonpositive(double x, double /*exp_x*/) { return ::expm1(x); }

template <typename T>
FASTCAE_INLINE T expm1_nonpositive(T x) {
  return expm1_nonpositive(x, exp_nonpositive(x));
}

// log(1 + u) for u in [0, 1].
FASTCAE_INLINE float log1p_unit(float u) {
#if defined(__CUDA_ARCH__)
  return ::log1pf(u);
#else
  // log(1+u) = 2 atanh(s) with s = u / (2 + u) in [0, 1/3]; the odd series
  // in s converges by a factor <= 1/9 per term (truncation < 2e-9 relative).
  const float s = u / (2.0f + u);
  const float s2 = s * s;
  float poly = 1.0f / 17.0f;
  poly = poly * s2 + 1.0f / 15.0f;
  poly = poly * s2 + 1.0f / 13.0f;
  poly = poly * s2 + 1.0f / 11.0f;
  poly = poly * s2 + 1.0f / 9.0f;
  poly = poly * s2 + 1.0f / 7.0f;
  poly = poly * s2 + 1.0f / 5.0f;
  poly = poly * s2 + 1.0f / 3.0f;
  return 2.0f * s + 2.0f * s * (s2 * poly);
#endif
}

FASTCAE_INLINE double log1p_unit(double u) { return ::log1p(u); }

FASTCAE_INLINE float copysign(float magnitude, float sign) { return ::copysignf(magnitude, sign); }
FASTCAE_INLINE double copysign(double magnitude, double sign) { return ::copysign(magnitude, sign); }
FASTCAE_INLINE float abs(float v) { return ::fabsf(v); }
FASTCAE_INLINE double abs(double v) { return ::fabs(v); }

}  // namespace math

// h = φ(z) and its slope φ'(z), computed together from z. The forward pass
// takes φ' from z because it is accurate there: from a rounded h, 1 - h loses
// all relative precision once a unit saturates.
template <typename T>
struct CodeAndSlope {
  T code;
  T slope;
};

// Per activation: forward(z) -> (h, φ'(z)); slope_from_code(h) = φ'(z) and
// curvature_from_code(h, φ') = φ''(z) written from h, which is what the backward
// pass saves. The same names as kernels/activations.py and fastcae/activations.py.
// T is float or double: half and bfloat16 kernels compute in float.
template <Activation A>
struct ActivationMath;

template <>
struct ActivationMath<Activation::sigmoid> {
  template <typename T>
  FASTCAE_INLINE static CodeAndSlope<T> forward(T z) {
    // exp of -|z| only, so it never overflows: σ(z) = 1/(1+e) or e/(1+e),
    // and σ'(z) = σ(z) σ(-z) = e/(1+e)².
    const T e = math::exp_nonpositive(-math::abs(z));
    const T inv = T(1) / (T(1) + e);
    const T e_inv = e * inv;
    return {z >= T(0) ? inv : e_inv, e_inv * inv};
  }
  template <typename T>
  FASTCAE_INLINE static T slope_from_code(T h) { return h * (T(1) - h); }
  template <typename T>
  FASTCAE_INLINE static T curvature_from_code(T h, T slope) { return slope * (T(1) - T(2) * h); }
};

template <>
struct ActivationMath<Activation::tanh> {
  template <typename T>
  FASTCAE_INLINE static CodeAndSlope<T> forward(T z) {
    // With e = exp(-2|z|) and t = e - 1 (from expm1: no cancellation near 0):
    // tanh|z| = -t / (2 + t) and tanh'(z) = 4e / (1 + e)².
    const T minus_two_abs_z = T(-2) * math::abs(z);
    const T e = math::exp_nonpositive(minus_two_abs_z);
    const T t = math::expm1_nonpositive(minus_two_abs_z, e);
    const T inv = T(1) / (T(1) + e);
    return {math::copysign(-t / (T(2) + t), z), T(4) * e * inv * inv};
  }
  // (1-h)(1+h) keeps relative accuracy as |h| -> 1, unlike 1 - h².
  template <typename T>
  FASTCAE_INLINE static T slope_from_code(T h) { return (T(1) - h) * (T(1) + h); }
  template <typename T>
  FASTCAE_INLINE static T curvature_from_code(T h, T slope) { return T(-2) * h * slope; }
};

template <>
struct ActivationMath<Activation::softplus> {
  template <typename T>
  FASTCAE_INLINE static CodeAndSlope<T> forward(T z) {
    // log(1 + e^z) = max(z, 0) + log1p(e) with e = exp(-|z|); φ'(z) = σ(z).
    const T e = math::exp_nonpositive(-math::abs(z));
    const T tail = math::log1p_unit(e);
    const T inv = T(1) / (T(1) + e);
    const bool positive = z > T(0);
    return {positive ? z + tail : tail, positive ? inv : e * inv};
  }
  // φ'(z) = σ(z) = 1 - e^{-h}, since h = log(1 + e^z).
  template <typename T>
  FASTCAE_INLINE static T slope_from_code(T h) { return -math::expm1_nonpositive(-h); }
  template <typename T>
  FASTCAE_INLINE static T curvature_from_code(T /*h*/, T slope) { return slope * (T(1) - slope); }
};

template <>
struct ActivationMath<Activation::relu> {
  template <typename T>
  FASTCAE_INLINE static CodeAndSlope<T> forward(T z) {
    const T code = z < T(0) ? T(0) : z;  // NaN stays NaN
    return {code, slope_from_code(code)};
  }
  // 1[h > 0]; a NaN code gives a NaN slope so NaN inputs reach the penalty.
  template <typename T>
  FASTCAE_INLINE static T slope_from_code(T h) { return h > T(0) ? T(1) : (h == h ? T(0) : h); }
  template <typename T>
  FASTCAE_INLINE static T curvature_from_code(T /*h*/, T /*slope*/) { return T(0); }
};

template <>
struct ActivationMath<Activation::identity> {
  template <typename T>
  FASTCAE_INLINE static CodeAndSlope<T> forward(T z) { return {z, slope_from_code(z)}; }
  template <typename T>
  FASTCAE_INLINE static T slope_from_code(T h) { return h == h ? T(1) : h; }
  template <typename T>
  FASTCAE_INLINE static T curvature_from_code(T /*h*/, T /*slope*/) { return T(0); }
};

// One element of the penalty: φ'² ‖W_j‖².
template <typename T>
FASTCAE_INLINE T penalty_term(T slope, T row_norm_sq) {
  return slope * slope * row_norm_sq;
}

// dz = g_h φ' + 2 g_p φ' φ'' ‖W_j‖².
template <Activation A, typename T>
FASTCAE_INLINE T grad_preactivation(T grad_code, T grad_penalty, T h, T slope, T row_norm_sq) {
  const T curvature = ActivationMath<A>::curvature_from_code(h, slope);
  return grad_code * slope + T(2) * grad_penalty * slope * curvature * row_norm_sq;
}

}  // namespace fastcae
