// Fused CPU kernels of the CAE+H penalty (Rifai et al., ECML 2011).
//
// Inputs are the pre-activations z (B, H) and n corrupted copies
// z̃ = (x + ε) Wᵀ + b (n, B, H), computed by the caller's GEMMs, and ‖W_j‖².
//   forward:  p_b = (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖²
//   backward: with g_b the upstream gradient and Δ_sbj = φ'(z_bj) − φ'(z̃_sbj),
//     dz_bj    =  (2/n) g_b ‖W_j‖² φ''(z_bj)   Σ_s Δ_sbj
//     dz̃_sbj  = −(2/n) g_b ‖W_j‖² φ''(z̃_sbj) Δ_sbj
//     d‖W_j‖²  =  (1/n) Σ_b g_b Σ_s Δ_sbj²
// φ'(z) of a row is computed once and reused for its n copies. One pass each
// way; the per-unit sum of the backward is reduced in fixed chunks of rows
// (deterministic whatever the thread count).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "fastcae/cae_math.h"
#include "fastcae/dispatch.h"
#include "fastcae/hessian.h"

namespace fastcae {
namespace {

// φ'(z) (and φ''(z) when curvature is not null) of one row.
template <Activation A, typename scalar_t>
FASTCAE_CPU_CLONES void slope_row(const scalar_t* preact, scalar_t* slope, scalar_t* curvature,
                                  int64_t cols) {
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    const CodeAndSlope<scalar_t> value = ActivationMath<A>::forward(preact[j]);
    slope[j] = value.slope;
    if (curvature != nullptr) curvature[j] = ActivationMath<A>::curvature_from_code(value.code, value.slope);
  }
}

// Σ_j (slope_j − φ'(z̃_j))² ‖W_j‖² of one corrupted row.
template <Activation A, typename scalar_t>
FASTCAE_CPU_CLONES scalar_t gap_row(const scalar_t* slope, const scalar_t* noisy_preact,
                                    const scalar_t* row_norms_sq, int64_t cols) {
  scalar_t sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < cols; ++j) {
    const scalar_t gap = slope[j] - ActivationMath<A>::forward(noisy_preact[j]).slope;
    sum += gap * gap * row_norms_sq[j];
  }
  return sum;
}

// One corrupted row of the backward: writes dz̃, adds to dz's Σ_s Δ and to the unit sums Σ Δ².
template <Activation A, typename scalar_t>
FASTCAE_CPU_CLONES void gap_grad_row(const scalar_t* slope, const scalar_t* noisy_preact,
                                     const scalar_t* row_norms_sq, scalar_t scale,
                                     scalar_t* grad_noisy, scalar_t* gap_sum, scalar_t* unit_sum,
                                     scalar_t grad_b, int64_t cols) {
#pragma omp simd
  for (int64_t j = 0; j < cols; ++j) {
    const CodeAndSlope<scalar_t> value = ActivationMath<A>::forward(noisy_preact[j]);
    const scalar_t gap = slope[j] - value.slope;
    if (grad_noisy != nullptr) {
      grad_noisy[j] = -scale * row_norms_sq[j] * ActivationMath<A>::curvature_from_code(value.code, value.slope) * gap;
    }
    gap_sum[j] += gap;
    unit_sum[j] += grad_b * gap * gap;
  }
}

}  // namespace

