// Host code of the CAE+H op that both devices' kernels share: the argument
// checks, the backward's buffers and the in-order sum of its per-chunk partials.
#include <ATen/ATen.h>

#include "fastcae/hessian.h"
#include "fastcae/reduction.h"

namespace fastcae {

HessianProblem prepare_hessian(const at::Tensor& preact, const at::Tensor& noisy_preact,
                               const at::Tensor& row_norms_sq) {
  TORCH_CHECK_VALUE(preact.dim() == 2, "fastcae: preact must be 2-D (batch, hidden), got shape ",
                    preact.sizes());
  TORCH_CHECK_VALUE(noisy_preact.dim() == 3 && noisy_preact.size(1) == preact.size(0) &&
                        noisy_preact.size(2) == preact.size(1),
                    "fastcae: noisy_preact must have shape (n, ", preact.size(0), ", ", preact.size(1),
                    "), got ", noisy_preact.sizes());
  TORCH_CHECK_VALUE(row_norms_sq.dim() == 1 && row_norms_sq.size(0) == preact.size(1),
                    "fastcae: row_norms_sq must have shape (", preact.size(1), ",), got ", row_norms_sq.sizes());
  const auto dtype = preact.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble,
                   "fastcae: preact must be float32 or float64, got ", dtype);
  for (const at::Tensor* t : {&noisy_preact, &row_norms_sq}) {
    TORCH_CHECK_TYPE(t->scalar_type() == dtype, "fastcae: CAE+H inputs need one dtype, got ", dtype, " and ",
                     t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == preact.device(), "fastcae: CAE+H inputs need one device, got ",
                      preact.device(), " and ", t->device());
  }
  return {preact.contiguous(), noisy_preact.contiguous(), row_norms_sq.contiguous(),
          noisy_preact.size(0),  preact.size(0),          preact.size(1)};
}

HessianBackwardState prepare_hessian_backward(const HessianProblem& problem, const at::Tensor& grad_penalty,
                                              std::array<bool, 3> output_mask) {
  TORCH_CHECK_VALUE(grad_penalty.dim() == 1 && grad_penalty.size(0) == problem.batch,
                    "fastcae: grad_penalty must have shape (", problem.batch, ",), got ", grad_penalty.sizes());
  const auto [need_preact, need_noisy, need_norms] = output_mask;
  return {grad_penalty.to(problem.preact.scalar_type()),
          need_preact ? at::empty_like(problem.preact) : at::Tensor(),
          need_noisy ? at::empty_like(problem.noisy_preact) : at::Tensor(),
          at::zeros({backward_num_chunks(problem.batch), problem.hidden}, problem.preact.options()),
          backward_chunk_rows(problem.batch),
          backward_num_chunks(problem.batch)};
}

HessianBackwardResult finish_hessian_backward(const HessianProblem& problem,
                                              const HessianBackwardState& state, bool need_row_norms_sq) {
  at::Tensor grad_norms;
  if (need_row_norms_sq) {
    grad_norms = state.partials.sum(0).mul_(problem.copies > 0 ? 1.0 / problem.copies : 0.0);
  }
  return {state.grad_preact, state.grad_noisy_preact, grad_norms};
}

}  // namespace fastcae
