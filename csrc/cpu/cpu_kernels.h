// Conventions shared by the CPU kernel files.
#pragma once

#include <algorithm>
#include <cstdint>

// The hot loops are compiled for several instruction sets and the loader picks
// the best the CPU has (GCC function multi-versioning), so a wheel built on one
// x86-64 machine runs everywhere and still uses AVX-512 where it exists.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTCAE_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTCAE_CPU_CLONES
#endif

namespace fastcae {

// Work per parallel task: enough elements that scheduling cost is negligible.
constexpr int64_t kElementsPerTask = 32768;

inline int64_t rows_per_task(int64_t row_elements) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(row_elements, 1));
}

}  // namespace fastcae
