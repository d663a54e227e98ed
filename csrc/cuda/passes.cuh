// The fused passes of the encode op's CUDA kernels, shared with the activate op
// (csrc/cuda/activate_cuda.cu), which runs them on given pre-activations:
//
//   activate_kernel      one block per row of z: h = φ(z) and the row's penalty
//                        Σ_j φ'(z_bj)² N_j (fixed order, no atomics);
//   grad_preact_kernel   one thread per pack of units and chunk of rows: dz and
//                        the chunk's Σ_b dz and Σ_b g_p φ'² per unit;
//
// and their launchers. N_j is ‖W_j‖² for the encode op. Both kernels move 16
// bytes per access where the rows allow it. Indexing is int64; launches are on
// PyTorch's current stream and checked.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <initializer_list>
#include <type_traits>

#include "cuda_kernels.cuh"
#include "fastcae/cae_math.h"
#include "fastcae/dispatch.h"
#include "fastcae/encode.h"

namespace fastcae {
namespace {

using namespace cuda;  // cuda_kernels.cuh

// Threads per row of the forward's activate_kernel.
constexpr int kActivateThreads = 128;

// Turns one row of z (B, H) per block into h, written to code (the same buffer
// for the encode op, which overwrites x Wᵀ in place), and writes its penalty.
// kVec elements per access (16 bytes where the rows allow it): several
// loads in flight per thread keep HBM busy. The row's penalty is each
// thread's sum, then block_sum's fixed order: deterministic.
template <Activation A, typename scalar_t, typename acc_t, int kVec>
__global__ void __launch_bounds__(kActivateThreads)
    activate_kernel(const scalar_t* preact, scalar_t* code, const acc_t* __restrict__ row_norms_sq,
                    acc_t* __restrict__ penalty, int64_t hidden) {
  using Packed = Pack<scalar_t, kVec>;
  const int64_t row_start = static_cast<int64_t>(blockIdx.x) * hidden;
  const Packed* in_row = reinterpret_cast<const Packed*>(preact + row_start);
  Packed* row = reinterpret_cast<Packed*>(code + row_start);
  acc_t sum = 0;
  for (int64_t pack = threadIdx.x; pack < hidden / kVec; pack += kActivateThreads) {
    Packed values = in_row[pack];
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const CodeAndSlope<acc_t> value = ActivationMath<A>::forward(static_cast<acc_t>(values.values[i]));
      values.values[i] = static_cast<scalar_t>(value.code);
      sum += penalty_term(value.slope, row_norms_sq[pack * kVec + i]);
    }
    row[pack] = values;
  }
  sum = block_sum<kActivateThreads / kWarpSize>(sum);
  if (threadIdx.x == 0) penalty[blockIdx.x] = sum;
}

// dz for a chunk of rows and kVec consecutive hidden units per thread (16-byte
// accesses where the rows allow it, coalesced along H), plus the chunk's
// per-unit sums partials[chunk] = (Σ dz, Σ g_p φ'²), rows added in order.
template <Activation A, bool kHasGradCode, typename scalar_t, typename acc_t, int kVec>
__global__ void grad_preact_kernel(const scalar_t* __restrict__ grad_code,
                                   const acc_t* __restrict__ grad_penalty, int64_t grad_penalty_stride,
                                   const scalar_t* __restrict__ code,
                                   const acc_t* __restrict__ row_norms_sq,
                                   scalar_t* __restrict__ grad_preact, acc_t* __restrict__ partials,
                                   int64_t batch, int64_t hidden, int64_t chunk_rows) {
  using Packed = Pack<scalar_t, kVec>;
  const int64_t pack = static_cast<int64_t>(blockIdx.x) * kUnitsPerBlock + threadIdx.x;
  const int64_t chunk = blockIdx.y;
  if (pack >= hidden / kVec) return;
  const int64_t first_unit = pack * kVec;
  acc_t norm[kVec], grad_bias_sum[kVec], row_scale_sum[kVec];
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    norm[i] = row_norms_sq[first_unit + i];
    grad_bias_sum[i] = 0;
    row_scale_sum[i] = 0;
  }
  const int64_t packs_per_row = hidden / kVec;
  const int64_t row_end = min(batch, (chunk + 1) * chunk_rows);
  for (int64_t row = chunk * chunk_rows; row < row_end; ++row) {
    const int64_t index = row * packs_per_row + pack;
    const Packed h = reinterpret_cast<const Packed*>(code)[index];
    Packed grad_code_bj;
    if constexpr (kHasGradCode) grad_code_bj = reinterpret_cast<const Packed*>(grad_code)[index];
    const acc_t grad_penalty_b = grad_penalty ? grad_penalty[row * grad_penalty_stride] : acc_t(0);
    Packed out;
#pragma unroll
    for (int i = 0; i < kVec; ++i) {
      const acc_t code_value = static_cast<acc_t>(h.values[i]);
      const acc_t slope = ActivationMath<A>::slope_from_code(code_value);
      const acc_t upstream = kHasGradCode ? static_cast<acc_t>(grad_code_bj.values[i]) : acc_t(0);
      const acc_t value = grad_preactivation<A>(upstream, grad_penalty_b, code_value, slope, norm[i]);
      out.values[i] = static_cast<scalar_t>(value);
      grad_bias_sum[i] += value;
      row_scale_sum[i] += grad_penalty_b * slope * slope;
    }
    reinterpret_cast<Packed*>(grad_preact)[index] = out;
  }
#pragma unroll
  for (int i = 0; i < kVec; ++i) {
    partials[(chunk * 2) * hidden + first_unit + i] = grad_bias_sum[i];
    partials[(chunk * 2 + 1) * hidden + first_unit + i] = row_scale_sum[i];
  }
}

