// Fused CUDA kernels of the contractive encoder.
//
// The GEMMs go through cuBLAS (at::addmm / at::mm, honouring PyTorch's TF32
// setting); everything else is one kernel per direction:
//
// Forward:  row_norms_sq_kernel   ‖W_j‖², one warp per row of W;
//           z = addmm(b, x, Wᵀ)    cuBLAS;
//           activate_kernel       one warp per row of z: overwrites z with h and
//                                 reduces Σ_j φ'(z_bj)² ‖W_j‖² by warp shuffles
//                                 (fixed order, no atomics).
// Backward: grad_preact_kernel    one thread per hidden unit and chunk of rows:
//                                 writes dz (the one B×H temporary) and the
//                                 chunk's Σ_b dz and Σ_b g_p φ'² per unit;
//           the chunk sums are added in order, then dx = dz W and
//           dW = diag(2 Σ_b g_p φ'²) W + dzᵀ x (finish_encode_backward, shared with the CPU).
//
// Indexing is int64 throughout; launches are on PyTorch's current stream and
// checked. The per-element math is cae_math.h, shared with the CPU kernels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_kernels.cuh"
#include "fastcae/cae_math.h"
#include "fastcae/dispatch.h"
#include "fastcae/encode.h"

namespace fastcae {
namespace {

using namespace cuda;  // cuda_kernels.cuh

// norms[j] = ‖W_j‖² for a contiguous (rows, cols) W: one warp per row.
template <typename scalar_t, typename acc_t>
__global__ void row_norms_sq_kernel(const scalar_t* __restrict__ weight, acc_t* __restrict__ norms,
                                    int64_t rows, int64_t cols) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= rows) return;  // whole warps exit together
  const scalar_t* values = weight + row * cols;
  acc_t sum = 0;
  for (int64_t k = lane; k < cols; k += kWarpSize) {
    const acc_t w = static_cast<acc_t>(values[k]);
    sum += w * w;
  }
  sum = warp_sum(sum);
  if (lane == 0) norms[row] = sum;
}

// Turns one row of z (B, H) per warp into h in place and writes its penalty.
template <Activation A, typename scalar_t, typename acc_t>
__global__ void activate_kernel(scalar_t* __restrict__ code, const acc_t* __restrict__ row_norms_sq,
                                acc_t* __restrict__ penalty, int64_t batch, int64_t hidden) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= batch) return;
  scalar_t* code_row = code + row * hidden;
  acc_t sum = 0;
  for (int64_t j = lane; j < hidden; j += kWarpSize) {
    const CodeAndSlope<acc_t> value = ActivationMath<A>::forward(static_cast<acc_t>(code_row[j]));
    code_row[j] = static_cast<scalar_t>(value.code);
    sum += penalty_term(value.slope, row_norms_sq[j]);
  }
  sum = warp_sum(sum);
  if (lane == 0) penalty[row] = sum;
}

// dz for a chunk of rows and kUnitsPerBlock hidden units (one per thread, so
// loads and stores are coalesced along H), plus the chunk's per-unit sums
// partials[chunk] = (Σ dz, Σ g_p φ'²).
template <Activation A, bool kHasGradCode, typename scalar_t, typename acc_t>
__global__ void grad_preact_kernel(const scalar_t* __restrict__ grad_code,
                                   const acc_t* __restrict__ grad_penalty, int64_t grad_penalty_stride,
                                   const scalar_t* __restrict__ code,
                                   const acc_t* __restrict__ row_norms_sq,
                                   scalar_t* __restrict__ grad_preact, acc_t* __restrict__ partials,
                                   int64_t batch, int64_t hidden, int64_t chunk_rows) {
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kUnitsPerBlock + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (unit >= hidden) return;
  const acc_t norm = row_norms_sq[unit];
  const int64_t row_end = min(batch, (chunk + 1) * chunk_rows);
  acc_t grad_bias_sum = 0;
  acc_t row_scale_sum = 0;
  for (int64_t row = chunk * chunk_rows; row < row_end; ++row) {
    const int64_t index = row * hidden + unit;
    const acc_t h = static_cast<acc_t>(code[index]);
    const acc_t slope = ActivationMath<A>::slope_from_code(h);
    const acc_t grad_code_bj = kHasGradCode ? static_cast<acc_t>(grad_code[index]) : acc_t(0);
    const acc_t grad_penalty_b = grad_penalty ? grad_penalty[row * grad_penalty_stride] : acc_t(0);
    const acc_t value = grad_preactivation<A>(grad_code_bj, grad_penalty_b, h, slope, norm);
    grad_preact[index] = static_cast<scalar_t>(value);
    grad_bias_sum += value;
    row_scale_sum += grad_penalty_b * slope * slope;
  }
  partials[(chunk * 2) * hidden + unit] = grad_bias_sum;
  partials[(chunk * 2 + 1) * hidden + unit] = row_scale_sum;
}

