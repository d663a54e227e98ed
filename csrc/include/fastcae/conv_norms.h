// The conv_norms op: N, the squared norm of each output unit's row of a
// convolution's Jacobian ∂z/∂x, straight from the kernel K, and its gradient.
//
// Unit u = (c, i, j) of z = conv2d(x, K, ...) reads the input through the taps
// (k, l) of K_c that land inside x: 0 ≤ i·s_h − p_h + k·d_h < H_in, and the
// same in width. Those form a range of k for each i and a range of l for each
// j (K(i), L(j)), so with S = Σ_{c'} K² (C_out, kH, kW),
//
//   conv2d_unit_norms_sq(weight, input_hw, output_hw, stride, pad_before, dilation, channels_last)
//       -> N_cij = Σ_{k ∈ K(i)} Σ_{l ∈ L(j)} S_ckl, flat (U,) in the order (c, i, j), or
//          (i, j, c) with channels_last (z's memory order), in the accumulation
//          dtype of weight's dtype
//   conv2d_unit_norms_sq_backward(grad_unit_norms_sq (U,), weight, ...same geometry)
//       -> dK = 2 K ⊙ dS, dS_ckl = Σ_{i: k ∈ K(i)} Σ_{j: l ∈ L(j)} dN_cij, in weight's dtype
//
// The rows i that share a tap range K(i) (all but a few at the border) share
// their N_c row, so each is made once per range and copied: O(C_out·H_out·W_out)
// plus a term in the kernel size, in fixed orders whatever the thread count. CPU kernels, not differentiable ops: fastcae/ops/conv_epilogue.py
// holds their autograd (the convolutional layer's CPU epilogue in one node);
// fastcae/conv.py has the same N in ATen ops for every device.
//
// Files of the op: csrc/conv_norms.cpp (schemas, checks), csrc/cpu/conv_norms_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>

namespace fastcae {

// The geometry of one axis: output position i reads input positions i·stride − pad_before + k·dilation.
struct ConvAxis {
  int64_t input_size;
  int64_t output_size;
  int64_t kernel_size;
  int64_t stride;
  int64_t pad_before;
  int64_t dilation;
};

void check_conv_norms_args(const at::Tensor& weight, at::IntArrayRef input_hw, at::IntArrayRef output_hw,
                           at::IntArrayRef stride, at::IntArrayRef pad_before, at::IntArrayRef dilation);

at::Tensor conv2d_unit_norms_sq_cpu(const at::Tensor& weight, at::IntArrayRef input_hw, at::IntArrayRef output_hw,
                                    at::IntArrayRef stride, at::IntArrayRef pad_before, at::IntArrayRef dilation,
                                    bool channels_last);
at::Tensor conv2d_unit_norms_sq_backward_cpu(const at::Tensor& grad_unit_norms_sq, const at::Tensor& weight,
                                             at::IntArrayRef input_hw, at::IntArrayRef output_hw,
                                             at::IntArrayRef stride, at::IntArrayRef pad_before,
                                             at::IntArrayRef dilation, bool channels_last);

}  // namespace fastcae
