// The activate op: the encode op's fused pass on given pre-activations, with
// per-unit norms N in place of ‖W_j‖² (the convolutional layer's epilogue).
//
//   activate_forward(preact (B,U), unit_norms_sq (U,), activation)
//       -> code h = φ(z) (B,U), penalty p_b = Σ_u φ'(z_bu)² N_u (B,)
//   activate_forward_(preact, unit_norms_sq, activation) -> penalty (CPU only):
//       the same, h written over z (contiguous; its version counter bumped). On the CPU a new output of a
//       few MiB page-faults on every call (the allocator returns large blocks to
//       the OS), which cost more than the pass itself (measured: 2.1 ms against
//       0.7 ms for 1M floats); the GPU's caching allocator makes it free.
//   activate_backward(grad_code (B,U)?, grad_penalty (B,)?, code, unit_norms_sq,
//                     activation, output_mask[2])
//       -> grad_preact dz = g_h φ' + 2 g_p φ' φ'' N_u (B,U),
//          grad_unit_norms_sq Σ_b g_p φ'² (U,); undefined where output_mask is false
//
// unit_norms_sq, penalty and grad_penalty are in the accumulation dtype of z's
// dtype (at::toOpMathType). Kernels, not differentiable ops:
// fastcae/ops/activate.py holds their autograd.
//
// Files of the op: csrc/activate.cpp (schemas), csrc/common/activate_common.cpp
// (checks), csrc/cpu/activate_cpu.cpp and csrc/cuda/activate_cuda.cu, which run
// the encode op's pass kernels (csrc/cpu/passes.h, csrc/cuda/passes.cuh).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>

namespace fastcae {

using ActivateResult = std::tuple<at::Tensor, at::Tensor>;

void check_activate_inputs(const at::Tensor& preact, const at::Tensor& unit_norms_sq);
void check_activate_backward_inputs(const c10::optional<at::Tensor>& grad_code,
                                    const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                    const at::Tensor& unit_norms_sq);

ActivateResult activate_forward_cpu(const at::Tensor& preact, const at::Tensor& unit_norms_sq,
                                    c10::string_view activation);
at::Tensor activate_forward_inplace_cpu(at::Tensor& preact, const at::Tensor& unit_norms_sq,
                                        c10::string_view activation);
ActivateResult activate_backward_cpu(const c10::optional<at::Tensor>& grad_code,
                                     const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                     const at::Tensor& unit_norms_sq, c10::string_view activation,
                                     std::array<bool, 2> output_mask);

ActivateResult activate_forward_cuda(const at::Tensor& preact, const at::Tensor& unit_norms_sq,
                                     c10::string_view activation);
ActivateResult activate_backward_cuda(const c10::optional<at::Tensor>& grad_code,
                                      const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                      const at::Tensor& unit_norms_sq, c10::string_view activation,
                                      std::array<bool, 2> output_mask);

}  // namespace fastcae
