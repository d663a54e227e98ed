// Host-side dispatch shared by every op and device: an activation's name to
// its enum, and runtime values to compile-time ones, so kernels are compiled
// once per activation (and flag) with the math inlined.
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>
#include <type_traits>

#include "fastcae/cae_math.h"

namespace fastcae {

// The activation named "sigmoid", "tanh", ... (FASTCAE_ACTIVATIONS), or none.
inline std::optional<Activation> find_activation(c10::string_view name) {
#define FASTCAE_FIND_ACTIVATION(activation, id) \
  if (name == #activation) return Activation::activation;
  FASTCAE_ACTIVATIONS(FASTCAE_FIND_ACTIVATION)
#undef FASTCAE_FIND_ACTIVATION
  return std::nullopt;
}

// find_activation's, where anything else is a ValueError naming the argument.
inline Activation parse_activation(c10::string_view name) {
  if (const auto activation = find_activation(name)) return *activation;
#define FASTCAE_QUOTED_ACTIVATION(activation, id) " '" #activation "'"
  TORCH_CHECK_VALUE(false, "fastcae: activation must be one of" FASTCAE_ACTIVATIONS(FASTCAE_QUOTED_ACTIVATION),
                    ", got '", std::string(name), "'");
#undef FASTCAE_QUOTED_ACTIVATION
}

// Calls fn(std::integral_constant<Activation, A>{}) for the runtime value.
template <typename Fn>
decltype(auto) dispatch_activation(Activation activation, Fn&& fn) {
  switch (activation) {
#define FASTCAE_ACTIVATION_CASE(name, id) \
  case Activation::name:                  \
    return fn(std::integral_constant<Activation, Activation::name>{});
    FASTCAE_ACTIVATIONS(FASTCAE_ACTIVATION_CASE)
#undef FASTCAE_ACTIVATION_CASE
  }
  TORCH_INTERNAL_ASSERT(false, "fastcae: unknown activation id ", static_cast<int>(activation));
}

// Calls fn(std::true_type{}) or fn(std::false_type{}).
template <typename Fn>
decltype(auto) dispatch_bool(bool value, Fn&& fn) {
  if (value) {
    return fn(std::true_type{});
  }
  return fn(std::false_type{});
}

}  // namespace fastcae
