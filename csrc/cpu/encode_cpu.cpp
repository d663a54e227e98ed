// Fused CPU kernels of the contractive encoder.
//
// Forward:  x Wᵀ through ATen's GEMM (MKL/oneDNN), row norms ‖W_j‖², then ONE
//           pass over x Wᵀ that adds b, overwrites it with h and sums the
//           per-sample penalty Σ_j φ'(z_bj)² ‖W_j‖².
// Backward: ONE pass over h computing dz (the only B×H temporary) together
//           with the per-unit sums Σ_b dz (grad_bias) and Σ_b g_p φ'²
//           (row_scale), then dx = dz W and dW = diag(row_scale) W + dzᵀ x.
//
// Two ways to share the work between threads, chosen by column_slab_count:
//   column slabs (H > B and wide enough): each thread owns a slab of units (columns
//     of h, rows of W) and runs every stage on it inside ONE parallel region:
//     ‖W_j‖² of its rows of W, its columns of x Wᵀ (a single-threaded GEMM
//     call), the fused pass; in the backward dz, the unit sums, the row scale
//     of its rows of W and its rows of dW. Its W rows, z columns and dW rows
//     stay in its own cache between stages, and the unit sums need no
//     cross-thread reduction.
//   rows (otherwise): ATen's multi-threaded GEMM, then the fused passes
//     parallel over the batch.
// Both give the same results bitwise (tested): every row's penalty is summed
// per fixed group of kPenaltyGroupColumns units and the groups are added in
// order; the backward's per-unit sums go over the same fixed chunks of rows,
// added in order; and MKL gives a slab of x Wᵀ or dW the same bits as the
// whole product.
//
// Loops are written for the auto-vectorizer (branch-free math from
// cae_math.h, `omp simd` reductions) and compiled in several ISA clones
// (GCC target_clones) that the loader picks for the running CPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <ATen/ops/mm_cpu_dispatch.h>

#include <algorithm>
#include <vector>

#include "cpu_kernels.h"
#include "passes.h"
#include "fastcae/cae_math.h"
#include "fastcae/dispatch.h"
#include "fastcae/encode.h"

