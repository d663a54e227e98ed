// Conventions shared by the CUDA kernel files.
#pragma once

#include <cstdint>

namespace fastcae {
namespace cuda {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = 4;
constexpr int kUnitsPerBlock = 256;
constexpr unsigned kFullMask = 0xffffffffu;

// Sum over the 32 lanes of a warp in a fixed butterfly order (deterministic).
template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(kFullMask, value, offset);
  }
  return value;
}

inline int64_t blocks_for(int64_t items, int64_t per_block) { return (items + per_block - 1) / per_block; }

}  // namespace cuda
}  // namespace fastcae
