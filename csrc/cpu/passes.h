// The fused passes of the encode op's CPU kernels, shared with the activate op
// (csrc/cpu/activate_cpu.cpp), which runs them on given pre-activations:
//
//   activate_tile             h = φ(z + b) and each row's penalty per group of
//                             kPenaltyGroupColumns units, Σ_j φ'(z_bj)² N_j;
//   sum_rows_in_order         the groups (or chunks) added in a fixed order;
//   grad_preactivation_tile   dz = g_h φ' + 2 g_p φ' φ'' N_j, with the per-unit
//                             sums Σ_b dz and Σ_b g_p φ'²;
//   backward_rows             that pass over fixed chunks of rows × tiles of units, in parallel.
//
// N_j is ‖W_j‖² for the encode op. Loops are written for the auto-vectorizer
// (branch-free math from cae_math.h, `omp simd` reductions) and compiled in
// several ISA clones (cpu_kernels.h); the float32 sigmoid forward has an
// AVX-512 intrinsics version (sigmoid_avx512.h) that activate_tile takes where
// the CPU has it.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>

#include "cpu_kernels.h"
#include "fastcae/cae_math.h"
#include "fastcae/encode.h"
#include "sigmoid_avx512.h"

namespace fastcae {
namespace {

// Units per penalty group: each row's penalty is summed per group, then the
// groups are added in order (sum_rows_in_order), whatever split the threads.
// Each group ends in a horizontal sum of the vector accumulator and a new
// loop: at 64 units that cost the sigmoid pass ~25% (measured, AVX-512), at
// 256 about 5%.
constexpr int64_t kPenaltyGroupColumns = 256;

inline int64_t penalty_groups(int64_t hidden) {
  return (hidden + kPenaltyGroupColumns - 1) / kPenaltyGroupColumns;
}

// Writes h = φ(z + b) for the tile rows [row_begin, row_end) × penalty groups
// [first_group, last_group) of z (B, H) into code (the same buffer for the
// encode op, which overwrites x Wᵀ in place), and each row's penalty per
// group, group_penalties[g·B + b] = Σ_{j in g} φ'(z_bj)² ‖W_j‖². The encode
// op adds its bias here rather than in the GEMM (float32/float64): addmm
// would first broadcast-copy it into the output, an extra pass over B×H.
// With kHasBias the bias is never null (the encode op passes zeros where there
// is none, one instantiation); the activate op has none and passes null.
template <Activation A, bool kHasBias, typename scalar_t, typename acc_t>
FASTCAE_CPU_CLONES void activate_tile(const scalar_t* preact, scalar_t* code, const acc_t* bias,
                                      const acc_t* row_norms_sq, acc_t* group_penalties, int64_t batch,
                                      int64_t hidden, int64_t row_begin, int64_t row_end,
                                      int64_t first_group, int64_t last_group) {
#ifdef FASTCAE_HAS_AVX512_SIGMOID
  if constexpr (A == Activation::sigmoid && std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    if (use_avx512_sigmoid()) {
      sigmoid_tile_avx512<kHasBias>(preact, code, bias, row_norms_sq, group_penalties, batch, hidden,
                                    kPenaltyGroupColumns, row_begin, row_end, first_group, last_group);
      return;
    }
  }
#endif
  for (int64_t b = row_begin; b < row_end; ++b) {
    const scalar_t* preact_row = preact + b * hidden;
    scalar_t* code_row = code + b * hidden;
    for (int64_t group = first_group; group < last_group; ++group) {
      const int64_t unit_end = std::min(hidden, (group + 1) * kPenaltyGroupColumns);
      acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = group * kPenaltyGroupColumns; j < unit_end; ++j) {
        const acc_t preact_bj = kHasBias ? static_cast<acc_t>(preact_row[j]) + bias[j]
                                         : static_cast<acc_t>(preact_row[j]);
        const CodeAndSlope<acc_t> value = ActivationMath<A>::forward(preact_bj);
        code_row[j] = static_cast<scalar_t>(value.code);
        sum += penalty_term(value.slope, row_norms_sq[j]);
      }
      group_penalties[group * batch + b] = sum;
    }
  }
}

// out[i] = Σ_r rows[r·stride + i] over r = 0 … count−1 in order, for i in
// [begin, end): a row's penalty from its groups, a unit's sums from its chunks.
template <typename acc_t>
FASTCAE_CPU_CLONES void sum_rows_in_order(const acc_t* rows, acc_t* out, int64_t count,
                                          int64_t stride, int64_t begin, int64_t end) {
  std::fill(out + begin, out + end, acc_t(0));
  for (int64_t r = 0; r < count; ++r) {
    const acc_t* row = rows + r * stride;
#pragma omp simd
    for (int64_t i = begin; i < end; ++i) {
      out[i] += row[i];
    }
  }
}

// kRows consecutive rows from `first_row` × units [unit_begin, unit_end) of the
// backward pass: writes dz and adds the rows' share of Σ_b dz (kSumGradPreact:
// the encode op's bias gradient; the activate op has no bias) and Σ_b g_p φ'²
// into grad_bias_sum[j − unit_begin] and row_scale_sum[j − unit_begin]. Several
// rows per sweep: the per-unit sums are read and written once per kRows rows
// (for a wide layer they live in L2, not L1).
template <int kRows, Activation A, bool kHasGradCode, bool kSumGradPreact, typename scalar_t, typename acc_t>
C10_ALWAYS_INLINE void grad_preactivation_rows(
    const scalar_t* grad_code, const acc_t* grad_penalty, int64_t grad_penalty_stride,
    const scalar_t* code, const acc_t* row_norms_sq, scalar_t* grad_preact, acc_t* grad_bias_sum,
    acc_t* row_scale_sum, int64_t hidden, int64_t first_row, int64_t unit_begin, int64_t unit_end) {
  acc_t grad_penalty_rows[kRows];
  for (int r = 0; r < kRows; ++r) {
    grad_penalty_rows[r] = grad_penalty ? grad_penalty[(first_row + r) * grad_penalty_stride] : acc_t(0);
  }
  const int64_t offset = first_row * hidden;
#pragma omp simd
  for (int64_t j = unit_begin; j < unit_end; ++j) {
    acc_t grad_preact_sum = 0;
    acc_t row_scale = 0;
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const int64_t index = offset + r * hidden + j;
      const acc_t h = static_cast<acc_t>(code[index]);
      const acc_t slope = ActivationMath<A>::slope_from_code(h);
      const acc_t grad_code_bj = kHasGradCode ? static_cast<acc_t>(grad_code[index]) : acc_t(0);
      const acc_t grad_preact_bj =
          grad_preactivation<A>(grad_code_bj, grad_penalty_rows[r], h, slope, row_norms_sq[j]);
      grad_preact[index] = static_cast<scalar_t>(grad_preact_bj);
      grad_preact_sum += grad_preact_bj;
      row_scale += grad_penalty_rows[r] * slope * slope;
    }
    if constexpr (kSumGradPreact) grad_bias_sum[j - unit_begin] += grad_preact_sum;
    row_scale_sum[j - unit_begin] += row_scale;
  }
}

