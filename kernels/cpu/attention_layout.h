// Where a K or V element sits in a page of element type T (float or uint16_t for bf16); shared
// by the store (attention.cc) and the per-ISA attention kernels.
#pragma once

#include <cstddef>
#include <cstdint>

namespace blockserve::kernels::internal {

// Page layouts. f32: K [kv dim d][slot], V [slot][kv dim j]. bf16 keeps pairs in one 32-bit word
// (low half first) — K dims (2i, 2i+1) of a key, V slots (2t, 2t+1) of a dimension — so one
// 64-byte load widens into the two vectors the loops want next with one operation each (a
// decode query uses every element once: the widening, not memory, bounds bf16 otherwise).
template <typename T>
inline size_t KIndex(int d, int slot, int ps) {
  if constexpr (sizeof(T) == 4) {
    return static_cast<size_t>(d) * ps + slot;
  } else {
    return static_cast<size_t>(d & ~1) * ps + 2 * slot + (d & 1);
  }
}
template <typename T>
inline size_t VIndex(int slot, int j, int kv_dim) {
  if constexpr (sizeof(T) == 4) {
    return static_cast<size_t>(slot) * kv_dim + j;
  } else {
    return static_cast<size_t>(slot & ~1) * kv_dim + 2 * j + (slot & 1);
  }
}

}  // namespace blockserve::kernels::internal