at::Tensor hessian_forward_cpu(const at::Tensor& preact, const at::Tensor& noisy_preact,
                               const at::Tensor& row_norms_sq, c10::string_view activation_name) {
  const HessianProblem problem = prepare_hessian(preact, noisy_preact, row_norms_sq);
  const Activation activation = parse_activation(activation_name);
  // Plain copies, not a structured binding: C++17 lambdas cannot capture those.
  const int64_t copies = problem.copies;
  const int64_t batch = problem.batch;
  const int64_t hidden = problem.hidden;
  at::Tensor penalty = at::empty({batch}, problem.preact.options());
  AT_DISPATCH_FLOATING_TYPES(problem.preact.scalar_type(), "hessian_forward_cpu", [&] {
    const scalar_t* z = problem.preact.const_data_ptr<scalar_t>();
    const scalar_t* z_noisy = problem.noisy_preact.const_data_ptr<scalar_t>();
    const scalar_t* rn = problem.row_norms_sq.const_data_ptr<scalar_t>();
    scalar_t* out = penalty.mutable_data_ptr<scalar_t>();
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      at::parallel_for(0, batch, rows_per_task(copies * hidden), [&](int64_t begin, int64_t end) {
        std::vector<scalar_t> slope(hidden);
        for (int64_t b = begin; b < end; ++b) {
          slope_row<A, scalar_t>(z + b * hidden, slope.data(), nullptr, hidden);
          scalar_t sum = 0;
          for (int64_t s = 0; s < copies; ++s) {
            sum += gap_row<A, scalar_t>(slope.data(), z_noisy + (s * batch + b) * hidden, rn, hidden);
          }
          out[b] = copies > 0 ? sum / static_cast<scalar_t>(copies) : scalar_t(0);
        }
      });
    });
  });
  return penalty;
}

HessianBackwardResult hessian_backward_cpu(const at::Tensor& grad_penalty, const at::Tensor& preact,
                                           const at::Tensor& noisy_preact, const at::Tensor& row_norms_sq,
                                           c10::string_view activation_name,
                                           std::array<bool, 3> output_mask) {
  const HessianProblem problem = prepare_hessian(preact, noisy_preact, row_norms_sq);
  const Activation activation = parse_activation(activation_name);
  HessianBackwardState state = prepare_hessian_backward(problem, grad_penalty, output_mask);
  // Plain copies, not a structured binding: C++17 lambdas cannot capture those.
  const int64_t copies = problem.copies;
  const int64_t batch = problem.batch;
  const int64_t hidden = problem.hidden;
  const int64_t chunk_rows = state.chunk_rows;

  AT_DISPATCH_FLOATING_TYPES(problem.preact.scalar_type(), "hessian_backward_cpu", [&] {
    const scalar_t* z = problem.preact.const_data_ptr<scalar_t>();
    const scalar_t* z_noisy = problem.noisy_preact.const_data_ptr<scalar_t>();
    const scalar_t* rn = problem.row_norms_sq.const_data_ptr<scalar_t>();
    const scalar_t* g = state.grad_penalty.const_data_ptr<scalar_t>();
    const int64_t g_stride = state.grad_penalty.stride(0);
    scalar_t* grad_z = state.grad_preact.defined() ? state.grad_preact.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* grad_z_noisy =
        state.grad_noisy_preact.defined() ? state.grad_noisy_preact.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* partial_data = state.partials.mutable_data_ptr<scalar_t>();
    const scalar_t inv_copies = copies > 0 ? scalar_t(1) / static_cast<scalar_t>(copies) : scalar_t(0);
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      at::parallel_for(0, state.num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
        std::vector<scalar_t> slope(hidden), curvature(hidden), gap_sum(hidden);
        for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
          scalar_t* unit_sum = partial_data + chunk * hidden;
          const int64_t row_end = std::min(batch, (chunk + 1) * chunk_rows);
          for (int64_t b = chunk * chunk_rows; b < row_end; ++b) {
            const scalar_t grad_b = g[b * g_stride];
            const scalar_t scale = 2 * grad_b * inv_copies;
            slope_row<A, scalar_t>(z + b * hidden, slope.data(), curvature.data(), hidden);
            std::fill(gap_sum.begin(), gap_sum.end(), scalar_t(0));
            for (int64_t s = 0; s < copies; ++s) {
              const int64_t offset = (s * batch + b) * hidden;
              gap_grad_row<A, scalar_t>(slope.data(), z_noisy + offset, rn, scale,
                                        grad_z_noisy ? grad_z_noisy + offset : nullptr, gap_sum.data(),
                                        unit_sum, grad_b, hidden);
            }
            if (grad_z != nullptr) {
              scalar_t* row = grad_z + b * hidden;
              for (int64_t j = 0; j < hidden; ++j) row[j] = scale * rn[j] * curvature[j] * gap_sum[j];
            }
          }
        }
      });
    });
  });
  return finish_hessian_backward(problem, state, output_mask[2]);
}

}  // namespace fastcae
