// CPU kernels of the activate op: the encode op's fused passes (passes.h) on
// given pre-activations, parallel over rows (forward) and over fixed chunks of
// rows × tiles of units (backward), with the same fixed summation orders, so
// the results do not depend on the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/variable.h>

#include "cpu_kernels.h"
#include "fastcae/activate.h"
#include "fastcae/dispatch.h"
#include "passes.h"

namespace fastcae {

namespace {

// h = φ(z) into `code` (which may be `preact` itself) and p into `penalty`.
void activate_forward_into(const at::Tensor& preact, const at::Tensor& norms, at::Tensor& code,
                           at::Tensor& penalty, Activation activation) {
  const int64_t batch = preact.size(0);
  const int64_t units = preact.size(1);
  const int64_t groups = penalty_groups(units);
  at::Tensor group_penalties = at::empty({groups, batch}, norms.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, preact.scalar_type(), "activate_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* preact_data = preact.const_data_ptr<scalar_t>();
    scalar_t* code_data = code.mutable_data_ptr<scalar_t>();
    const acc_t* norms_data = norms.const_data_ptr<acc_t>();
    acc_t* group_data = group_penalties.mutable_data_ptr<acc_t>();
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      at::parallel_for(0, batch, rows_per_task(units), [&](int64_t begin, int64_t end) {
        activate_tile<A, /*kHasBias=*/false, scalar_t, acc_t>(preact_data, code_data, nullptr, norms_data,
                                                              group_data, batch, units, begin, end, 0, groups);
      });
    });
    acc_t* penalty_data = penalty.mutable_data_ptr<acc_t>();
    at::parallel_for(0, batch, rows_per_task(groups), [&](int64_t begin, int64_t end) {
      sum_rows_in_order<acc_t>(group_data, penalty_data, groups, batch, begin, end);
    });
  });
}

}  // namespace

ActivateResult activate_forward_cpu(const at::Tensor& preact, const at::Tensor& unit_norms_sq,
                                    c10::string_view activation_name) {
  check_activate_inputs(preact, unit_norms_sq);
  const Activation activation = parse_activation(activation_name);
  const at::Tensor preact_c = preact.contiguous();
  const at::Tensor norms = unit_norms_sq.contiguous();
  at::Tensor code = at::empty_like(preact_c);
  at::Tensor penalty = at::empty({preact_c.size(0)}, norms.options());
  activate_forward_into(preact_c, norms, code, penalty, activation);
  return {code, penalty};
}

at::Tensor activate_forward_inplace_cpu(at::Tensor& preact, const at::Tensor& unit_norms_sq,
                                        c10::string_view activation_name) {
  check_activate_inputs(preact, unit_norms_sq);
  TORCH_CHECK_VALUE(preact.is_contiguous(), "fastcae: activate_forward_ needs a contiguous preact");
  const Activation activation = parse_activation(activation_name);
  const at::Tensor norms = unit_norms_sq.contiguous();
  at::Tensor penalty = at::empty({preact.size(0)}, norms.options());
  activate_forward_into(preact, norms, preact, penalty, activation);
  // As ATen's in-place ops do: autograd then catches a use of z saved before this.
  // (The schema cannot return z for the fallbacks to bump it: functionalization
  // rejects custom ops whose outputs alias their inputs.)
  torch::autograd::impl::bump_version(preact);
  return penalty;
}

ActivateResult activate_backward_cpu(const c10::optional<at::Tensor>& grad_code,
                                     const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                     const at::Tensor& unit_norms_sq, c10::string_view activation_name,
                                     std::array<bool, 2> output_mask) {
  check_activate_backward_inputs(grad_code, grad_penalty, code, unit_norms_sq);
  const Activation activation = parse_activation(activation_name);
  EncodeBackwardState state =
      prepare_backward_pass(grad_code, grad_penalty, code, unit_norms_sq, /*partial_per_chunk=*/true);
  at::Tensor unit_sums = at::empty({2, state.hidden}, state.partials.options());  // Σ_b dz, Σ_b g_p φ'²
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, code.scalar_type(), "activate_backward_cpu", [&] {
    dispatch_activation(activation, [&](auto act) {
      constexpr Activation A = decltype(act)::value;
      dispatch_bool(state.grad_code.defined(), [&](auto has_grad_code) {
        constexpr bool kHasGradCode = decltype(has_grad_code)::value;
        backward_rows<A, kHasGradCode, /*kSumGradPreact=*/false, scalar_t>(state, unit_sums);
      });
    });
  });
  at::Tensor grad_unit_norms_sq;
  if (output_mask[1]) grad_unit_norms_sq = unit_sums[1].clone();  // its own tensor, as the op's fake
  return {output_mask[0] ? state.grad_preact : at::Tensor(), grad_unit_norms_sq};
}

}  // namespace fastcae
