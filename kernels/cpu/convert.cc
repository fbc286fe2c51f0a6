#include "kernels/cpu/convert.h"

#include <cstdint>
#include <cstring>

#include "kernels/half.h"

namespace blockserve::kernels {

void ToF32(WeightType type, const void* src, size_t n, float* dst) {
  if (type == WeightType::kF32) {
    std::memcpy(dst, src, n * sizeof(float));
    return;
  }
  const auto* h = static_cast<const uint16_t*>(src);
  if (type == WeightType::kF16) {
    for (size_t i = 0; i < n; ++i) dst[i] = HalfToFloat(h[i]);
  } else {
    for (size_t i = 0; i < n; ++i) dst[i] = BF16ToFloat(h[i]);
  }
}

}  // namespace blockserve::kernels

namespace blockserve::kernels {

void EmbeddingLookup(WeightType type, const void* table, int dim, const int* ids, int n,
                     float* out) {
  const auto* base = static_cast<const uint8_t*>(table);
  const size_t row_bytes = static_cast<size_t>(dim) * WeightTypeSize(type);
  for (int i = 0; i < n; ++i) {
    ToF32(type, base + static_cast<size_t>(ids[i]) * row_bytes, dim,
          out + static_cast<size_t>(i) * dim);
  }
}

}  // namespace blockserve::kernels
