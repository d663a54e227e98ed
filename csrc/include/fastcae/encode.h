// Declarations shared by the op registration (csrc/ops.cpp) and the CPU and
// CUDA implementations of the two fused ops:
//
//   encode_forward(x (B,D), weight (H,D), bias (H,)?, activation)
//       -> code h (B,H), penalty (B,), row_norms_sq (H,)
//   encode_backward(grad_code (B,H)?, grad_penalty (B,)?, x, weight, code,
//                   row_norms_sq, activation, output_mask[3])
//       -> grad_x (B,D), grad_weight (H,D), grad_bias (H,); undefined where
//          output_mask is false
//
// penalty and row_norms_sq are float32 for half/bfloat16/float32 inputs and
// float64 for float64 inputs (at::toOpMathType).
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>

#include "fastcae/cae_math.h"

namespace fastcae {

using EncodeForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using EncodeBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Parses "sigmoid", "tanh", "softplus", "relu" or "identity"; anything else
// is a c10::Error naming the argument.
Activation parse_activation(c10::string_view name);

// Shape, dtype and device checks common to both devices. The Python layer
// validates first with friendlier messages; these guard direct torch.ops calls.
void check_forward_inputs(const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias);

// The rows of the backward pass are summed per fixed chunk of rows whose size
// depends only on the batch size, so per-unit sums are bitwise reproducible
// whatever the launch configuration (CUDA, and the CPU's rows path).
inline int64_t backward_chunk_rows(int64_t batch) {
  return std::max<int64_t>(16, (batch + 255) / 256);
}

// The backward's checked, row-contiguous inputs and its buffers (the same for
// both devices): the fused pass fills grad_preact (dz, the one B×H temporary)
// and the per-unit sums (Σ_b dz, Σ_b g_p φ'²), either one partial per chunk of
// chunk_rows rows (partials[c], added afterwards) or, where one thread sums a
// unit over the whole batch, their total (partials[0]).
struct EncodeBackwardState {
  at::Tensor code;          // (B, H), contiguous
  at::Tensor row_norms_sq;  // (H,), contiguous
  at::Tensor grad_code;     // (B, H), contiguous; undefined when the loss does not use h
  at::Tensor grad_penalty;  // (B,), any stride (the backward of a mean is an expanded scalar);
                            // undefined when the loss does not use p
  at::Tensor grad_preact;   // (B, H), to fill
  at::Tensor partials;      // (num_chunks or 1, 2, H), zeros
  int64_t batch;
  int64_t hidden;
  int64_t chunk_rows;
  int64_t num_chunks;
};

EncodeBackwardState prepare_encode_backward(const c10::optional<at::Tensor>& grad_code,
                                            const c10::optional<at::Tensor>& grad_penalty,
                                            const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& code, const at::Tensor& row_norms_sq,
                                            bool partial_per_chunk);

// After the fused pass, from unit_sums = (Σ_b dz, Σ_b g_p φ'²) (2, H):
// dx = dz W and dW = diag(2 Σ_b g_p φ'²) W + dzᵀ x through ATen's GEMMs
// (MKL / cuBLAS, honouring PyTorch's TF32 setting), db = Σ_b dz.
EncodeBackwardResult finish_backward(const EncodeBackwardState& state, const at::Tensor& unit_sums,
                                     const at::Tensor& x, const at::Tensor& weight,
                                     std::array<bool, 3> output_mask);

// Calls fn(std::integral_constant<Activation, A>{}) for the runtime value, so
// kernels are compiled once per activation with the math inlined.
template <typename Fn>
decltype(auto) dispatch_activation(Activation activation, Fn&& fn) {
  switch (activation) {
    case Activation::sigmoid:
      return fn(std::integral_constant<Activation, Activation::sigmoid>{});
    case Activation::tanh:
      return fn(std::integral_constant<Activation, Activation::tanh>{});
    case Activation::softplus:
      return fn(std::integral_constant<Activation, Activation::softplus>{});
    case Activation::relu:
      return fn(std::integral_constant<Activation, Activation::relu>{});
    case Activation::identity:
    default:
      return fn(std::integral_constant<Activation, Activation::identity>{});
  }
}

// CAE+H (higher-order contractive penalty), from pre-activations z (B, H) and
// n corrupted copies z̃ (n, B, H), in float32 or float64:
//   hessian_forward  -> p_b = (1/n) Σ_s Σ_j (φ'(z_bj) − φ'(z̃_sbj))² ‖W_j‖²       (B,)
//   hessian_backward -> (dp/dz, dp/dz̃, dp/d‖W_j‖²) scaled by g_p; undefined where
//                       output_mask is false
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
struct HessianGrads {
  at::Tensor grad_penalty;  // (B,)
  at::Tensor grad_preact;
  at::Tensor grad_noisy_preact;
  at::Tensor partials;      // (num_chunks, H)
  int64_t chunk_rows;
  int64_t num_chunks;
};
HessianGrads prepare_hessian_grads(const HessianProblem& problem, const at::Tensor& grad_penalty,
                                   std::array<bool, 3> output_mask);
// Adds the chunks in order: d‖W_j‖² = (1/n) Σ_chunks partials, if asked for.
HessianBackwardResult finish_hessian_backward(const HessianProblem& problem, const HessianGrads& grads,
                                              bool need_row_norms_sq);

at::Tensor hessian_forward_cpu(const at::Tensor& preact, const at::Tensor& noisy_preact,
                               const at::Tensor& row_norms_sq, c10::string_view activation);
HessianBackwardResult hessian_backward_cpu(const at::Tensor& grad_penalty, const at::Tensor& preact,
                                           const at::Tensor& noisy_preact,
                                           const at::Tensor& row_norms_sq,
                                           c10::string_view activation,
                                           std::array<bool, 3> output_mask);

EncodeForwardResult encode_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias,
                                       c10::string_view activation);
EncodeBackwardResult encode_backward_cpu(const c10::optional<at::Tensor>& grad_code,
                                         const c10::optional<at::Tensor>& grad_penalty,
                                         const at::Tensor& x, const at::Tensor& weight,
                                         const at::Tensor& code, const at::Tensor& row_norms_sq,
                                         c10::string_view activation,
                                         std::array<bool, 3> output_mask);

}  // namespace fastcae