at::Tensor row_norms_sq_cuda(const at::Tensor& weight) {
  const at::Tensor weight_c = weight.contiguous();
  const int64_t hidden = weight_c.size(0);
  const int64_t in_features = weight_c.size(1);
  at::Tensor norms = at::empty({hidden}, weight.options().dtype(at::toOpMathType(weight.scalar_type())));
  if (hidden == 0) return norms;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "row_norms_sq_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    row_norms_sq_kernel<scalar_t, acc_t>
        <<<blocks_for(hidden, kWarpsPerBlock), kWarpsPerBlock * kWarpSize, 0, at::cuda::getCurrentCUDAStream()>>>(
            weight_c.const_data_ptr<scalar_t>(), norms.mutable_data_ptr<acc_t>(), hidden, in_features);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return norms;
}

}  // namespace

EncodeForwardResult encode_forward_cuda(const at::Tensor& x, const at::Tensor& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        c10::string_view activation_name) {
  check_encode_inputs(x, weight, bias);
  const Activation activation = parse_activation(activation_name);
  const c10::cuda::CUDAGuard device_guard(x.device());
  const int64_t batch = x.size(0);
  const int64_t hidden = weight.size(0);

  at::Tensor row_norms_sq = row_norms_sq_cuda(weight);
  at::Tensor code = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  TORCH_INTERNAL_ASSERT(code.is_contiguous());
  at::Tensor penalty = at::empty({batch}, row_norms_sq.options());
  if (batch == 0) return {code, penalty, row_norms_sq};
  if (hidden == 0) return {code, penalty.zero_(), row_norms_sq};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      activate_kernel<A, scalar_t, acc_t>
          <<<blocks_for(batch, kWarpsPerBlock), kWarpsPerBlock * kWarpSize, 0, at::cuda::getCurrentCUDAStream()>>>(
              code.mutable_data_ptr<scalar_t>(), row_norms_sq.const_data_ptr<acc_t>(),
              penalty.mutable_data_ptr<acc_t>(), batch, hidden);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {code, penalty, row_norms_sq};
}

EncodeBackwardResult encode_backward_cuda(const c10::optional<at::Tensor>& grad_code,
                                          const c10::optional<at::Tensor>& grad_penalty,
                                          const at::Tensor& x, const at::Tensor& weight,
                                          const at::Tensor& code, const at::Tensor& row_norms_sq,
                                          c10::string_view activation_name,
                                          std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard device_guard(x.device());
  EncodeBackwardState state = prepare_encode_backward(grad_code, grad_penalty, x, weight, code, row_norms_sq,
                                                      /*partial_per_chunk=*/true);
  const Activation activation = parse_activation(activation_name);
  if (state.batch > 0 && state.hidden > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const dim3 grid(blocks_for(state.hidden, kUnitsPerBlock), state.num_chunks);
      const bool has_grad_code = state.grad_code.defined();
      const bool has_grad_penalty = state.grad_penalty.defined();
      const acc_t* grad_penalty_data = has_grad_penalty ? state.grad_penalty.const_data_ptr<acc_t>() : nullptr;
      const int64_t grad_penalty_stride = has_grad_penalty ? state.grad_penalty.stride(0) : 0;
      dispatch_activation(activation, [&](auto act) {
        constexpr Activation A = decltype(act)::value;
        dispatch_bool(has_grad_code, [&](auto has_grad_code_tag) {
          constexpr bool kHasGradCode = decltype(has_grad_code_tag)::value;
          grad_preact_kernel<A, kHasGradCode, scalar_t, acc_t>
              <<<grid, kUnitsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
                  kHasGradCode ? state.grad_code.const_data_ptr<scalar_t>() : nullptr, grad_penalty_data,
                  grad_penalty_stride, state.code.const_data_ptr<scalar_t>(),
                  state.row_norms_sq.const_data_ptr<acc_t>(), state.grad_preact.mutable_data_ptr<scalar_t>(),
                  state.partials.mutable_data_ptr<acc_t>(), state.batch, state.hidden, state.chunk_rows);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  }
  return finish_encode_backward(state, state.partials.sum(0), x, weight, output_mask);
}

}  // namespace fastcae
