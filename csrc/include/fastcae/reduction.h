// The fixed reduction orders every op's kernels follow, so their results are
// bitwise reproducible whatever the thread count or launch configuration.
#pragma once

#include <algorithm>
#include <cstdint>

namespace fastcae {

// Sums over the batch go per fixed chunk of this many rows (a function of the
// batch size alone), and the chunks are added in order.
inline int64_t backward_chunk_rows(int64_t batch) {
  return std::max<int64_t>(16, (batch + 255) / 256);
}

inline int64_t backward_num_chunks(int64_t batch) {
  const int64_t rows = backward_chunk_rows(batch);
  return (batch + rows - 1) / rows;
}

}  // namespace fastcae
