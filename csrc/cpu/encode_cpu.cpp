// Fused CPU kernels of the contractive encoder.
//
// Forward:  x Wᵀ through ATen's GEMM (MKL/oneDNN), row norms ‖W_j‖² in one
//           pass over W, then ONE pass over x Wᵀ that adds b, overwrites it
//           with h and sums the per-sample penalty Σ_j φ'(z_bj)² ‖W_j‖².
// Backward: ONE pass over h computing dz (the only B×H temporary) together
//           with the per-unit sums Σ_b dz (grad_bias) and Σ_b g_p φ'²
//           (row_scale), then dx = dz W and dW = diag(row_scale) W + dzᵀ x.
//
// Loops are written for the auto-vectorizer (branch-free math from
// cae_math.h, `omp simd` reductions) and compiled in several ISA clones
// (GCC target_clones) that the loader picks for the running CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>

#include "cpu_kernels.h"
#include "fastcae/cae_math.h"
#include "fastcae/encode.h"

namespace fastcae {
namespace {

// ‖W_j‖² of rows [begin, end) of a contiguous (rows, cols) matrix, accumulated
// in acc_t. kLanes independent partial sums (a few vector registers) hide the
// add latency that one accumulator chain would expose; they are combined in a
// fixed order.
template <typename scalar_t, typename acc_t>
FASTCAE_CPU_CLONES void row_norms_sq_rows(const scalar_t* matrix, acc_t* norms, int64_t begin,
                                          int64_t end, int64_t cols) {
  constexpr int64_t kLanes = 32;
  const int64_t body = cols - cols % kLanes;
  for (int64_t row = begin; row < end; ++row) {
    const scalar_t* values = matrix + row * cols;
    acc_t lanes[kLanes] = {};
    for (int64_t k = 0; k < body; k += kLanes) {
#pragma omp simd
      for (int64_t lane = 0; lane < kLanes; ++lane) {
        const acc_t w = static_cast<acc_t>(values[k + lane]);
        lanes[lane] += w * w;
      }
    }
    acc_t sum = 0;
    for (int64_t k = body; k < cols; ++k) {
      const acc_t w = static_cast<acc_t>(values[k]);
      sum += w * w;
    }
    for (int64_t lane = 0; lane < kLanes; ++lane) {
      sum += lanes[lane];
    }
    norms[row] = sum;
  }
}

// Overwrites rows [begin, end) of x Wᵀ (B, H) with h = φ(x Wᵀ + b) and writes
// each row's penalty Σ_j φ'(z_bj)² ‖W_j‖². The bias is added here rather than
// by the GEMM (float32/float64): addmm would first broadcast-copy it into the
// output, an extra pass over B×H.
template <Activation A, typename scalar_t, typename acc_t>
FASTCAE_CPU_CLONES void activate_rows(scalar_t* code, const acc_t* bias, const acc_t* row_norms_sq,
                                      acc_t* penalty, int64_t begin, int64_t end, int64_t cols) {
  for (int64_t b = begin; b < end; ++b) {
    scalar_t* code_row = code + b * cols;
    acc_t sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < cols; ++j) {
      const acc_t preact = static_cast<acc_t>(code_row[j]) + bias[j];
      const CodeAndSlope<acc_t> value = ActivationMath<A>::forward(preact);
      code_row[j] = static_cast<scalar_t>(value.code);
      sum += penalty_term(value.dphi, row_norms_sq[j]);
    }
    penalty[b] = sum;
  }
}

// Rows [begin, end) of the backward pass: writes dz and adds the rows' share
// of Σ_b dz and Σ_b g_p φ'² into one chunk's partial sums.
template <Activation A, bool kHasGradCode, typename scalar_t, typename acc_t>
FASTCAE_CPU_CLONES void grad_preactivation_rows(const scalar_t* grad_code,
                                                const acc_t* grad_penalty,
                                                int64_t grad_penalty_stride, const scalar_t* code,
                                                const acc_t* row_norms_sq, scalar_t* grad_preact,
                                                acc_t* grad_bias_partial, acc_t* row_scale_partial,
                                                int64_t begin, int64_t end, int64_t cols) {
  for (int64_t b = begin; b < end; ++b) {
    const acc_t grad_penalty_b = grad_penalty ? grad_penalty[b * grad_penalty_stride] : acc_t(0);
    const scalar_t* code_row = code + b * cols;
    scalar_t* grad_preact_row = grad_preact + b * cols;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) {
      const acc_t h = static_cast<acc_t>(code_row[j]);
      const acc_t dphi = ActivationMath<A>::dphi(h);
      const acc_t grad_code_bj = kHasGradCode ? static_cast<acc_t>(grad_code[b * cols + j]) : acc_t(0);
      const acc_t grad_preact_bj =
          grad_preactivation<A>(grad_code_bj, grad_penalty_b, h, dphi, row_norms_sq[j]);
      grad_preact_row[j] = static_cast<scalar_t>(grad_preact_bj);
      grad_bias_partial[j] += grad_preact_bj;
      row_scale_partial[j] += grad_penalty_b * dphi * dphi;
    }
  }
}

