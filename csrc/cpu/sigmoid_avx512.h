// The float32 sigmoid case of activate_tile (passes.h) written with AVX-512
// intrinsics: h = σ(z + b) and each row's penalty per group of units,
// Σ_j φ'(z_bj)² N_j, by the formulas and exp polynomial of cae_math.h.
//
// Why a hand-written pass: GCC vectorizes the portable loop with ~38
// instructions per 16 units, building 2^n and exp's range checks from masked
// integer and blend instructions. AVX-512 has them as single instructions
// (vrndscaleps rounds n; vscalefps scales by 2^n, rounding into the denormal
// range and passing NaN): over 64 × 16384 outputs on 2 threads the pass took
// 123 µs against the portable loop's 173 (ATen's sigmoid_ alone: 118); with
// the degree-6 exp, 108 against sigmoid_'s 107-112 (it is bound by arithmetic). The
// other activations and dtypes keep the portable loop, which every ISA clone
// runs. FASTCAE_CPU_INTRINSICS=0 turns this pass off (tests compare the two).
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTCAE_HAS_AVX512_SIGMOID 1
#include <immintrin.h>

#include "fastcae/cae_math.h"

namespace fastcae {

// Whether activate_tile takes this pass: the CPU has AVX-512F and the
// environment does not turn it off (FASTCAE_CPU_INTRINSICS set to "", 0, false,
// off or no, as fastcae/_environment.py reads its flags). Read once.
inline bool use_avx512_sigmoid() {
  static const bool enabled = [] {
    if (!__builtin_cpu_supports("avx512f")) return false;
    const char* flag = std::getenv("FASTCAE_CPU_INTRINSICS");
    if (flag == nullptr) return true;
    std::string value(flag);
    for (char& c : value) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return !(value.empty() || value == "0" || value == "false" || value == "off" || value == "no");
  }();
  return enabled;
}

namespace avx512 {

#define FASTCAE_AVX512_INLINE __attribute__((target("avx512f"), always_inline)) inline

// exp(x) for x <= 0, NaN through: math::exp_nonpositive's steps, 16 lanes at a time.
FASTCAE_AVX512_INLINE __m512 exp_nonpositive(__m512 x) {
  using namespace math::exp_float;
  // max(kLowest, x), as the portable exp clamps: vmaxps returns its second operand
  // when one is NaN, so NaN stays NaN; -inf becomes kLowest (r stays finite), whose
  // exp rounds to 0.
  x = _mm512_max_ps(_mm512_set1_ps(kLowest), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(kLog2e)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 exp_r = _mm512_set1_ps(kPoly[0]);
  for (int i = 1; i < kPolyTerms; ++i) exp_r = _mm512_fmadd_ps(exp_r, r, _mm512_set1_ps(kPoly[i]));
  return _mm512_scalef_ps(exp_r, n);  // exp_r · 2^n, rounded once
}

// Units [j, j + 16) of one row where `mask` is set: h = σ(z (+ b)) into code, and
// φ'(z)² N added into penalty_sum. Masked-off lanes load zeros (N = 0 there, so
// they add nothing) and are not stored.
template <bool kHasBias>
FASTCAE_AVX512_INLINE void sigmoid_vector(const float* preact, const float* bias, const float* norms, float* code,
                                          __mmask16 mask, __m512& penalty_sum) {
  __m512 z = _mm512_maskz_loadu_ps(mask, preact);
  if constexpr (kHasBias) z = _mm512_add_ps(z, _mm512_maskz_loadu_ps(mask, bias));
  // ActivationMath<sigmoid>::forward: e = exp(-|z|), σ = 1/(1+e) or e/(1+e), σ' = e/(1+e)².
  const __m512 minus_abs = _mm512_castsi512_ps(
      _mm512_or_si512(_mm512_castps_si512(z), _mm512_set1_epi32(INT32_MIN)));  // the sign bit set
  const __m512 e = exp_nonpositive(minus_abs);
  const __m512 inv = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
  const __m512 e_inv = _mm512_mul_ps(e, inv);
  const __mmask16 nonnegative = _mm512_cmp_ps_mask(z, _mm512_setzero_ps(), _CMP_GE_OQ);
  _mm512_mask_storeu_ps(code, mask, _mm512_mask_blend_ps(nonnegative, e_inv, inv));
  const __m512 slope = _mm512_mul_ps(e_inv, inv);
  penalty_sum =
      _mm512_fmadd_ps(_mm512_mul_ps(slope, slope), _mm512_maskz_loadu_ps(mask, norms), penalty_sum);
}

#undef FASTCAE_AVX512_INLINE

}  // namespace avx512

// activate_tile<sigmoid, kHasBias, float, float>: the same tile, groups and outputs.
template <bool kHasBias>
__attribute__((target("avx512f"))) void sigmoid_tile_avx512(
    const float* preact, float* code, const float* bias, const float* row_norms_sq, float* group_penalties,
    int64_t batch, int64_t hidden, int64_t group_columns, int64_t row_begin, int64_t row_end,
    int64_t first_group, int64_t last_group) {
  constexpr int64_t kLanes = 16;
  for (int64_t b = row_begin; b < row_end; ++b) {
    const float* preact_row = preact + b * hidden;
    float* code_row = code + b * hidden;
    for (int64_t group = first_group; group < last_group; ++group) {
      const int64_t unit_end = std::min(hidden, (group + 1) * group_columns);
      __m512 penalty_sum = _mm512_setzero_ps();
      int64_t j = group * group_columns;
      for (; j + kLanes <= unit_end; j += kLanes) {
        avx512::sigmoid_vector<kHasBias>(preact_row + j, kHasBias ? bias + j : nullptr, row_norms_sq + j,
                                         code_row + j, 0xFFFF, penalty_sum);
      }
      if (j < unit_end) {  // a group whose width is not a multiple of 16 ends in a partial vector
        avx512::sigmoid_vector<kHasBias>(preact_row + j, kHasBias ? bias + j : nullptr, row_norms_sq + j,
                                         code_row + j, static_cast<__mmask16>((1u << (unit_end - j)) - 1u),
                                         penalty_sum);
      }
      group_penalties[group * batch + b] = _mm512_reduce_add_ps(penalty_sum);
    }
  }
}

}  // namespace fastcae

#endif
