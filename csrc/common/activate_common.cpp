// Argument checks of the activate op, shared by both devices' kernels.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "fastcae/activate.h"

namespace fastcae {

void check_activate_inputs(const at::Tensor& preact, const at::Tensor& unit_norms_sq) {
  TORCH_CHECK_VALUE(preact.dim() == 2, "fastcae: preact must be 2-D (batch, units), got shape ",
                    preact.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(preact.scalar_type()), "fastcae: preact must be floating point, got ",
                   preact.scalar_type());
  const auto acc_type = at::toOpMathType(preact.scalar_type());
  TORCH_CHECK_VALUE(unit_norms_sq.dim() == 1 && unit_norms_sq.size(0) == preact.size(1),
                    "fastcae: unit_norms_sq must have shape (", preact.size(1), ",), got ",
                    unit_norms_sq.sizes());
  TORCH_CHECK_TYPE(unit_norms_sq.scalar_type() == acc_type, "fastcae: unit_norms_sq must be ", acc_type,
                   ", got ", unit_norms_sq.scalar_type());
  TORCH_CHECK_VALUE(unit_norms_sq.device() == preact.device(), "fastcae: unit_norms_sq must be on ",
                    preact.device(), ", got ", unit_norms_sq.device());
}

void check_activate_backward_inputs(const c10::optional<at::Tensor>& grad_code,
                                    const c10::optional<at::Tensor>& grad_penalty, const at::Tensor& code,
                                    const at::Tensor& unit_norms_sq) {
  check_activate_inputs(code, unit_norms_sq);
  const auto acc_type = at::toOpMathType(code.scalar_type());
  if (grad_code.has_value()) {
    TORCH_CHECK_VALUE(grad_code->sizes() == code.sizes(), "fastcae: grad_code must have shape ", code.sizes(),
                      ", got ", grad_code->sizes());
    TORCH_CHECK_TYPE(grad_code->scalar_type() == code.scalar_type(), "fastcae: grad_code must be ",
                     code.scalar_type(), ", got ", grad_code->scalar_type());
    TORCH_CHECK_VALUE(grad_code->device() == code.device(), "fastcae: grad_code must be on ", code.device(),
                      ", got ", grad_code->device());
  }
  if (grad_penalty.has_value()) {
    TORCH_CHECK_VALUE(grad_penalty->dim() == 1 && grad_penalty->size(0) == code.size(0),
                      "fastcae: grad_penalty must have shape (", code.size(0), ",), got ",
                      grad_penalty->sizes());
    TORCH_CHECK_TYPE(grad_penalty->scalar_type() == acc_type, "fastcae: grad_penalty must be ", acc_type,
                     ", got ", grad_penalty->scalar_type());
    TORCH_CHECK_VALUE(grad_penalty->device() == code.device(), "fastcae: grad_penalty must be on ",
                      code.device(), ", got ", grad_penalty->device());
  }
}

}  // namespace fastcae
