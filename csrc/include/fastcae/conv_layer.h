// The convolutional layer's eager CPU call where nothing needs autograd, in one
// call from Python: fastcae.encode_conv2d's fast path (fastcae/conv.py).
//
//   conv2d_encode_no_grad(x, weight, bias, stride, padding, dilation, groups, activation)
//       -> (code h, penalty p) as encode_conv2d returns them, or None
//
// None where the call is not the plain one this path serves, and the caller
// then takes the Python path, which validates (raising the errors that name
// the argument) and handles everything else: arguments that check_conv2d_args
// (fastcae/_validation.py) would reject or that are not plain CPU tensors and
// Python ints, pairs and strings; anything that needs autograd (grad mode with
// a tensor that requires grad); autocast on the CPU; a torch.func transform,
// or a __torch_function__ / __torch_dispatch__ mode or tensor subclass, which
// must see the ops one by one. The caller checks what only Python knows: the
// backend ("cpu", or "auto" resolving to it), torch.compile tracing and
// forward-mode AD.
//
// Otherwise it runs what the Python path runs for the "cpu" backend: F.conv2d
// (at::conv2d), then the conv_norms op's in-place epilogue (h over z, and p),
// calling its CPU kernel directly (fastcae/conv_norms.h), so the results are
// the same to the bit. At the image-autoencoder layer of benchmarks/conv.py
// the Python path's validation, dispatch and op call cost ~8% of the
// forward, on a 2-core VM whose caches the convolution has just flushed.
#pragma once

#include <pybind11/pybind11.h>

namespace fastcae {

pybind11::object conv2d_encode_no_grad(pybind11::handle x, pybind11::handle weight, pybind11::handle bias,
                                       pybind11::handle stride, pybind11::handle padding,
                                       pybind11::handle dilation, pybind11::handle groups,
                                       pybind11::handle activation);

}  // namespace fastcae
