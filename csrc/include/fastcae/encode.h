// The encode op: the fused encoder layer and its contractive penalty.
//
//   encode_forward(x (B,D), weight (H,D), bias (H,)?, activation)
//       -> code h (B,H), penalty (B,), row_norms_sq (H,)
//   encode_backward(grad_code (B,H)?, grad_penalty (B,)?, x, weight, code,
//                   row_norms_sq, activation, output_mask[3])
//       -> grad_x (B,D), grad_weight (H,D), grad_bias (H,); undefined where
//          output_mask is false
//
// penalty and row_norms_sq are float32 for half/bfloat16/float32 inputs and
// float64 for float64 inputs (at::toOpMathType). The ops are kernels, not
// differentiable: fastcae/ops/encode.py holds their autograd.
//
// Files of the op: csrc/encode.cpp (schemas), csrc/common/encode_common.cpp
// (checks and host code both devices share), csrc/cpu/encode_cpu.cpp,
// csrc/cuda/encode_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>

namespace fastcae {

using EncodeForwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using EncodeBackwardResult = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

// Shape, dtype and device checks of the forward's inputs. The Python layer
// validates first with friendlier messages; these guard direct torch.ops calls.
void check_encode_inputs(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias);

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
  at::Tensor partials;      // (num_chunks or 1, 2, H), uninitialized: the kernels write or zero it
  int64_t batch;
  int64_t hidden;
  int64_t chunk_rows;
  int64_t num_chunks;
};

// The state of the backward's fused pass from h and the per-unit norms alone
// (no GEMM operands): what the activate op's backward runs on (fastcae/activate.h).
EncodeBackwardState prepare_backward_pass(const c10::optional<at::Tensor>& grad_code,
                                          const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                          const at::Tensor& row_norms_sq, bool partial_per_chunk);

EncodeBackwardState prepare_encode_backward(const c10::optional<at::Tensor>& grad_code,
                                            const c10::optional<at::Tensor>& grad_penalty,
                                            const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& code, const at::Tensor& row_norms_sq,
                                            bool partial_per_chunk);

// After the fused pass, from unit_sums = (Σ_b dz, Σ_b g_p φ'²) (2, H):
// dx = dz W and dW = diag(2 Σ_b g_p φ'²) W + dzᵀ x through ATen's GEMMs
// (MKL / cuBLAS, honouring PyTorch's TF32 setting), db = Σ_b dz.
EncodeBackwardResult finish_encode_backward(const EncodeBackwardState& state, const at::Tensor& unit_sums,
                                            const at::Tensor& x, const at::Tensor& weight,
                                            std::array<bool, 3> output_mask);

EncodeForwardResult encode_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, c10::string_view activation);
EncodeBackwardResult encode_backward_cpu(const c10::optional<at::Tensor>& grad_code,
                                         const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& code,
                                         const at::Tensor& row_norms_sq, c10::string_view activation,
                                         std::array<bool, 3> output_mask);

EncodeForwardResult encode_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias, c10::string_view activation);
EncodeBackwardResult encode_backward_cuda(const c10::optional<at::Tensor>& grad_code,
                                          const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& x,
                                          const at::Tensor& weight, const at::Tensor& code,
                                          const at::Tensor& row_norms_sq, c10::string_view activation,
                                          std::array<bool, 3> output_mask);

}  // namespace fastcae