namespace fastcae {
namespace {

// A thread's column slab is at least this many groups (256 units) wide:
// narrower, its GEMM call is too thin to run near peak and the rows path is
// faster (measured on the 2-core CI machine, see BENCHMARKS.md).
constexpr int64_t kMinSlabGroups = 1;

// How many column slabs (one per thread) the work is split into, or 0 for the
// rows path. Slabs split W between the threads and give each all of x, so they
// pay off while x is the smaller operand (B < H) and each slab is at least
// kMinSlabGroups groups wide; otherwise MKL's own split of the GEMM is faster.
// Inside another parallel region everything runs on the calling thread, as
// one slab.
int64_t column_slab_count(int64_t batch, int64_t hidden) {
  if (batch == 0 || hidden == 0) {
    return 0;
  }
  const int64_t threads = at::in_parallel_region() ? 1 : at::get_num_threads();
  if (threads == 1) {
    return 1;
  }
  if (batch >= hidden || penalty_groups(hidden) < kMinSlabGroups * threads) {
    return 0;
  }
  return threads;
}

// Slab `slab` of `slabs` covers penalty groups [first, last): units
// [first·G, min(H, last·G)).
struct ColumnSlab {
  int64_t first_group;
  int64_t last_group;
  int64_t begin;  // first unit
  int64_t end;    // one past the last unit
};

ColumnSlab column_slab(int64_t slab, int64_t slabs, int64_t hidden) {
  const int64_t groups = penalty_groups(hidden);
  const int64_t first = slab * groups / slabs;
  const int64_t last = (slab + 1) * groups / slabs;
  return {first, last, first * kPenaltyGroupColumns, std::min(hidden, last * kPenaltyGroupColumns)};
}

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

// Rows [begin, end) of diag(2 row_scale_sum) W, written to out (both contiguous
// (rows, cols)): the row-scale term of dW, which the GEMM then adds dzᵀ x to.
template <typename scalar_t, typename acc_t>
FASTCAE_CPU_CLONES void scale_rows(const scalar_t* weight, const acc_t* row_scale_sum, scalar_t* out,
                                   int64_t begin, int64_t end, int64_t cols) {
  for (int64_t row = begin; row < end; ++row) {
    const acc_t scale = acc_t(2) * row_scale_sum[row];
    const scalar_t* weight_row = weight + row * cols;
    scalar_t* out_row = out + row * cols;
#pragma omp simd
    for (int64_t k = 0; k < cols; ++k) {
      out_row[k] = static_cast<scalar_t>(scale * static_cast<acc_t>(weight_row[k]));
    }
  }
}

// What the forward's two thread splits share: inputs, outputs, and the
// per-group penalties group_penalties[g·B + b] they fill.
struct ForwardProblem {
  const at::Tensor& x;
  at::Tensor weight;         // contiguous
  const c10::optional<at::Tensor>& bias;
  bool bias_in_gemm;         // half precision: the GEMM adds b (see encode_forward_cpu)
  at::Tensor bias_acc;       // b in acc_t for the fused pass (zeros when the GEMM adds it)
  at::Tensor code;           // (B, H): x Wᵀ on entry to the fused pass, h after it
  at::Tensor row_norms_sq;   // (H,)
  at::Tensor group_penalties;  // (⌈H/64⌉, B)
  int64_t batch;
  int64_t hidden;
};

// Rows path: ATen's multi-threaded GEMM has already written code; ‖W_j‖² and
// the fused pass then run parallel over units and over rows.
template <Activation A, typename scalar_t>
void forward_rows(ForwardProblem& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t in_features = p.weight.size(1);
  const scalar_t* weight = p.weight.const_data_ptr<scalar_t>();
  acc_t* norms = p.row_norms_sq.mutable_data_ptr<acc_t>();
  // After the GEMM, which has just streamed W through the caches.
  at::parallel_for(0, p.hidden, rows_per_task(in_features), [&](int64_t begin, int64_t end) {
    row_norms_sq_rows<scalar_t, acc_t>(weight, norms, begin, end, in_features);
  });
  scalar_t* code = p.code.mutable_data_ptr<scalar_t>();
  const acc_t* bias = p.bias_acc.const_data_ptr<acc_t>();
  acc_t* group_penalties = p.group_penalties.mutable_data_ptr<acc_t>();
  const int64_t groups = penalty_groups(p.hidden);
  at::parallel_for(0, p.batch, rows_per_task(p.hidden), [&](int64_t begin, int64_t end) {
    activate_tile<A, /*kHasBias=*/true, scalar_t, acc_t>(code, code, bias, norms, group_penalties, p.batch,
                                                         p.hidden, begin, end, 0, groups);
  });
}

// Column slabs: each thread computes ‖W_j‖² of its rows of W, its columns of
// x Wᵀ (a single-threaded GEMM call) and the fused pass on them.
template <Activation A, typename scalar_t>
void forward_slabs(ForwardProblem& p, int64_t slabs) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t in_features = p.weight.size(1);
  const scalar_t* weight = p.weight.const_data_ptr<scalar_t>();
  acc_t* norms = p.row_norms_sq.mutable_data_ptr<acc_t>();
  scalar_t* code = p.code.mutable_data_ptr<scalar_t>();
  const acc_t* bias = p.bias_acc.const_data_ptr<acc_t>();
  acc_t* group_penalties = p.group_penalties.mutable_data_ptr<acc_t>();
  at::parallel_for(0, slabs, 1, [&](int64_t slab_begin, int64_t slab_end) {
    for (int64_t slab = slab_begin; slab < slab_end; ++slab) {
      const ColumnSlab cols = column_slab(slab, slabs, p.hidden);
      const int64_t units = cols.end - cols.begin;
      // Norms first: the GEMM then finds these rows of W in cache.
      row_norms_sq_rows<scalar_t, acc_t>(weight, norms, cols.begin, cols.end, in_features);
      at::Tensor code_cols = p.code.narrow(1, cols.begin, units);
      const at::Tensor weight_rows = p.weight.narrow(0, cols.begin, units);
      if (p.bias_in_gemm) {
        at::cpu::addmm_out(code_cols, p.bias->narrow(0, cols.begin, units), p.x, weight_rows.t());
      } else {
        at::cpu::mm_out(code_cols, p.x, weight_rows.t());
      }
      activate_tile<A, /*kHasBias=*/true, scalar_t, acc_t>(code, code, bias, norms, group_penalties, p.batch,
                                                           p.hidden, 0, p.batch, cols.first_group,
                                                           cols.last_group);
    }
  });
}

// Column slabs: each thread runs the fused pass on its units over the same
// chunks of rows (summed in order into state.partials[0]), then writes its rows
// of dW: diag(2 Σ_b g_p φ'²) W, then += dzᵀ x (a GEMM with beta = 1), while
// they are still in its cache. grad_weight is undefined when dW is not asked for.
template <Activation A, bool kHasGradCode, typename scalar_t>
void backward_slabs(EncodeBackwardState& state, int64_t slabs, const at::Tensor& x,
                    const at::Tensor& weight_c, at::Tensor& grad_weight) {
  using acc_t = at::opmath_type<scalar_t>;
  const BackwardTile<scalar_t> tile(state);
  const int64_t hidden = state.hidden;
  acc_t* grad_bias_sum = state.partials.mutable_data_ptr<acc_t>();
  acc_t* row_scale_sum = grad_bias_sum + hidden;
  const bool scale_weight = state.grad_penalty.defined();
  at::parallel_for(0, slabs, 1, [&](int64_t slab_begin, int64_t slab_end) {
    for (int64_t slab = slab_begin; slab < slab_end; ++slab) {
      const ColumnSlab cols = column_slab(slab, slabs, hidden);
      const int64_t units = cols.end - cols.begin;
      std::vector<acc_t> chunk_sums(2 * units);
      std::fill(grad_bias_sum + cols.begin, grad_bias_sum + cols.end, acc_t(0));
      std::fill(row_scale_sum + cols.begin, row_scale_sum + cols.end, acc_t(0));
      for (int64_t chunk = 0; chunk < state.num_chunks; ++chunk) {
        std::fill(chunk_sums.begin(), chunk_sums.end(), acc_t(0));
        tile.template fused_pass<A, kHasGradCode>(chunk, cols.begin, cols.end, chunk_sums.data(),
                                                  chunk_sums.data() + units);
        for (int64_t u = 0; u < units; ++u) {
          grad_bias_sum[cols.begin + u] += chunk_sums[u];
          row_scale_sum[cols.begin + u] += chunk_sums[units + u];
        }
      }
      if (!grad_weight.defined()) {
        continue;
      }
      at::Tensor grad_weight_rows = grad_weight.narrow(0, cols.begin, units);
      const at::Tensor grad_preact_cols = state.grad_preact.narrow(1, cols.begin, units).t();
      if (scale_weight) {
        scale_rows<scalar_t, acc_t>(weight_c.const_data_ptr<scalar_t>(), row_scale_sum,
                                    grad_weight.mutable_data_ptr<scalar_t>(), cols.begin, cols.end,
                                    weight_c.size(1));
        at::cpu::addmm_(grad_weight_rows, grad_preact_cols, x);
      } else {
        at::cpu::mm_out(grad_weight_rows, grad_preact_cols, x);
      }
    }
  });
}

}  // namespace

