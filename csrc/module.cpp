// The Python module fastcae._C. Importing it registers the ops (torch.ops.fastcae.*,
// csrc/<op>.cpp); the module itself reports how it was built, and holds the
// convolutional layer's CPU epilogue node and plain call (fastcae/conv_layer.h).
#include <torch/extension.h>

#include <string>
#include <vector>

#include "cpu/sigmoid_avx512.h"
#include "fastcae/cae_math.h"
#include "fastcae/conv_layer.h"

// setup.py passes the arch list as bare tokens (e.g. 8.0,9.0); this quotes them.
#define FASTCAE_STRINGIFY_(...) #__VA_ARGS__
#define FASTCAE_STRINGIFY(...) FASTCAE_STRINGIFY_(__VA_ARGS__)
#ifdef FASTCAE_CUDA_ARCHS
#define FASTCAE_CUDA_ARCHS_STRING FASTCAE_STRINGIFY(FASTCAE_CUDA_ARCHS)
#else
#define FASTCAE_CUDA_ARCHS_STRING ""
#endif

namespace {

// Which of the CPU kernel clones (GCC target_clones) this machine runs, and
// whether the float32 sigmoid forward takes its AVX-512 intrinsics pass.
std::string cpu_kernel_isa() {
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
  std::string isa = __builtin_cpu_supports("x86-64-v4")   ? "x86-64-v4 (AVX-512)"
                    : __builtin_cpu_supports("x86-64-v3") ? "x86-64-v3 (AVX2)"
                                                          : "x86-64 baseline (SSE2)";
#else
  std::string isa = "compiler default";
#endif
#ifdef FASTCAE_HAS_AVX512_SIGMOID
  if (fastcae::use_avx512_sigmoid()) isa += "; float32 sigmoid forward: AVX-512 intrinsics";
#endif
  return isa;
}

// (name, id) of every activation the kernels were compiled for, in id order.
std::vector<std::pair<std::string, int>> activations() {
  std::vector<std::pair<std::string, int>> list;
#define FASTCAE_LIST_ACTIVATION(name, id) list.emplace_back(#name, id);
  FASTCAE_ACTIVATIONS(FASTCAE_LIST_ACTIVATION)
#undef FASTCAE_LIST_ACTIVATION
  return list;
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
  m.def("activations", &activations, "(name, id) of every activation of the C++ kernels.");
  m.def("conv2d_epilogue_in_place", &fastcae::conv2d_epilogue_in_place,
        "The conv layer's CPU epilogue on its output z: (h over z, p) under one autograd node.");
  m.def("conv2d_encode_cpu", &fastcae::conv2d_encode_cpu,
        "fastcae.encode_conv2d's plain CPU call: (h, p), or None for the Python path.");
}
