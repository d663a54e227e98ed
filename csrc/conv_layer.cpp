// The convolutional layer's CPU epilogue as a C++ autograd node, and the
// whole layer's plain call: the contract is in fastcae/conv_layer.h.
#include "fastcae/conv_layer.h"

#include <ATen/ATen.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/extension.h>

#include <array>
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "fastcae/dispatch.h"

namespace py = pybind11;

namespace fastcae {

namespace {

using Pair = std::array<int64_t, 2>;

// A layer's geometry as the kernel ops take it, each a (height, width) pair.
struct Geometry {
  Pair input_hw, stride, pad_before, dilation;

  std::vector<int64_t> flat() const {
    return {input_hw[0], input_hw[1], stride[0], stride[1], pad_before[0], pad_before[1], dilation[0], dilation[1]};
  }
  static Geometry from_flat(const std::vector<int64_t>& v) {
    return {{v[0], v[1]}, {v[2], v[3]}, {v[4], v[5]}, {v[6], v[7]}};
  }
};

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

// The UTF-8 text of a Python str, or null for anything else.
const char* string_text(py::handle obj) {
  if (!PyUnicode_Check(obj.ptr())) return nullptr;
  const char* text = PyUnicode_AsUTF8(obj.ptr());
  if (text == nullptr) PyErr_Clear();
  return text;
}

// A Python str equal to `expected`.
bool is_string(py::handle obj, const char* expected) {
  const char* text = string_text(obj);
  return text != nullptr && std::strcmp(text, expected) == 0;
}

// A torch.func transform is active (as torch._C._are_functorch_transforms_active reads it).
bool functorch_active() {
  const c10::DispatchKeySet included = c10::impl::tls_local_dispatch_key_set().included_;
  return included.has(c10::DispatchKey::FuncTorchDynamicLayerFrontMode) ||
         included.has(c10::DispatchKey::FuncTorchDynamicLayerBackMode);
}

// What surrounds the call leaves it to this path: no torch.func transform, no
// Python mode, no CPU autocast.
bool plain_context() {
  return !functorch_active() && at::impl::PythonTorchFunctionTLS::stack_len() == 0 &&
         c10::impl::TorchDispatchModeTLS::stack_len() == 0 && !at::autocast::is_autocast_enabled(at::kCPU);
}

// The kernel ops through the dispatcher (so that Python modes and the profiler see them).
std::tuple<at::Tensor, at::Tensor> activate_op(at::Tensor& preact, const at::Tensor& weight, const Geometry& g,
                                               c10::string_view activation, bool channels_last) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastcae::conv2d_activate_", "")
                             .typed<std::tuple<at::Tensor, at::Tensor>(
                                 at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
                                 at::IntArrayRef, c10::string_view, bool)>();
  return op.call(preact, weight, g.input_hw, g.stride, g.pad_before, g.dilation, activation, channels_last);
}

std::tuple<at::Tensor, at::Tensor> activate_backward_op(const at::Tensor& grad_code, const at::Tensor& grad_penalty,
                                                        const at::Tensor& code, const at::Tensor& norms,
                                                        const at::Tensor& weight, const Geometry& g,
                                                        c10::string_view activation, bool channels_last,
                                                        std::array<bool, 2> mask) {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("fastcae::conv2d_activate_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, at::IntArrayRef, at::IntArrayRef, at::IntArrayRef,
              at::IntArrayRef, c10::string_view, bool, std::array<bool, 2>)>();
  const auto optional = [](const at::Tensor& t) {
    return t.defined() ? c10::optional<at::Tensor>(t) : c10::nullopt;
  };
  return op.call(optional(grad_code), optional(grad_penalty), code, norms, weight, g.input_hw, g.stride,
                 g.pad_before, g.dilation, activation, channels_last, mask);
}

// (z, K) -> (h written over z, p), N made from K inside: the kernel ops
// fastcae::conv2d_activate_ / conv2d_activate_backward under one node. Where
// the backward must itself be differentiable (create_graph, or a torch.func
// transform), it calls the closed form in ATen ops that autograd differentiates
// (fastcae.ops.conv_norms.differentiable_epilogue_grads).
struct Conv2dEpilogue : public torch::autograd::Function<Conv2dEpilogue> {
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, at::Tensor preact,
                                                const at::Tensor& weight, const Geometry& geometry,
                                                const std::string& activation, bool channels_last) {
    auto [penalty, norms] = activate_op(preact, weight, geometry, activation, channels_last);
    ctx->mark_dirty({preact});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({preact, norms, weight});
    ctx->saved_data["geometry"] = geometry.flat();
    ctx->saved_data["activation"] = activation;
    ctx->saved_data["channels_last"] = channels_last;
    return {preact, penalty};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &code = saved[0], &norms = saved[1], &weight = saved[2];
    const at::Tensor &grad_code = grads[0], &grad_penalty = grads[1];
    const bool need_preact = ctx->needs_input_grad(0);
    // Without a penalty gradient, N (and so K through it) receives none.
    const bool need_weight = ctx->needs_input_grad(1) && grad_penalty.defined();
    torch::autograd::variable_list result(5);
    if ((!grad_code.defined() && !grad_penalty.defined()) || !(need_preact || need_weight)) return result;
    const Geometry geometry = Geometry::from_flat(ctx->saved_data["geometry"].toIntVector());
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const bool channels_last = ctx->saved_data["channels_last"].toBool();
    const auto requires_grad = [](const at::Tensor& t) { return t.defined() && t.requires_grad(); };
    const bool graph_needed =
        functorch_active() || (at::GradMode::is_enabled() && (requires_grad(grad_code) || requires_grad(grad_penalty) ||
                                                              requires_grad(code) || requires_grad(weight)));
    if (graph_needed) {
      py::gil_scoped_acquire gil;
      const auto tensor_or_none = [](const at::Tensor& t) { return t.defined() ? py::cast(t) : py::none(); };
      const py::tuple grads_out = py::module_::import("fastcae.ops.conv_norms")
                                      .attr("differentiable_epilogue_grads")(
                                          tensor_or_none(grad_code), tensor_or_none(grad_penalty), code, weight,
                                          geometry.flat(), activation, channels_last,
                                          py::make_tuple(need_preact, need_weight));
      for (int i = 0; i < 2; ++i) {
        if (!grads_out[i].is_none()) result[i] = grads_out[i].cast<at::Tensor>();
      }
      return result;
    }
    std::tie(result[0], result[1]) = activate_backward_op(grad_code, grad_penalty, code, norms, weight, geometry,
                                                          activation, channels_last, {need_preact, need_weight});
    return result;
  }
};

}  // namespace