EncodeForwardResult encode_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                       const c10::optional<at::Tensor>& bias, c10::string_view activation_name) {
  check_encode_inputs(x, weight, bias);
  const Activation activation = parse_activation(activation_name);
  const int64_t batch = x.size(0);
  const int64_t hidden = weight.size(0);
  const int64_t slabs = column_slab_count(batch, hidden);
  const auto acc_options = x.options().dtype(at::toOpMathType(x.scalar_type()));
  // In float32/float64 the fused pass adds b to x Wᵀ: addmm would first
  // broadcast-copy it into the output, an extra pass over B×H. In half
  // precision the GEMM adds it while it still accumulates in float32: rounding
  // x Wᵀ to bfloat16 first would move pre-activations near 0 across it.
  const bool bias_in_pass = bias.has_value() && !at::isReducedFloatingType(x.scalar_type());
  const bool bias_in_gemm = bias.has_value() && !bias_in_pass;
  at::Tensor code;
  if (slabs == 0) {
    code = bias_in_gemm ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  } else {
    code = at::empty({batch, hidden}, x.options());
  }
  ForwardProblem problem{x,
                         weight.contiguous(),
                         bias,
                         bias_in_gemm,
                         bias_in_pass ? bias->to(acc_options.dtype()).contiguous() : at::zeros({hidden}, acc_options),
                         code,
                         at::empty({hidden}, acc_options),
                         at::empty({penalty_groups(hidden), batch}, acc_options),
                         batch,
                         hidden};
  at::Tensor penalty = at::empty({batch}, acc_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      if (slabs == 0) {
        forward_rows<A, scalar_t>(problem);
      } else {
        forward_slabs<A, scalar_t>(problem, slabs);
      }
    });
    const int64_t groups = penalty_groups(hidden);
    const acc_t* group_penalties = problem.group_penalties.const_data_ptr<acc_t>();
    acc_t* penalty_data = penalty.mutable_data_ptr<acc_t>();
    at::parallel_for(0, batch, rows_per_task(groups), [&](int64_t begin, int64_t end) {
      sum_rows_in_order<acc_t>(group_penalties, penalty_data, groups, batch, begin, end);
    });
  });
  return {problem.code, penalty, problem.row_norms_sq};
}

