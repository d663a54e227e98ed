// Fused CUDA kernels of the CAE+H penalty, the twins of csrc/cpu/hessian_cpu.cpp:
// hessian_forward_kernel (one warp per row) and hessian_backward_kernel (one
// thread per hidden unit and chunk of rows). The per-element math is
// cae_math.h; launches are on PyTorch's current stream and checked.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAException.h>

#include "cuda_kernels.cuh"
#include "fastcae/cae_math.h"
#include "fastcae/dispatch.h"
#include "fastcae/hessian.h"

namespace fastcae {
namespace {

using namespace cuda;  // cuda_kernels.cuh

// CAE+H forward: one warp per row b; each lane takes φ'(z_bj) once and
// compares it with its n corrupted copies; warp_sum finishes the row.
template <Activation A, typename scalar_t>
__global__ void hessian_forward_kernel(const scalar_t* __restrict__ preact,
                                       const scalar_t* __restrict__ noisy_preact,
                                       const scalar_t* __restrict__ row_norms_sq,
                                       scalar_t* __restrict__ penalty, int64_t copies, int64_t batch,
                                       int64_t hidden) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (row >= batch) return;
  scalar_t sum = 0;
  for (int64_t j = lane; j < hidden; j += kWarpSize) {
    const scalar_t slope = ActivationMath<A>::forward(preact[row * hidden + j]).slope;
    scalar_t row_sum = 0;
    for (int64_t s = 0; s < copies; ++s) {
      const scalar_t gap = slope - ActivationMath<A>::forward(noisy_preact[(s * batch + row) * hidden + j]).slope;
      row_sum += gap * gap;
    }
    sum += row_sum * row_norms_sq[j];
  }
  sum = warp_sum(sum);
  if (lane == 0) penalty[row] = copies > 0 ? sum / static_cast<scalar_t>(copies) : scalar_t(0);
}

// CAE+H backward: one thread per hidden unit and chunk of rows (coalesced along
// H). Writes dz and dz̃ and the chunk's Σ_b g_b Σ_s Δ² per unit.
template <Activation A, typename scalar_t>
__global__ void hessian_backward_kernel(const scalar_t* __restrict__ grad_penalty, int64_t grad_stride,
                                        const scalar_t* __restrict__ preact,
                                        const scalar_t* __restrict__ noisy_preact,
                                        const scalar_t* __restrict__ row_norms_sq,
                                        scalar_t* __restrict__ grad_preact,
                                        scalar_t* __restrict__ grad_noisy_preact,
                                        scalar_t* __restrict__ partials, int64_t copies, int64_t batch,
                                        int64_t hidden, int64_t chunk_rows) {
  const int64_t unit = static_cast<int64_t>(blockIdx.x) * kUnitsPerBlock + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (unit >= hidden) return;
  const scalar_t norm = row_norms_sq[unit];
  const scalar_t inv_copies = copies > 0 ? scalar_t(1) / static_cast<scalar_t>(copies) : scalar_t(0);
  const int64_t row_end = min(batch, (chunk + 1) * chunk_rows);
  scalar_t unit_sum = 0;
  for (int64_t row = chunk * chunk_rows; row < row_end; ++row) {
    const scalar_t grad_b = grad_penalty[row * grad_stride];
    const scalar_t scale = 2 * grad_b * inv_copies * norm;
    const CodeAndSlope<scalar_t> clean = ActivationMath<A>::forward(preact[row * hidden + unit]);
    scalar_t gap_sum = 0;
    for (int64_t s = 0; s < copies; ++s) {
      const int64_t index = (s * batch + row) * hidden + unit;
      const CodeAndSlope<scalar_t> noisy = ActivationMath<A>::forward(noisy_preact[index]);
      const scalar_t gap = clean.slope - noisy.slope;
      if (grad_noisy_preact != nullptr) {
        grad_noisy_preact[index] = -scale * ActivationMath<A>::curvature_from_code(noisy.code, noisy.slope) * gap;
      }
      gap_sum += gap;
      unit_sum += grad_b * gap * gap;
    }
    if (grad_preact != nullptr) {
      grad_preact[row * hidden + unit] = scale * ActivationMath<A>::curvature_from_code(clean.code, clean.slope) * gap_sum;
    }
  }
  partials[chunk * hidden + unit] = unit_sum;
}

}  // namespace

at::Tensor hessian_forward_cuda(const at::Tensor& preact, const at::Tensor& noisy_preact,
                                const at::Tensor& row_norms_sq, c10::string_view activation_name) {
  const HessianProblem problem = prepare_hessian(preact, noisy_preact, row_norms_sq);
  const Activation activation = parse_activation(activation_name);
  const c10::cuda::CUDAGuard device_guard(preact.device());
  at::Tensor penalty = at::zeros({problem.batch}, problem.preact.options());
  if (problem.batch == 0 || problem.hidden == 0) return penalty;
  AT_DISPATCH_FLOATING_TYPES(problem.preact.scalar_type(), "hessian_forward_cuda", [&] {
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      hessian_forward_kernel<A, scalar_t><<<blocks_for(problem.batch, kWarpsPerBlock), kWarpsPerBlock * kWarpSize,
                                            0, at::cuda::getCurrentCUDAStream()>>>(
          problem.preact.const_data_ptr<scalar_t>(), problem.noisy_preact.const_data_ptr<scalar_t>(),
          problem.row_norms_sq.const_data_ptr<scalar_t>(), penalty.mutable_data_ptr<scalar_t>(), problem.copies,
          problem.batch, problem.hidden);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return penalty;
}

HessianBackwardResult hessian_backward_cuda(const at::Tensor& grad_penalty, const at::Tensor& preact,
                                            const at::Tensor& noisy_preact, const at::Tensor& row_norms_sq,
                                            c10::string_view activation_name,
                                            std::array<bool, 3> output_mask) {
  const HessianProblem problem = prepare_hessian(preact, noisy_preact, row_norms_sq);
  const Activation activation = parse_activation(activation_name);
  const c10::cuda::CUDAGuard device_guard(preact.device());
  HessianBackwardState state = prepare_hessian_backward(problem, grad_penalty, output_mask);
  if (problem.batch > 0 && problem.hidden > 0) {
    AT_DISPATCH_FLOATING_TYPES(problem.preact.scalar_type(), "hessian_backward_cuda", [&] {
      const dim3 grid(blocks_for(problem.hidden, kUnitsPerBlock), state.num_chunks);
      dispatch_activation(activation, [&](auto act) {
        constexpr Activation A = decltype(act)::value;
        hessian_backward_kernel<A, scalar_t><<<grid, kUnitsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
            state.grad_penalty.const_data_ptr<scalar_t>(), state.grad_penalty.stride(0),
            problem.preact.const_data_ptr<scalar_t>(), problem.noisy_preact.const_data_ptr<scalar_t>(),
            problem.row_norms_sq.const_data_ptr<scalar_t>(),
            state.grad_preact.defined() ? state.grad_preact.mutable_data_ptr<scalar_t>() : nullptr,
            state.grad_noisy_preact.defined() ? state.grad_noisy_preact.mutable_data_ptr<scalar_t>() : nullptr,
            state.partials.mutable_data_ptr<scalar_t>(), problem.copies, problem.batch, problem.hidden,
            state.chunk_rows);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return finish_hessian_backward(problem, state, output_mask[2]);
}

}  // namespace fastcae
