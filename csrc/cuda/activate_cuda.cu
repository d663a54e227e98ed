// CUDA kernels of the activate op: the encode op's fused passes (passes.cuh)
// on given pre-activations. Forward: activate_kernel from preact into a new
// code tensor. Backward: grad_preact_kernel, then its per-chunk sums added in
// order; dN is their Σ_b g_p φ'² half.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>

#include "fastcae/activate.h"
#include "passes.cuh"

namespace fastcae {

ActivateResult activate_forward_cuda(const at::Tensor& preact, const at::Tensor& unit_norms_sq,
                                     c10::string_view activation_name) {
  check_activate_inputs(preact, unit_norms_sq);
  const Activation activation = parse_activation(activation_name);
  const c10::cuda::CUDAGuard device_guard(preact.device());
  const at::Tensor preact_c = preact.contiguous();
  const at::Tensor norms = unit_norms_sq.contiguous();
  at::Tensor code = at::empty_like(preact_c);
  at::Tensor penalty = at::empty({preact_c.size(0)}, norms.options());
  launch_activate(preact_c, code, norms, penalty, activation);
  return {code, penalty};
}

ActivateResult activate_backward_cuda(const c10::optional<at::Tensor>& grad_code,
                                      const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                      const at::Tensor& unit_norms_sq, c10::string_view activation_name,
                                      std::array<bool, 2> output_mask) {
  check_activate_backward_inputs(grad_code, grad_penalty, code, unit_norms_sq);
  const Activation activation = parse_activation(activation_name);
  const c10::cuda::CUDAGuard device_guard(code.device());
  EncodeBackwardState state =
      prepare_backward_pass(grad_code, grad_penalty, code, unit_norms_sq, /*partial_per_chunk=*/true);
  launch_grad_preact(state, activation);
  at::Tensor grad_unit_norms_sq;
  if (output_mask[1]) grad_unit_norms_sq = state.partials.select(1, 1).sum(0);
  return {output_mask[0] ? state.grad_preact : at::Tensor(), grad_unit_norms_sq};
}

}  // namespace fastcae
