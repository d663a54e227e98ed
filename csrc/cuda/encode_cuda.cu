// Fused CUDA kernels of the contractive encoder.
//
// The GEMMs go through cuBLAS (at::addmm / at::mm, honouring PyTorch's TF32
// setting); everything else is one kernel per direction:
//
// Forward:  row_norms_sq_kernel   ‖W_j‖², one warp per row of W;
//           z = addmm(b, x, Wᵀ)    cuBLAS, z in the inputs' dtype (as
//                                 torch.sigmoid(F.linear(...)) rounds it);
//           activate_kernel       one block per row of z: overwrites z with h and
//                                 reduces Σ_j φ'(z_bj)² ‖W_j‖² (fixed order, no atomics).
// Backward: grad_preact_kernel    one thread per pack of hidden units and chunk of
//                                 rows: writes dz (the one B×H temporary) and the
//                                 chunk's Σ_b dz and Σ_b g_p φ'² per unit;
//           the chunk sums are added in order, then dx = dz W and
//           dW = diag(2 Σ_b g_p φ'²) W + dzᵀ x (finish_encode_backward, shared with the CPU).
// Both elementwise kernels (passes.cuh, shared with the activate op) move 16
// bytes per access where the rows allow it.
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
#include "passes.cuh"
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

  at::Tensor row_norms_sq = row_norms_sq_cuda(weight);
  at::Tensor code = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  TORCH_INTERNAL_ASSERT(code.is_contiguous());
  at::Tensor penalty = at::empty({batch}, row_norms_sq.options());
  launch_activate(code, code, row_norms_sq, penalty, activation);
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
  launch_grad_preact(state, activation);
  return finish_encode_backward(state, state.partials.sum(0), x, weight, output_mask);
}

}  // namespace fastcae