// Rows [row_begin, row_end) × units [unit_begin, unit_end) of the backward
// pass, kRowBlock rows per sweep from row_begin, then the rest one by one.
// The sums' order depends only on row_begin and row_end (a chunk of rows),
// not on how the units are split between threads.
template <Activation A, bool kHasGradCode, bool kSumGradPreact, typename scalar_t, typename acc_t>
FASTCAE_CPU_CLONES void grad_preactivation_tile(
    const scalar_t* grad_code, const acc_t* grad_penalty, int64_t grad_penalty_stride,
    const scalar_t* code, const acc_t* row_norms_sq, scalar_t* grad_preact, acc_t* grad_bias_sum,
    acc_t* row_scale_sum, int64_t hidden, int64_t row_begin, int64_t row_end, int64_t unit_begin,
    int64_t unit_end) {
  constexpr int kRowBlock = 4;
  int64_t b = row_begin;
  for (; b + kRowBlock <= row_end; b += kRowBlock) {
    grad_preactivation_rows<kRowBlock, A, kHasGradCode, kSumGradPreact>(
        grad_code, grad_penalty, grad_penalty_stride, code, row_norms_sq, grad_preact, grad_bias_sum,
        row_scale_sum, hidden, b, unit_begin, unit_end);
  }
  for (; b < row_end; ++b) {
    grad_preactivation_rows<1, A, kHasGradCode, kSumGradPreact>(
        grad_code, grad_penalty, grad_penalty_stride, code, row_norms_sq, grad_preact, grad_bias_sum,
        row_scale_sum, hidden, b, unit_begin, unit_end);
  }
}

