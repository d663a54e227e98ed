// The CAE+H op's front end: its schemas and the kernel that serves each
// device (csrc/cpu/hessian_cpu.cpp, csrc/cuda/hessian_cuda.cu). The contract
// is in fastcae/hessian.h; the fake kernels and the autograd are registered
// from Python (fastcae/ops/hessian.py).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "fastcae/hessian.h"

namespace fastcae {

TORCH_LIBRARY_FRAGMENT(fastcae, m) {
  m.def(
      "hessian_forward(Tensor preact, Tensor noisy_preact, Tensor row_norms_sq, str activation) "
      "-> Tensor");
  m.def(
      "hessian_backward(Tensor grad_penalty, Tensor preact, Tensor noisy_preact, Tensor row_norms_sq, "
      "str activation, bool[3] output_mask) "
      "-> (Tensor grad_preact, Tensor grad_noisy_preact, Tensor grad_row_norms_sq)");
}

// Kernels, not differentiable ops: a gradient through a direct call is a clear
// error (fastcae.penalty_hessian is the differentiable op), never a silent zero.
TORCH_LIBRARY_IMPL(fastcae, Autograd, m) {
  m.impl("hessian_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("hessian_backward", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(fastcae, CPU, m) {
  m.impl("hessian_forward", &hessian_forward_cpu);
  m.impl("hessian_backward", &hessian_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(fastcae, CUDA, m) {
  m.impl("hessian_forward", &hessian_forward_cuda);
  m.impl("hessian_backward", &hessian_backward_cuda);
}
#endif

}  // namespace fastcae
