// The conv_norms op's front end: its schemas, argument checks and the kernel
// that serves each device (the CPU only: csrc/cpu/conv_norms_cpu.cpp). The
// contract is in fastcae/conv_norms.h; the fake kernels and the autograd are
// registered from Python (fastcae/ops/conv_norms.py).
#include <ATen/ATen.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include "fastcae/conv_norms.h"

namespace fastcae {

void check_conv_norms_args(const at::Tensor& weight, at::IntArrayRef input_hw, at::IntArrayRef stride,
                           at::IntArrayRef pad_before, at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(weight.dim() == 4, "fastcae: weight must be 4-D (out_channels, in_channels / groups, "
                    "kernel_height, kernel_width), got shape ", weight.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(weight.scalar_type()), "fastcae: weight must be floating point, got ",
                   weight.scalar_type());
  for (const auto& [name, pair, minimum] :
       {std::tuple<const char*, at::IntArrayRef, int64_t>{"input_hw", input_hw, 0},
        {"stride", stride, 1}, {"pad_before", pad_before, 0}, {"dilation", dilation, 1}}) {
    TORCH_CHECK_VALUE(pair.size() == 2 && pair[0] >= minimum && pair[1] >= minimum, "fastcae: ", name,
                      " must be two integers >= ", minimum, ", got ", pair);
  }
}

void check_conv_activate_inputs(const at::Tensor& preact, const at::Tensor& weight, bool channels_last) {
  TORCH_CHECK_VALUE(preact.dim() == 4, "fastcae: preact must be 4-D (batch, out_channels, height, width), got shape ",
                    preact.sizes());
  TORCH_CHECK_VALUE(preact.size(1) == weight.size(0), "fastcae: preact has ", preact.size(1),
                    " channels but weight has ", weight.size(0), " output channels");
  TORCH_CHECK_TYPE(preact.scalar_type() == weight.scalar_type(), "fastcae: preact is ", preact.scalar_type(),
                   " but weight is ", weight.scalar_type());
  TORCH_CHECK_VALUE(preact.device() == weight.device(), "fastcae: preact is on ", preact.device(),
                    " but weight on ", weight.device());
  const auto layout = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  TORCH_CHECK_VALUE(preact.is_contiguous(layout), "fastcae: preact must be ",
                    channels_last ? "channels-last" : "contiguous", " (as channels_last says)");
}

TORCH_LIBRARY_FRAGMENT(fastcae, m) {
  m.def(
      "conv2d_activate_(Tensor(a!) preact, Tensor weight, int[2] input_hw, int[2] stride, int[2] pad_before, "
      "int[2] dilation, str activation, bool channels_last) -> (Tensor penalty, Tensor unit_norms_sq)");
  m.def(
      "conv2d_activate_backward(Tensor? grad_code, Tensor? grad_penalty, Tensor code, Tensor unit_norms_sq, "
      "Tensor weight, int[2] input_hw, int[2] stride, int[2] pad_before, int[2] dilation, str activation, "
      "bool channels_last, bool[2] output_mask) -> (Tensor grad_preact, Tensor grad_weight)");
}

// Kernels, not differentiable ops (see csrc/encode.cpp).
TORCH_LIBRARY_IMPL(fastcae, Autograd, m) {
  m.impl("conv2d_activate_", torch::autograd::autogradNotImplementedFallback());
  m.impl("conv2d_activate_backward", torch::autograd::autogradNotImplementedFallback());
}

TORCH_LIBRARY_IMPL(fastcae, CPU, m) {
  m.impl("conv2d_activate_", &conv2d_activate_inplace_cpu);
  m.impl("conv2d_activate_backward", &conv2d_activate_backward_cpu);
}

}  // namespace fastcae
