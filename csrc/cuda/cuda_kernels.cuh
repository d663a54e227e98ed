// Conventions shared by the CUDA kernel files.
#pragma once

#include <cstdint>
#include <cstddef>

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

// The sum of `value` over a block of kWarps warps, in a fixed order (each warp
// by butterfly, then the warps' sums in order); valid in thread 0 only.
template <int kWarps, typename acc_t>
__device__ __forceinline__ acc_t block_sum(acc_t value) {
  __shared__ acc_t warp_sums[kWarps];
  value = warp_sum(value);
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  acc_t total = 0;
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w];
  }
  return total;
}

// kVec consecutive elements, loaded and stored as one access of up to 16 bytes.
template <typename scalar_t, int kVec>
struct alignas(sizeof(scalar_t) * kVec) Pack {
  scalar_t values[kVec];
};

// Elements per 16-byte access.
template <typename scalar_t>
constexpr int vector_width() {
  return sizeof(scalar_t) >= 16 ? 1 : static_cast<int>(16 / sizeof(scalar_t));
}

// Whether rows of `row_elements` elements starting at `data` can be read in
// packs of `vec`: every row start 16-byte aligned, no row ends mid-pack.
inline bool packs_fit(const void* data, int64_t row_elements, int vec, int64_t element_size) {
  return row_elements % vec == 0 && reinterpret_cast<uintptr_t>(data) % (vec * element_size) == 0;
}

inline int64_t blocks_for(int64_t items, int64_t per_block) { return (items + per_block - 1) / per_block; }

}  // namespace cuda
}  // namespace fastcae
