// fastcae.encode_conv2d's fast path: the contract is in fastcae/conv_layer.h.
#include "fastcae/conv_layer.h"

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <array>
#include <cstring>
#include <optional>

#include "fastcae/cae_math.h"
#include "fastcae/conv_norms.h"

namespace py = pybind11;

namespace fastcae {

namespace {

using Pair = std::array<int64_t, 2>;

// A tensor whose ops need no Python: exactly torch.Tensor or nn.Parameter (no
// subclass, which may override __torch_function__ or __torch_dispatch__), not
// a torch.func wrapper, not nested.
std::optional<at::Tensor> plain_tensor(py::handle obj) {
  if (!THPVariable_CheckExact(obj.ptr())) return std::nullopt;
  at::Tensor tensor = THPVariable_Unpack(obj.ptr());
  constexpr c10::DispatchKeySet kWrapped{c10::DispatchKey::Python, c10::DispatchKey::FuncTorchBatched,
                                         c10::DispatchKey::FuncTorchGradWrapper};
  if (tensor.key_set().has_any(kWrapped) || tensor.is_nested()) return std::nullopt;
  return tensor;
}

// A Python int (not a bool) >= minimum.
std::optional<int64_t> int_at_least(py::handle obj, int64_t minimum) {
  if (!PyLong_Check(obj.ptr()) || PyBool_Check(obj.ptr())) return std::nullopt;
  int overflow = 0;
  const long long value = PyLong_AsLongLongAndOverflow(obj.ptr(), &overflow);
  if (overflow != 0 || value < minimum) return std::nullopt;
  return value;
}

// check_pair's rule: an int, or a tuple or list of two ints, each >= minimum.
std::optional<Pair> int_pair(py::handle obj, int64_t minimum) {
  if (const auto value = int_at_least(obj, minimum)) return Pair{*value, *value};
  if (!PyTuple_Check(obj.ptr()) && !PyList_Check(obj.ptr())) return std::nullopt;
  const auto sequence = py::reinterpret_borrow<py::sequence>(obj);
  if (sequence.size() != 2) return std::nullopt;
  const auto first = int_at_least(sequence[0], minimum);
  const auto second = int_at_least(sequence[1], minimum);
  if (!first || !second) return std::nullopt;
  return Pair{*first, *second};
}

// A Python str equal to `expected`.
bool is_string(py::handle obj, const char* expected) {
  if (!PyUnicode_Check(obj.ptr())) return false;
  const char* text = PyUnicode_AsUTF8(obj.ptr());
  if (text == nullptr) {
    PyErr_Clear();
    return false;
  }
  return std::strcmp(text, expected) == 0;
}

bool is_activation_name(py::handle obj) {
#define FASTCAE_IS_NAME(name, id) is_string(obj, #name) ||
  return FASTCAE_ACTIVATIONS(FASTCAE_IS_NAME) false;
#undef FASTCAE_IS_NAME
}

// What surrounds the call leaves it to this path: no torch.func transform, no
// Python mode, no CPU autocast.
bool plain_context() {
  // As torch._C._are_functorch_transforms_active reads it.
  const c10::DispatchKeySet included = c10::impl::tls_local_dispatch_key_set().included_;
  const bool transformed = included.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
                           included.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
  return !transformed &&
         at::impl::PythonTorchFunctionTLS::stack_len() == 0 && c10::impl::TorchDispatchModeTLS::stack_len() == 0 &&
         !at::autocast::is_autocast_enabled(at::kCPU);
}

}  // namespace

py::object conv2d_encode_no_grad(py::handle x_obj, py::handle weight_obj, py::handle bias_obj,
                                 py::handle stride_obj, py::handle padding_obj, py::handle dilation_obj,
                                 py::handle groups_obj, py::handle activation_obj) {
  const py::object other_path = py::none();
  if (!plain_context()) return other_path;
  const auto x = plain_tensor(x_obj);
  const auto weight = plain_tensor(weight_obj);
  std::optional<at::Tensor> bias;
  if (!bias_obj.is_none()) bias = plain_tensor(bias_obj);
  if (!x || !weight || (!bias_obj.is_none() && !bias)) return other_path;

  // The tensors: one floating dtype, dense CPU, nothing that autograd would record.
  const auto dtype = x->scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kHalf && dtype != at::kBFloat16) {
    return other_path;
  }
  const auto plain_cpu = [&](const at::Tensor& t) {
    return t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype &&
           !(at::GradMode::is_enabled() && t.requires_grad());
  };
  if (!plain_cpu(*x) || !plain_cpu(*weight) || (bias && !plain_cpu(*bias))) return other_path;

  // check_conv2d_args's rules (fastcae/_validation.py).
  if (x->dim() != 4 || weight->dim() != 4) return other_path;
  if (x->size(2) == 0 || x->size(3) == 0) return other_path;  // F.conv2d's own error, raised as the Python path raises it
  const auto groups = int_at_least(groups_obj, 1);
  if (!groups) return other_path;
  const int64_t in_channels = x->size(1), out_channels = weight->size(0);
  if (in_channels % *groups != 0 || out_channels % *groups != 0 || weight->size(1) * *groups != in_channels) {
    return other_path;
  }
  if (bias && (bias->dim() != 1 || bias->size(0) != out_channels)) return other_path;
  const auto stride = int_pair(stride_obj, 1);
  const auto dilation = int_pair(dilation_obj, 1);
  if (!stride || !dilation || !is_activation_name(activation_obj)) return other_path;
  const bool same = is_string(padding_obj, "same");
  const bool valid = is_string(padding_obj, "valid");
  std::optional<Pair> padding;
  if (!same && !valid) {
    padding = int_pair(padding_obj, 0);
    if (!padding) return other_path;
  }
  if (same && *stride != Pair{1, 1}) return other_path;
  const Pair kernel_hw{weight->size(2), weight->size(3)};
  Pair pad_before{0, 0};
  for (int axis = 0; axis < 2; ++axis) {
    const int64_t extent = (*dilation)[axis] * (kernel_hw[axis] - 1) + 1;
    if (same) {
      pad_before[axis] = (extent - 1) / 2;  // F.conv2d puts the odd pixel after
    } else {
      if (padding) pad_before[axis] = (*padding)[axis];
      if (extent > x->size(2 + axis) + 2 * pad_before[axis]) return other_path;
    }
  }
  const auto activation = py::cast<std::string>(activation_obj);

  at::Tensor code, penalty;
  {
    py::gil_scoped_release no_gil;
    code = same || valid ? at::conv2d(*x, *weight, bias, *stride, same ? "same" : "valid", *dilation, *groups)
                         : at::conv2d(*x, *weight, bias, *stride, *padding, *dilation, *groups);
    // The epilogue reads z in its memory order: contiguous or channels-last (oneDNN's outputs are).
    const bool channels_last = !code.is_contiguous() && code.is_contiguous(at::MemoryFormat::ChannelsLast);
    if (!channels_last && !code.is_contiguous()) code = code.contiguous();
    penalty = std::get<0>(conv2d_activate_inplace_cpu(code, *weight, {x->size(2), x->size(3)}, *stride, pad_before,
                                                      *dilation, activation, channels_last));
  }
  return py::make_tuple(code, penalty);
}

}  // namespace fastcae
