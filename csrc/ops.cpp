// Op schemas (torch.library, namespace "fastcae"), their autograd formula,
// the argument checks shared by both devices, and the Python module
// fastcae._C. The CPU and CUDA kernels register themselves with
// TORCH_LIBRARY_IMPL in their own files, so the dispatcher picks the device;
// the fake (meta) kernels that torch.compile traces with are registered from
// Python (fastcae/ops/extension.py).
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/extension.h>
#include <torch/library.h>

#include <string>

#include "fastcae/encode.h"

namespace fastcae {

Activation parse_activation(c10::string_view name) {
  if (name == "sigmoid") return Activation::sigmoid;
  if (name == "tanh") return Activation::tanh;
  if (name == "softplus") return Activation::softplus;
  if (name == "relu") return Activation::relu;
  if (name == "identity") return Activation::identity;
  TORCH_CHECK_VALUE(false, "fastcae: activation must be one of 'sigmoid', 'tanh', 'softplus', "
                           "'relu', 'identity', got '",
                    std::string(name), "'");
}

namespace {

void check_floating_like(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fastcae: ", name, " must have x's dtype ",
                   x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "fastcae: ", name, " must be on x's device ",
                    x.device(), ", got ", t.device());
}

}  // namespace

void check_forward_inputs(const at::Tensor& x, const at::Tensor& weight,
                          const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 2, "fastcae: x must be 2-D (batch, in_features), got shape ",
                    x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2,
                    "fastcae: weight must be 2-D (hidden_features, in_features), got shape ",
                    weight.sizes());
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "fastcae: x has ", x.size(1),
                    " features but weight expects ", weight.size(1));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastcae: x must be floating point, got ",
                   x.scalar_type());
  check_floating_like(weight, "weight", x);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0),
                      "fastcae: bias must have shape (", weight.size(0), ",), got ", bias->sizes());
    check_floating_like(*bias, "bias", x);
  }
}

namespace {

void check_backward_inputs(const c10::optional<at::Tensor>& grad_code,
                           const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& code,
                           const at::Tensor& row_norms_sq) {
  check_forward_inputs(x, weight, c10::nullopt);
  const int64_t batch = x.size(0);
  const int64_t hidden = weight.size(0);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  TORCH_CHECK_VALUE(code.sizes() == at::IntArrayRef({batch, hidden}),
                    "fastcae: code must have shape (", batch, ", ", hidden, "), got ", code.sizes());
  check_floating_like(code, "code", x);
  TORCH_CHECK_VALUE(row_norms_sq.dim() == 1 && row_norms_sq.size(0) == hidden,
                    "fastcae: row_norms_sq must have shape (", hidden, ",), got ",
                    row_norms_sq.sizes());
  TORCH_CHECK_TYPE(row_norms_sq.scalar_type() == acc_type, "fastcae: row_norms_sq must be ",
                   acc_type, ", got ", row_norms_sq.scalar_type());
  if (grad_code.has_value()) {
    TORCH_CHECK_VALUE(grad_code->sizes() == code.sizes(), "fastcae: grad_code must have shape ",
                      code.sizes(), ", got ", grad_code->sizes());
    check_floating_like(*grad_code, "grad_code", x);
  }
  if (grad_penalty.has_value()) {
    TORCH_CHECK_VALUE(grad_penalty->dim() == 1 && grad_penalty->size(0) == batch,
                      "fastcae: grad_penalty must have shape (", batch, ",), got ",
                      grad_penalty->sizes());
    TORCH_CHECK_TYPE(grad_penalty->scalar_type() == acc_type, "fastcae: grad_penalty must be ",
                     acc_type, ", got ", grad_penalty->scalar_type());
  }
}

}  // namespace

EncodeBackwardState prepare_encode_backward(const c10::optional<at::Tensor>& grad_code,
                                            const c10::optional<at::Tensor>& grad_penalty,
                                            const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& code, const at::Tensor& row_norms_sq,
                                            bool partial_per_chunk) {
  check_backward_inputs(grad_code, grad_penalty, x, weight, code, row_norms_sq);
  const int64_t batch = x.size(0);
  const int64_t hidden = weight.size(0);
  const at::Tensor code_c = code.contiguous();
  const int64_t chunk_rows = backward_chunk_rows(batch);
  const int64_t num_chunks = (batch + chunk_rows - 1) / chunk_rows;
  return {code_c,
          row_norms_sq.contiguous(),
          grad_code.has_value() ? grad_code->contiguous() : at::Tensor(),
          grad_penalty.has_value() ? *grad_penalty : at::Tensor(),
          at::empty_like(code_c),
          at::zeros({partial_per_chunk ? num_chunks : 1, 2, hidden}, row_norms_sq.options()),
          batch,
          hidden,
          chunk_rows,
          num_chunks};
}

