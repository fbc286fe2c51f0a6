#pragma once

#include <cstddef>

#include "kernels/cpu/matmul.h"

namespace blockserve::kernels {

// dst[i] = float(src[i]) for i < n; src holds elements of `type`.
void ToF32(WeightType type, const void* src, size_t n, float* dst);

}  // namespace blockserve::kernels

namespace blockserve::kernels {

// Embedding lookup: out[i][:] = float(table[ids[i]][:]) for i < n; ids must be < rows (checked
// by the caller).
void EmbeddingLookup(WeightType type, const void* table, int dim, const int* ids, int n,
                     float* out);

}  // namespace blockserve::kernels
