// The conv_norms op: N, the squared norm of each output unit's row of a
// convolution's Jacobian ∂z/∂x, straight from the kernel K, and its gradient.
//
// Unit u = (c, i, j) of z = conv2d(x, K, ...) reads the input through the taps
// (k, l) of K_c that land inside x: 0 ≤ i·s_h − p_h + k·d_h < H_in, and the
// same in width. Those form a range of k for each i and a range of l for each
// j (K(i), L(j)), so with S = Σ_{c'} K² (C_out, kH, kW),
//
//   N_cij = Σ_{k ∈ K(i)} Σ_{l ∈ L(j)} S_ckl,   dK = 2 K ⊙ dS,  dS_ckl = Σ_{i: k ∈ K(i)} Σ_{j: l ∈ L(j)} dN_cij.
//
// The rows i that share a tap range K(i) (all but a few at the border) share
// their N_c row, so each is made once per range and copied: O(C_out·H_out·W_out)
// plus a term in the kernel size, in fixed orders whatever the thread count.
//
// Kernel ops (CPU), the convolutional layer's epilogue on its own output z (B, C_out, H_out, W_out):
//
//   conv2d_activate_(preact z, weight K, input_hw, stride, pad_before, dilation, activation, channels_last)
//       -> (penalty p (B,), unit_norms_sq N (U,)): N, then the activate op's in-place
//          forward (fastcae/activate.h) on z viewed as (B, U) in its memory order (z
//          contiguous, or channels-last as flagged); h over z, z's version bumped
//   conv2d_activate_backward(grad_code (B, C, H, W)?, grad_penalty (B,)?, code h, unit_norms_sq,
//                            weight, input_hw, stride, pad_before, dilation, activation,
//                            channels_last, output_mask[2])
//       -> (grad_preact dz (h's shape and layout), grad_weight dK through N, in weight's dtype);
//          undefined where output_mask is false
//
// N is flat in z's memory order, (c, i, j) or (i, j, c), in the accumulation
// dtype of weight's dtype. Not differentiable ops: fastcae/ops/conv_norms.py
// holds their autograd and the same N in ATen ops for every device.
//
// Files of the op: csrc/conv_norms.cpp (schemas, checks), csrc/cpu/conv_norms_cpu.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Optional.h>
#include <c10/util/string_view.h>

#include <array>
#include <tuple>

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

void check_conv_norms_args(const at::Tensor& weight, at::IntArrayRef input_hw, at::IntArrayRef stride,
                           at::IntArrayRef pad_before, at::IntArrayRef dilation);
void check_conv_activate_inputs(const at::Tensor& preact, const at::Tensor& weight, bool channels_last);

std::tuple<at::Tensor, at::Tensor> conv2d_activate_inplace_cpu(at::Tensor& preact, const at::Tensor& weight,
                                                               at::IntArrayRef input_hw, at::IntArrayRef stride,
                                                               at::IntArrayRef pad_before, at::IntArrayRef dilation,
                                                               c10::string_view activation, bool channels_last);
std::tuple<at::Tensor, at::Tensor> conv2d_activate_backward_cpu(
    const c10::optional<at::Tensor>& grad_code, const c10::optional<at::Tensor>& grad_penalty,
    const at::Tensor& code, const at::Tensor& unit_norms_sq, const at::Tensor& weight, at::IntArrayRef input_hw,
    at::IntArrayRef stride, at::IntArrayRef pad_before, at::IntArrayRef dilation, c10::string_view activation,
    bool channels_last, std::array<bool, 2> output_mask);

}  // namespace fastcae