HessianProblem prepare_hessian(const at::Tensor& preact, const at::Tensor& noisy_preact,
                               const at::Tensor& row_norms_sq) {
  TORCH_CHECK_VALUE(preact.dim() == 2, "fastcae: preact must be 2-D (batch, hidden), got shape ",
                    preact.sizes());
  TORCH_CHECK_VALUE(noisy_preact.dim() == 3 && noisy_preact.size(1) == preact.size(0) &&
                        noisy_preact.size(2) == preact.size(1),
                    "fastcae: noisy_preact must have shape (n, ", preact.size(0), ", ", preact.size(1),
                    "), got ", noisy_preact.sizes());
  TORCH_CHECK_VALUE(row_norms_sq.dim() == 1 && row_norms_sq.size(0) == preact.size(1),
                    "fastcae: row_norms_sq must have shape (", preact.size(1), ",), got ",
                    row_norms_sq.sizes());
  const auto dtype = preact.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble,
                   "fastcae: preact must be float32 or float64, got ", dtype);
  for (const at::Tensor* t : {&noisy_preact, &row_norms_sq}) {
    TORCH_CHECK_TYPE(t->scalar_type() == dtype, "fastcae: CAE+H inputs need one dtype, got ", dtype,
                     " and ", t->scalar_type());
    TORCH_CHECK_VALUE(t->device() == preact.device(), "fastcae: CAE+H inputs need one device, got ",
                      preact.device(), " and ", t->device());
  }
  return {preact.contiguous(), noisy_preact.contiguous(), row_norms_sq.contiguous(),
          noisy_preact.size(0),  preact.size(0),          preact.size(1)};
}

HessianGrads prepare_hessian_grads(const HessianProblem& problem, const at::Tensor& grad_penalty,
                                   std::array<bool, 3> output_mask) {
  TORCH_CHECK_VALUE(grad_penalty.dim() == 1 && grad_penalty.size(0) == problem.batch,
                    "fastcae: grad_penalty must have shape (", problem.batch, ",), got ",
                    grad_penalty.sizes());
  const auto [need_preact, need_noisy, need_norms] = output_mask;
  const int64_t chunk_rows = backward_chunk_rows(problem.batch);
  const int64_t num_chunks = (problem.batch + chunk_rows - 1) / chunk_rows;
  return {grad_penalty.to(problem.preact.scalar_type()),
          need_preact ? at::empty_like(problem.preact) : at::Tensor(),
          need_noisy ? at::empty_like(problem.noisy_preact) : at::Tensor(),
          at::zeros({num_chunks, problem.hidden}, problem.preact.options()),
          chunk_rows,
          num_chunks};
}

HessianBackwardResult finish_hessian_backward(const HessianProblem& problem, const HessianGrads& grads,
                                              bool need_row_norms_sq) {
  at::Tensor grad_norms;
  if (need_row_norms_sq) {
    grad_norms = grads.partials.sum(0).mul_(problem.copies > 0 ? 1.0 / problem.copies : 0.0);
  }
  return {grads.grad_preact, grads.grad_noisy_preact, grad_norms};
}

EncodeBackwardResult finish_backward(const EncodeBackwardState& state, const at::Tensor& unit_sums,
                                     const at::Tensor& x, const at::Tensor& weight,
                                     std::array<bool, 3> output_mask) {
  const auto [need_grad_x, need_grad_weight, need_grad_bias] = output_mask;
  at::Tensor grad_x, grad_weight, grad_bias;
  if (need_grad_x) {
    grad_x = at::mm(state.grad_preact, weight);
  }
  if (need_grad_weight) {
    if (state.grad_penalty.defined()) {
      // The GEMM accumulates dzᵀ x into the scaled weight (beta = 1): one pass over W.
      const at::Tensor row_scale = unit_sums[1].mul(2).to(weight.scalar_type());
      grad_weight = at::empty(weight.sizes(), weight.options());
      at::mul_out(grad_weight, weight, row_scale.unsqueeze(1));
      grad_weight.addmm_(state.grad_preact.t(), x);
    } else {
      grad_weight = at::mm(state.grad_preact.t(), x);
    }
  }
  if (need_grad_bias) {
    grad_bias = unit_sums[0].to(x.scalar_type());
  }
  return {grad_x, grad_weight, grad_bias};
}