EncodeBackwardResult encode_backward_cpu(const c10::optional<at::Tensor>& grad_code,
                                         const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& x,
                                         const at::Tensor& weight, const at::Tensor& code,
                                         const at::Tensor& row_norms_sq, c10::string_view activation_name,
                                         std::array<bool, 3> output_mask) {
  const int64_t slabs = column_slab_count(x.size(0), weight.size(0));
  // Per-unit sums go over the batch in fixed chunks of rows (whose size
  // depends only on B), and the chunks are added in order, in both paths:
  // the sums are the same bitwise whatever the thread count.
  EncodeBackwardState state = prepare_encode_backward(grad_code, grad_penalty, x, weight, code, row_norms_sq,
                                                      /*partial_per_chunk=*/slabs == 0);
  const Activation activation = parse_activation(activation_name);
  // (2, H): Σ_b dz, Σ_b g_p φ'². The slabs sum straight into partials[0].
  at::Tensor unit_sums = slabs == 0 ? at::empty({2, state.hidden}, state.partials.options()) : state.partials[0];
  at::Tensor grad_weight;  // written by the slabs; by finish_encode_backward on the rows path
  if (slabs != 0 && output_mask[1]) {
    grad_weight = at::empty(weight.sizes(), weight.options());
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "encode_backward_cpu", [&] {
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      dispatch_bool(state.grad_code.defined(), [&](auto has_grad_code) {
        constexpr bool kHasGradCode = decltype(has_grad_code)::value;
        if (slabs == 0) {
          backward_rows<A, kHasGradCode, /*kSumGradPreact=*/true, scalar_t>(state, unit_sums);
        } else {
          backward_slabs<A, kHasGradCode, scalar_t>(state, slabs, x, weight.contiguous(), grad_weight);
        }
      });
    });
  });
  if (slabs == 0) {
    return finish_encode_backward(state, unit_sums, x, weight, output_mask);
  }
  auto [grad_x, unused_grad_weight, grad_bias] =
      finish_encode_backward(state, unit_sums, x, weight, {output_mask[0], false, output_mask[2]});
  return {grad_x, grad_weight, grad_bias};
}

}  // namespace fastcae
