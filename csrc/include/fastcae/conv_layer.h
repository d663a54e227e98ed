// The convolutional layer's CPU epilogue as a C++ autograd node, and the whole
// layer's plain call, for fastcae/conv.py (pybind functions of fastcae._C, not ops):
//
//   conv2d_epilogue_in_place(z, weight, input_hw, stride, pad_before, dilation, activation, channels_last)
//       -> (h, the same tensor as z, p (B,)): the kernel ops fastcae::conv2d_activate_
//          and conv2d_activate_backward (fastcae/conv_norms.h, through the dispatcher)
//          under one autograd node, differentiable with respect to z and K (through N).
//          Where the backward must itself be differentiable (create_graph, a
//          torch.func transform), it calls the closed form in ATen ops
//          (fastcae.ops.conv_norms.differentiable_epilogue_grads).
//
//   conv2d_encode_cpu(x, weight, bias, stride, padding, dilation, groups, activation)
//       -> (code h, penalty p) as encode_conv2d returns them, or None
//
// conv2d_encode_cpu runs what encode_conv2d's Python path runs for the "cpu"
// backend, from one call: at::conv2d (autograd records it as for F.conv2d),
// then the epilogue above. It returns None where the call is not the plain one
// it serves, and the caller then takes the Python path, which validates
// (raising the errors that name the argument) and handles everything else:
// arguments that check_conv2d_args (fastcae/_validation.py) would reject or
// that are not plain CPU tensors and Python ints, pairs and strings; autocast
// on the CPU; a torch.func transform, or a __torch_function__ /
// __torch_dispatch__ mode or tensor subclass, which must see the ops one by
// one. The caller checks what only Python knows: the backend ("cpu", or
// "auto" resolving to it), torch.compile tracing and forward-mode AD.
//
// Why: at the image-autoencoder layer of benchmarks/conv.py on a 2-core VM,
// the Python path's validation, dispatch and torch.autograd.Function cost ~8%
// of the forward and ~3% of a training step, run after the convolutions
// have flushed the interpreter's data from the caches.
#pragma once

#include <torch/extension.h>

#include <array>
#include <string>

namespace fastcae {

pybind11::tuple conv2d_epilogue_in_place(at::Tensor preact, const at::Tensor& weight,
                                         const std::array<int64_t, 2>& input_hw, const std::array<int64_t, 2>& stride,
                                         const std::array<int64_t, 2>& pad_before,
                                         const std::array<int64_t, 2>& dilation, const std::string& activation,
                                         bool channels_last);

pybind11::object conv2d_encode_cpu(pybind11::handle x, pybind11::handle weight, pybind11::handle bias,
                                   pybind11::handle stride, pybind11::handle padding, pybind11::handle dilation,
                                   pybind11::handle groups, pybind11::handle activation);

}  // namespace fastcae