py::tuple conv2d_epilogue_in_place(at::Tensor preact, const at::Tensor& weight, const Pair& input_hw,
                                   const Pair& stride, const Pair& pad_before, const Pair& dilation,
                                   const std::string& activation, bool channels_last) {
  auto outputs = Conv2dEpilogue::apply(preact, weight, Geometry{input_hw, stride, pad_before, dilation},
                                       activation, channels_last);
  return py::make_tuple(outputs[0], outputs[1]);
}

py::object conv2d_encode_cpu(py::handle x_obj, py::handle weight_obj, py::handle bias_obj, py::handle stride_obj,
                             py::handle padding_obj, py::handle dilation_obj, py::handle groups_obj,
                             py::handle activation_obj) {
  const py::object other_path = py::none();
  if (!plain_context()) return other_path;
  const auto x = plain_tensor(x_obj);
  const auto weight = plain_tensor(weight_obj);
  std::optional<at::Tensor> bias;
  if (!bias_obj.is_none()) bias = plain_tensor(bias_obj);
  if (!x || !weight || (!bias_obj.is_none() && !bias)) return other_path;

  // The tensors: one floating dtype, dense CPU.
  const auto dtype = x->scalar_type();
  if (dtype != at::kFloat && dtype != at::kDouble && dtype != at::kHalf && dtype != at::kBFloat16) {
    return other_path;
  }
  const auto plain_cpu = [&](const at::Tensor& t) {
    return t.device().is_cpu() && t.layout() == at::kStrided && t.scalar_type() == dtype;
  };
  if (!plain_cpu(*x) || !plain_cpu(*weight) || (bias && !plain_cpu(*bias))) return other_path;

  // check_conv2d_args's rules (fastcae/_validation.py).
  if (x->dim() != 4 || weight->dim() != 4) return other_path;
  // An empty image: F.conv2d's own error, raised as the Python path raises it.
  if (x->size(2) == 0 || x->size(3) == 0) return other_path;
  const auto groups = int_at_least(groups_obj, 1);
  if (!groups) return other_path;
  const int64_t in_channels = x->size(1), out_channels = weight->size(0);
  if (in_channels % *groups != 0 || out_channels % *groups != 0 || weight->size(1) * *groups != in_channels) {
    return other_path;
  }
  if (bias && (bias->dim() != 1 || bias->size(0) != out_channels)) return other_path;
  const auto stride = int_pair(stride_obj, 1);
  const auto dilation = int_pair(dilation_obj, 1);
  const char* activation_text = string_text(activation_obj);
  if (!stride || !dilation || activation_text == nullptr || !find_activation(activation_text)) return other_path;
  const std::string activation(activation_text);
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

  torch::autograd::variable_list outputs;
  {
    py::gil_scoped_release no_gil;
    at::Tensor preact = same || valid
                            ? at::conv2d(*x, *weight, bias, *stride, same ? "same" : "valid", *dilation, *groups)
                            : at::conv2d(*x, *weight, bias, *stride, *padding, *dilation, *groups);
    // The epilogue reads z in its memory order: contiguous or channels-last (oneDNN's outputs are).
    const bool channels_last = !preact.is_contiguous() && preact.is_contiguous(at::MemoryFormat::ChannelsLast);
    if (!channels_last && !preact.is_contiguous()) preact = preact.contiguous();
    const Geometry geometry{{x->size(2), x->size(3)}, *stride, pad_before, *dilation};
    outputs = Conv2dEpilogue::apply(preact, *weight, geometry, activation, channels_last);
  }
  return py::make_tuple(outputs[0], outputs[1]);
}

}  // namespace fastcae
