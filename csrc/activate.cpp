// The activate op's front end: its schemas and the kernel that serves each
// device (csrc/cpu/activate_cpu.cpp, csrc/cuda/activate_cuda.cu). The contract
// is in fastcae/activate.h; the fake kernels and the autograd are registered
// from Python (fastcae/ops/activate.py).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "fastcae/activate.h"

namespace fastcae {

TORCH_LIBRARY_FRAGMENT(fastcae, m) {
  m.def("activate_forward(Tensor preact, Tensor unit_norms_sq, str activation) -> (Tensor code, Tensor penalty)");
  m.def("activate_forward_(Tensor(a!) preact, Tensor unit_norms_sq, str activation) -> Tensor penalty");
  m.def(
      "activate_backward(Tensor? grad_code, Tensor? grad_penalty, Tensor code, Tensor unit_norms_sq, "
      "str activation, bool[2] output_mask) -> (Tensor grad_preact, Tensor grad_unit_norms_sq)");
}

// Kernels, not differentiable ops (see csrc/encode.cpp).
TORCH_LIBRARY_IMPL(fastcae, Autograd, m) {
  m.impl("activate_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("activate_forward_", torch::autograd::autogradNotImplementedFallback());
  m.impl("activate_backward", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(fastcae, CPU, m) {
  m.impl("activate_forward", &activate_forward_cpu);
  m.impl("activate_forward_", &activate_forward_inplace_cpu);
  m.impl("activate_backward", &activate_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(fastcae, CUDA, m) {
  m.impl("activate_forward", &activate_forward_cuda);
  m.impl("activate_backward", &activate_backward_cuda);
}
#endif

}  // namespace fastcae
