// The encode op's front end: its schemas and the kernel that serves each
// device (csrc/cpu/encode_cpu.cpp, csrc/cuda/encode_cuda.cu). The contract is
// in fastcae/encode.h; the fake kernels and the autograd are registered from
// Python (fastcae/ops/encode.py).
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "fastcae/encode.h"

namespace fastcae {

TORCH_LIBRARY_FRAGMENT(fastcae, m) {
  m.def(
      "encode_forward(Tensor x, Tensor weight, Tensor? bias, str activation) "
      "-> (Tensor code, Tensor penalty, Tensor row_norms_sq)");
  m.def(
      "encode_backward(Tensor? grad_code, Tensor? grad_penalty, Tensor x, Tensor weight, "
      "Tensor code, Tensor row_norms_sq, str activation, bool[3] output_mask) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}

// Kernels, not differentiable ops: a gradient through a direct call is a clear
// error (fastcae.encode is the differentiable op), never a silent zero.
TORCH_LIBRARY_IMPL(fastcae, Autograd, m) {
  m.impl("encode_forward", torch::autograd::autogradNotImplementedFallback());
  m.impl("encode_backward", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(fastcae, CPU, m) {
  m.impl("encode_forward", &encode_forward_cpu);
  m.impl("encode_backward", &encode_backward_cpu);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(fastcae, CUDA, m) {
  m.impl("encode_forward", &encode_forward_cuda);
  m.impl("encode_backward", &encode_backward_cuda);
}
#endif

}  // namespace fastcae