at::Tensor row_norms_sq_cpu(const at::Tensor& weight) {
  const at::Tensor weight_c = weight.contiguous();
  const int64_t hidden = weight_c.size(0);
  const int64_t in_features = weight_c.size(1);
  at::Tensor out = at::empty({hidden}, weight.options().dtype(at::toOpMathType(weight.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, weight.scalar_type(), "row_norms_sq", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* w = weight_c.const_data_ptr<scalar_t>();
    acc_t* norms = out.mutable_data_ptr<acc_t>();
    at::parallel_for(0, hidden, rows_per_task(in_features), [&](int64_t begin, int64_t end) {
      row_norms_sq_rows<scalar_t, acc_t>(w, norms, begin, end, in_features);
    });
  });
  return out;
}

}  // namespace

EncodeForwardResult encode_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias,
                                       c10::string_view activation_name) {
  check_forward_inputs(x, weight, bias);
  const Activation activation = parse_activation(activation_name);
  const int64_t batch = x.size(0);
  const int64_t hidden = weight.size(0);

  // In float32/float64 the fused pass adds b to x Wᵀ. In half precision the
  // GEMM adds it while it still accumulates in float32: rounding x Wᵀ to
  // bfloat16 first would move pre-activations near 0 across it.
  const bool bias_in_pass = bias.has_value() && !at::isReducedFloatingType(x.scalar_type());
  at::Tensor code = bias.has_value() && !bias_in_pass ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  // After the GEMM, which has just streamed W through the caches.
  at::Tensor row_norms_sq = row_norms_sq_cpu(weight);
  TORCH_INTERNAL_ASSERT(code.is_contiguous());
  at::Tensor penalty = at::empty({batch}, row_norms_sq.options());
  const at::Tensor bias_acc = bias_in_pass ? bias->to(row_norms_sq.scalar_type()).contiguous()
                                           : at::zeros({hidden}, row_norms_sq.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    scalar_t* code_data = code.mutable_data_ptr<scalar_t>();
    const acc_t* norms = row_norms_sq.const_data_ptr<acc_t>();
    const acc_t* bias_data = bias_acc.const_data_ptr<acc_t>();
    acc_t* penalty_data = penalty.mutable_data_ptr<acc_t>();
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      at::parallel_for(0, batch, rows_per_task(hidden), [&](int64_t begin, int64_t end) {
        activate_rows<A, scalar_t, acc_t>(code_data, bias_data, norms, penalty_data, begin, end, hidden);
      });
    });
  });
  return {code, penalty, row_norms_sq};
}

EncodeBackwardResult encode_backward_cpu(const c10::optional<at::Tensor>& grad_code,
                                         const c10::optional<at::Tensor>& grad_penalty,
                                         const at::Tensor& x, const at::Tensor& weight,
                                         const at::Tensor& code, const at::Tensor& row_norms_sq,
                                         c10::string_view activation_name,
                                         std::array<bool, 3> output_mask) {
  EncodeBackwardState state = prepare_encode_backward(grad_code, grad_penalty, x, weight, code, row_norms_sq);
  const Activation activation = parse_activation(activation_name);
  // Per-unit sums are reduced over the batch in fixed chunks of rows whose size
  // depends only on the batch size: the result is the same bitwise whatever
  // the thread count.
  const int64_t hidden = state.hidden;
  const int64_t batch = state.batch;
  const int64_t chunk_rows = state.chunk_rows;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* code_data = state.code.const_data_ptr<scalar_t>();
    const scalar_t* grad_code_data = state.grad_code.defined() ? state.grad_code.const_data_ptr<scalar_t>() : nullptr;
    const acc_t* grad_penalty_data =
        state.grad_penalty.defined() ? state.grad_penalty.const_data_ptr<acc_t>() : nullptr;
    const int64_t grad_penalty_stride = state.grad_penalty.defined() ? state.grad_penalty.stride(0) : 0;
    const acc_t* norms = state.row_norms_sq.const_data_ptr<acc_t>();
    scalar_t* grad_preact_data = state.grad_preact.mutable_data_ptr<scalar_t>();
    acc_t* partial_data = state.partials.mutable_data_ptr<acc_t>();
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      auto run_chunks = [&](auto has_grad_code_tag) {
        constexpr bool kHasGradCode = decltype(has_grad_code_tag)::value;
        at::parallel_for(0, state.num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
          for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
            acc_t* grad_bias_partial = partial_data + chunk * 2 * hidden;
            grad_preactivation_rows<A, kHasGradCode, scalar_t, acc_t>(
                grad_code_data, grad_penalty_data, grad_penalty_stride, code_data, norms,
                grad_preact_data, grad_bias_partial, grad_bias_partial + hidden, chunk * chunk_rows,
                std::min(batch, (chunk + 1) * chunk_rows), hidden);
          }
        });
      };
      if (grad_code_data != nullptr) {
        run_chunks(std::true_type{});
      } else {
        run_chunks(std::false_type{});
      }
    });
  });
  return finish_backward(state, x, weight, output_mask);
}

TORCH_LIBRARY_IMPL(fastcae, CPU, m) {
  m.impl("encode_forward", &encode_forward_cpu);
  m.impl("encode_backward", &encode_backward_cpu);
}

}  // namespace fastcae