TORCH_LIBRARY(fastcae, m) {
  m.def(
      "encode_forward(Tensor x, Tensor weight, Tensor? bias, str activation) "
      "-> (Tensor code, Tensor penalty, Tensor row_norms_sq)");
  m.def(
      "encode_backward(Tensor? grad_code, Tensor? grad_penalty, Tensor x, Tensor weight, "
      "Tensor code, Tensor row_norms_sq, str activation, bool[3] output_mask) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
  m.def(
      "hessian_forward(Tensor preact, Tensor noisy_preact, Tensor row_norms_sq, str activation) "
      "-> Tensor");
  m.def(
      "hessian_backward(Tensor grad_penalty, Tensor preact, Tensor noisy_preact, Tensor row_norms_sq, "
      "str activation, bool[3] output_mask) "
      "-> (Tensor grad_preact, Tensor grad_noisy_preact, Tensor grad_row_norms_sq)");
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The autograd formula of encode_forward, in C++ so a differentiable call
// costs no Python (a Python-registered formula adds ~10 µs per call):
//   forward saves x, W, h, ‖W_j‖²;
//   backward: dz = g_h ⊙ φ' + 2 g_p φ' φ'' ‖W_j‖², dx = dz W,
//             dW = dzᵀ x + diag(2 Σ_b g_p φ'²) W, db = Σ_b dz.
class EncodeFunction : public torch::autograd::Function<EncodeFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const c10::optional<at::Tensor>& bias, c10::string_view activation) {
    static const auto forward_op = c10::Dispatcher::singleton()
                                       .findSchemaOrThrow("fastcae::encode_forward", "")
                                       .typed<EncodeForwardResult(const at::Tensor&, const at::Tensor&,
                                                                  const c10::optional<at::Tensor>&,
                                                                  c10::string_view)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [code, penalty, row_norms_sq] = forward_op.call(x, weight, bias, activation);
    ctx->save_for_backward({x, weight, code, row_norms_sq});
    ctx->saved_data["activation"] = std::string(activation);
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->mark_non_differentiable({row_norms_sq});
    // Unused outputs arrive undefined instead of as zero tensors, and the
    // kernel skips their terms (a loss on p alone never reads a B×H g_h).
    ctx->set_materialize_grads(false);
    return {code, penalty, row_norms_sq};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static const auto backward_op =
        c10::Dispatcher::singleton()
            .findSchemaOrThrow("fastcae::encode_backward", "")
            .typed<EncodeBackwardResult(const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&,
                                        const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, c10::string_view, std::array<bool, 3>)>();
    const bool need_x = ctx->needs_input_grad(0);
    const bool need_weight = ctx->needs_input_grad(1);
    const bool need_bias = ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2);
    const at::Tensor& grad_code = grad_outputs[0];
    const at::Tensor& grad_penalty = grad_outputs[1];
    if ((!grad_code.defined() && !grad_penalty.defined()) || !(need_x || need_weight || need_bias)) {
      return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    }
    const auto saved = ctx->get_saved_variables();
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    auto [grad_x, grad_weight, grad_bias] = backward_op.call(
        grad_code.defined() ? c10::optional<at::Tensor>(grad_code) : c10::nullopt,
        grad_penalty.defined() ? c10::optional<at::Tensor>(grad_penalty) : c10::nullopt, saved[0],
        saved[1], saved[2], saved[3], activation, {need_x, need_weight, need_bias});
    return {grad_x, grad_weight, grad_bias, at::Tensor()};
  }
};

EncodeForwardResult encode_forward_autograd(const at::Tensor& x, const at::Tensor& weight,
                                            const c10::optional<at::Tensor>& bias,
                                            c10::string_view activation) {
  const variable_list outputs = EncodeFunction::apply(x, weight, bias, activation);
  return {outputs[0], outputs[1], outputs[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcae, Autograd, m) {
  m.impl("encode_forward", &encode_forward_autograd);
}

}  // namespace fastcae

// setup.py passes the arch list as bare tokens (e.g. 8.0,9.0); this quotes them.
#define FASTCAE_STRINGIFY_(...) #__VA_ARGS__
#define FASTCAE_STRINGIFY(...) FASTCAE_STRINGIFY_(__VA_ARGS__)
#ifdef FASTCAE_CUDA_ARCHS
#define FASTCAE_CUDA_ARCHS_STRING FASTCAE_STRINGIFY(FASTCAE_CUDA_ARCHS)
#else
#define FASTCAE_CUDA_ARCHS_STRING ""
#endif

namespace {

// Which of the CPU kernel clones (GCC target_clones) this machine runs.
std::string cpu_kernel_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2)";
  return "x86-64 baseline (SSE2)";
#else
  return "compiler default";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastcae C++/CUDA kernels; the ops live in torch.ops.fastcae";
  m.def(
      "built_with_cuda",
      []() {
#ifdef WITH_CUDA
        return true;
#else
        return false;
#endif
      },
      "True when the CUDA kernels were compiled into this extension.");
  m.def(
      "cuda_archs", []() { return std::string(FASTCAE_CUDA_ARCHS_STRING); },
      "The TORCH_CUDA_ARCH_LIST the CUDA kernels were compiled for ('' without CUDA).");
  m.def("cpu_kernel_isa", &cpu_kernel_isa, "Instruction set of the CPU kernels selected at load time.");
}
