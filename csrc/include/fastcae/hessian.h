// The CAE+H op (higher-order contractive penalty, Rifai et al. ECML 2011),
// from pre-activations z (B, H) and n corrupted copies z̃ (n, B, H), in float32
// or float64:
//
//   hessian_forward(preact, noisy_preact, row_norms_sq, activation)
//       -> p_b = (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖²       (B,)
//   hessian_backward(grad_penalty, preact, noisy_preact, row_norms_sq, activation, output_mask[3])
//       -> (dp/dz, dp/dz̃, dp/d‖W_j‖²) scaled by g_p; undefined where output_mask is false
//
// Kernels, not differentiable: fastcae/ops/hessian.py holds their autograd.
// Files of the op: csrc/hessian.cpp (schemas), csrc/common/hessian_common.cpp,
// csrc/cpu/hessian_cpu.cpp, csrc/cuda/hessian_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>

namespace fastcae {

using HessianBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Checked, contiguous CAE+H inputs and their sizes (the same for both devices).
struct HessianProblem {
  at::Tensor preact;        // (B, H)
  at::Tensor noisy_preact;  // (n, B, H)
  at::Tensor row_norms_sq;  // (H,)
  int64_t copies;
  int64_t batch;
  int64_t hidden;
};
HessianProblem prepare_hessian(const at::Tensor& preact, const at::Tensor& noisy_preact,
                               const at::Tensor& row_norms_sq);

// The backward's upstream gradient (in the inputs' dtype), its outputs (undefined
// where output_mask is false) and the per-chunk unit sums Σ_b g_b Σ_s Δ².
struct HessianBackwardState {
  at::Tensor grad_penalty;  // (B,)
  at::Tensor grad_preact;
  at::Tensor grad_noisy_preact;
  at::Tensor partials;  // (num_chunks, H)
  int64_t chunk_rows;
  int64_t num_chunks;
};
HessianBackwardState prepare_hessian_backward(const HessianProblem& problem, const at::Tensor& grad_penalty,
                                              std::array<bool, 3> output_mask);
// Adds the chunks in order: d‖W_j‖² = (1/n) Σ_chunks partials, if asked for.
HessianBackwardResult finish_hessian_backward(const HessianProblem& problem,
                                              const HessianBackwardState& state, bool need_row_norms_sq);

at::Tensor hessian_forward_cpu(const at::Tensor& preact, const at::Tensor& noisy_preact,
                               const at::Tensor& row_norms_sq, c10::string_view activation);
HessianBackwardResult hessian_backward_cpu(const at::Tensor& grad_penalty, const at::Tensor& preact,
                                           const at::Tensor& noisy_preact, const at::Tensor& row_norms_sq,
                                           c10::string_view activation, std::array<bool, 3> output_mask);

at::Tensor hessian_forward_cuda(const at::Tensor& preact, const at::Tensor& noisy_preact,
                                const at::Tensor& row_norms_sq, c10::string_view activation);
HessianBackwardResult hessian_backward_cuda(const at::Tensor& grad_penalty, const at::Tensor& preact,
                                            const at::Tensor& noisy_preact, const at::Tensor& row_norms_sq,
                                            c10::string_view activation, std::array<bool, 3> output_mask);

}  // namespace fastcae