// Calls fn(std::integral_constant<int, kVec>{}) with the widest pack (16 bytes)
// that every row of these (rows, hidden) tensors allows, else 1.
template <typename scalar_t, typename Fn>
void dispatch_vector_width(int64_t hidden, std::initializer_list<const void*> tensors, Fn&& fn) {
  constexpr int kWide = vector_width<scalar_t>();
  bool wide = kWide > 1;
  for (const void* data : tensors) {
    wide = wide && (data == nullptr || packs_fit(data, hidden, kWide, sizeof(scalar_t)));
  }
  if (wide) {
    fn(std::integral_constant<int, kWide>{});
  } else {
    fn(std::integral_constant<int, 1>{});
  }
}

// h = φ(z) of preact (B, H) into code (may be preact itself) and penalty (B,),
// with row_norms_sq (H,); all contiguous, on the current device.
inline void launch_activate(const at::Tensor& preact, at::Tensor& code, const at::Tensor& row_norms_sq,
                            at::Tensor& penalty, Activation activation) {
  const int64_t batch = preact.size(0);
  const int64_t hidden = preact.size(1);
  if (batch == 0) return;
  if (hidden == 0) {
    penalty.zero_();
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, preact.scalar_type(), "launch_activate", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      dispatch_vector_width<scalar_t>(hidden, {preact.const_data_ptr(), code.const_data_ptr()}, [&](auto vec) {
        constexpr int kVec = decltype(vec)::value;
        activate_kernel<A, scalar_t, acc_t, kVec><<<batch, kActivateThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
            preact.const_data_ptr<scalar_t>(), code.mutable_data_ptr<scalar_t>(),
            row_norms_sq.const_data_ptr<acc_t>(), penalty.mutable_data_ptr<acc_t>(), hidden);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  });
}

// The backward's fused pass: fills state.grad_preact and state.partials (one per chunk).
inline void launch_grad_preact(EncodeBackwardState& state, Activation activation) {
  if (state.batch == 0 || state.hidden == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, state.code.scalar_type(), "launch_grad_preact", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool has_grad_code = state.grad_code.defined();
    const bool has_grad_penalty = state.grad_penalty.defined();
    const acc_t* grad_penalty_data = has_grad_penalty ? state.grad_penalty.const_data_ptr<acc_t>() : nullptr;
    const int64_t grad_penalty_stride = has_grad_penalty ? state.grad_penalty.stride(0) : 0;
    const void* grad_code_data = has_grad_code ? state.grad_code.const_data_ptr() : nullptr;
    const std::initializer_list<const void*> rows = {state.code.const_data_ptr(), grad_code_data,
                                                      state.grad_preact.const_data_ptr()};
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      dispatch_bool(has_grad_code, [&](auto has_grad_code_tag) {
        constexpr bool kHasGradCode = decltype(has_grad_code_tag)::value;
        dispatch_vector_width<scalar_t>(state.hidden, rows, [&](auto vec) {
          constexpr int kVec = decltype(vec)::value;
          const dim3 grid(blocks_for(state.hidden / kVec, kUnitsPerBlock), state.num_chunks);
          grad_preact_kernel<A, kHasGradCode, scalar_t, acc_t, kVec>
              <<<grid, kUnitsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(
                  kHasGradCode ? state.grad_code.const_data_ptr<scalar_t>() : nullptr, grad_penalty_data,
                  grad_penalty_stride, state.code.const_data_ptr<scalar_t>(),
                  state.row_norms_sq.const_data_ptr<acc_t>(), state.grad_preact.mutable_data_ptr<scalar_t>(),
                  state.partials.mutable_data_ptr<acc_t>(), state.batch, state.hidden, state.chunk_rows);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
    });
  });
}

}  // namespace
}  // namespace fastcae