// Raw views of the backward's state for the fused pass of one tile.
template <typename scalar_t>
struct BackwardTile {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* grad_code;  // null without a code gradient
  const acc_t* grad_penalty;  // null without a penalty gradient
  int64_t grad_penalty_stride;
  const scalar_t* code;
  const acc_t* row_norms_sq;
  scalar_t* grad_preact;
  int64_t batch;
  int64_t hidden;
  int64_t chunk_rows;

  explicit BackwardTile(const EncodeBackwardState& state)
      : grad_code(state.grad_code.defined() ? state.grad_code.const_data_ptr<scalar_t>() : nullptr),
        grad_penalty(state.grad_penalty.defined() ? state.grad_penalty.const_data_ptr<acc_t>() : nullptr),
        grad_penalty_stride(state.grad_penalty.defined() ? state.grad_penalty.stride(0) : 0),
        code(state.code.const_data_ptr<scalar_t>()),
        row_norms_sq(state.row_norms_sq.const_data_ptr<acc_t>()),
        grad_preact(state.grad_preact.mutable_data_ptr<scalar_t>()),
        batch(state.batch),
        hidden(state.hidden),
        chunk_rows(state.chunk_rows) {}

  // dz of chunk `chunk`'s rows × units [unit_begin, unit_end), adding the
  // chunk's Σ dz and Σ g_p φ'² into grad_bias_sum / row_scale_sum[j − unit_begin].
  template <Activation A, bool kHasGradCode, bool kSumGradPreact = true>
  void fused_pass(int64_t chunk, int64_t unit_begin, int64_t unit_end, acc_t* grad_bias_sum,
                  acc_t* row_scale_sum) const {
    grad_preactivation_tile<A, kHasGradCode, kSumGradPreact, scalar_t, acc_t>(
        grad_code, grad_penalty, grad_penalty_stride, code, row_norms_sq, grad_preact, grad_bias_sum,
        row_scale_sum, hidden, chunk * chunk_rows, std::min(batch, (chunk + 1) * chunk_rows), unit_begin,
        unit_end);
  }
};

// Rows path: the fused pass over tasks of one chunk of rows × one tile of
// units, in parallel (tiles so that a batch of few chunks still fills the
// threads: one chunk at B ≤ 16). Each chunk's unit sums go in its own slot of
// state.partials, then are added in order into unit_sums (without
// kSumGradPreact only its second row, Σ_b g_p φ'², is written). A (chunk,
// unit) sum runs over the chunk's rows in the same order whatever the tile,
// so the results do not depend on the split either.
template <Activation A, bool kHasGradCode, bool kSumGradPreact, typename scalar_t>
void backward_rows(EncodeBackwardState& state, at::Tensor& unit_sums) {
  using acc_t = at::opmath_type<scalar_t>;
  const BackwardTile<scalar_t> tile(state);
  const int64_t hidden = state.hidden;
  // About kElementsPerTask elements per task, in whole 64-unit lines.
  const int64_t tile_units = std::max<int64_t>(64, kElementsPerTask / state.chunk_rows / 64 * 64);
  const int64_t tiles = (hidden + tile_units - 1) / tile_units;
  acc_t* partials = state.partials.mutable_data_ptr<acc_t>();
  at::parallel_for(0, state.num_chunks * tiles, 1, [&](int64_t task_begin, int64_t task_end) {
    for (int64_t task = task_begin; task < task_end; ++task) {
      const int64_t chunk = task / tiles;
      const int64_t unit_begin = task % tiles * tile_units;
      const int64_t unit_end = std::min(hidden, unit_begin + tile_units);
      acc_t* bias_sums = partials + chunk * 2 * hidden + unit_begin;
      acc_t* scale_sums = bias_sums + hidden;
      if constexpr (kSumGradPreact) std::fill(bias_sums, bias_sums + (unit_end - unit_begin), acc_t(0));
      std::fill(scale_sums, scale_sums + (unit_end - unit_begin), acc_t(0));
      tile.template fused_pass<A, kHasGradCode, kSumGradPreact>(chunk, unit_begin, unit_end, bias_sums,
                                                                scale_sums);
    }
  });
  const int64_t first_sum = kSumGradPreact ? 0 : hidden;
  at::parallel_for(first_sum, 2 * hidden, rows_per_task(state.num_chunks), [&](int64_t begin, int64_t end) {
    sum_rows_in_order<acc_t>(partials, unit_sums.mutable_data_ptr<acc_t>(), state.num_chunks, 2 * hidden,
                             begin, end);
  });
}

}  // namespace
}  // namespace fastcae
