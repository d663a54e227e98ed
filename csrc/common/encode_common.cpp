// Host code of the encode op that both devices' kernels share: the argument
// checks, the backward's buffers, and the GEMMs that finish the backward.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "fastcae/encode.h"
#include "fastcae/reduction.h"

namespace fastcae {
namespace {

void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), "fastcae: ", name, " must have x's dtype ",
                   x.scalar_type(), ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.device() == x.device(), "fastcae: ", name, " must be on x's device ", x.device(),
                    ", got ", t.device());
}

void check_backward_inputs(const c10::optional<at::Tensor>& grad_code,
                           const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& code, const at::Tensor& row_norms_sq) {
  check_encode_inputs(x, weight, c10::nullopt);
  const int64_t batch = x.size(0);
  const int64_t hidden = weight.size(0);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  TORCH_CHECK_VALUE(code.sizes() == at::IntArrayRef({batch, hidden}), "fastcae: code must have shape (",
                    batch, ", ", hidden, "), got ", code.sizes());
  check_like_x(code, "code", x);
  TORCH_CHECK_VALUE(row_norms_sq.dim() == 1 && row_norms_sq.size(0) == hidden,
                    "fastcae: row_norms_sq must have shape (", hidden, ",), got ", row_norms_sq.sizes());
  TORCH_CHECK_TYPE(row_norms_sq.scalar_type() == acc_type, "fastcae: row_norms_sq must be ", acc_type,
                   ", got ", row_norms_sq.scalar_type());
  if (grad_code.has_value()) {
    TORCH_CHECK_VALUE(grad_code->sizes() == code.sizes(), "fastcae: grad_code must have shape ",
                      code.sizes(), ", got ", grad_code->sizes());
    check_like_x(*grad_code, "grad_code", x);
  }
  if (grad_penalty.has_value()) {
    TORCH_CHECK_VALUE(grad_penalty->dim() == 1 && grad_penalty->size(0) == batch,
                      "fastcae: grad_penalty must have shape (", batch, ",), got ", grad_penalty->sizes());
    TORCH_CHECK_TYPE(grad_penalty->scalar_type() == acc_type, "fastcae: grad_penalty must be ", acc_type,
                     ", got ", grad_penalty->scalar_type());
  }
}

}  // namespace

void check_encode_inputs(const at::Tensor& x, const at::Tensor& weight,
                         const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK_VALUE(x.dim() == 2, "fastcae: x must be 2-D (batch, in_features), got shape ", x.sizes());
  TORCH_CHECK_VALUE(weight.dim() == 2,
                    "fastcae: weight must be 2-D (hidden_features, in_features), got shape ", weight.sizes());
  TORCH_CHECK_VALUE(x.size(1) == weight.size(1), "fastcae: x has ", x.size(1),
                    " features but weight expects ", weight.size(1));
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), "fastcae: x must be floating point, got ",
                   x.scalar_type());
  check_like_x(weight, "weight", x);
  if (bias.has_value()) {
    TORCH_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == weight.size(0), "fastcae: bias must have shape (",
                      weight.size(0), ",), got ", bias->sizes());
    check_like_x(*bias, "bias", x);
  }
}

EncodeBackwardState prepare_encode_backward(const c10::optional<at::Tensor>& grad_code,
                                            const c10::optional<at::Tensor>& grad_penalty,
                                            const at::Tensor& x, const at::Tensor& weight,
                                            const at::Tensor& code, const at::Tensor& row_norms_sq,
                                            bool partial_per_chunk) {
  check_backward_inputs(grad_code, grad_penalty, x, weight, code, row_norms_sq);
  return prepare_backward_pass(grad_code, grad_penalty, code, row_norms_sq, partial_per_chunk);
}

EncodeBackwardState prepare_backward_pass(const c10::optional<at::Tensor>& grad_code,
                                          const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                          const at::Tensor& row_norms_sq, bool partial_per_chunk) {
  const int64_t batch = code.size(0);
  const int64_t hidden = code.size(1);
  const at::Tensor code_c = code.contiguous();
  const int64_t chunk_rows = backward_chunk_rows(batch);
  const int64_t num_chunks = backward_num_chunks(batch);
  return {code_c,
          row_norms_sq.contiguous(),
          grad_code.has_value() ? grad_code->contiguous() : at::Tensor(),
          grad_penalty.has_value() ? *grad_penalty : at::Tensor(),
          at::empty_like(code_c),
          // Uninitialized: each kernel writes (CUDA) or first zeroes (CPU, in the
          // thread that then adds into it) the part it uses.
          at::empty({partial_per_chunk ? num_chunks : 1, 2, hidden}, row_norms_sq.options()),
          batch,
          hidden,
          chunk_rows,
          num_chunks};
}

EncodeBackwardResult finish_encode_backward(const EncodeBackwardState& state, const at::Tensor& unit_sums,
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

}  // namespace fastcae
