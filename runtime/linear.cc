#include "runtime/linear.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace blockserve::runtime {
namespace {

kernels::WeightType ToWeightType(DType t) {
  switch (t) {
    case DType::kF16:
      return kernels::WeightType::kF16;
    case DType::kBF16:
      return kernels::WeightType::kBF16;
    default:
      return kernels::WeightType::kF32;
  }
}

// Converts a [rows][k] tensor to `storage` dtype (a copy only when the types differ).
std::vector<uint8_t> ConvertRows(const Tensor& t, DType storage) {
  const size_t n = static_cast<size_t>(t.numel());
  std::vector<uint8_t> out(n * DTypeSize(storage));
  if (t.dtype() == storage) {
    std::memcpy(out.data(), t.raw(), out.size());
    return out;
  }
  std::vector<float> f(n);
  ConvertToF32(t.dtype(), t.raw(), n, f.data());
  if (storage == DType::kF32) {
    std::memcpy(out.data(), f.data(), out.size());
  } else {
    auto* h = reinterpret_cast<uint16_t*>(out.data());
    for (size_t i = 0; i < n; ++i) {
      h[i] = storage == DType::kF16 ? FloatToHalf(f[i]) : FloatToBF16(f[i]);
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<PackedLinear> PackedLinear::Pack(const std::vector<const Tensor*>& parts,
                                                DType storage) {
  if (parts.empty()) return absl::InvalidArgumentError("PackedLinear: no parts");
  if (storage == DType::kI32) return absl::InvalidArgumentError("PackedLinear: i32 storage");
  const int64_t k = parts[0]->dim(1);
  int64_t n = 0;
  for (const Tensor* t : parts) {
    if (t->rank() != 2 || t->dim(1) != k) {
      return absl::InvalidArgumentError(
          absl::StrCat("PackedLinear: parts disagree in shape: ", t->ShapeString()));
    }
    n += t->dim(0);
  }
  if (n <= 0 || k <= 0 || n > (1 << 26) || k > (1 << 26)) {
    return absl::InvalidArgumentError("PackedLinear: bad shape");
  }
  PackedLinear out;
  out.matrix_.type = ToWeightType(storage);
  out.matrix_.n = static_cast<int>(n);
  out.matrix_.k = static_cast<int>(k);
  out.storage_ = AllocateAligned(out.bytes());
  out.matrix_.data = out.storage_.get();
  int row0 = 0;
  for (const Tensor* t : parts) {
    const std::vector<uint8_t> rows = ConvertRows(*t, storage);
    kernels::PackRows(rows.data(), out.matrix_.type, static_cast<int>(t->dim(0)),
                      static_cast<int>(k), row0, out.storage_.get());
    row0 += static_cast<int>(t->dim(0));
  }
  return out;
}

void PackedLinear::Forward(ThreadPool& pool, const float* x, int m, float* y) const {
  constexpr int kRowBlock = 48;  // rows per task when splitting over rows as well
  const int panels = kernels::NumPanels(matrix_.n);
  const int threads = pool.size();
  const int panel_parts = std::min(panels, threads);
  // Few panels but many rows (small models, long prefill): split rows too.
  const int row_parts = panels >= 2 * threads ? 1
                                              : std::max(1, std::min((m + kRowBlock - 1) /
                                                                         kRowBlock,
                                                                     threads));
  pool.Run(panel_parts * row_parts, [&](int task) {
    const int pp = task % panel_parts;
    const int rp = task / panel_parts;
    const int p0 = panels * pp / panel_parts;
    const int p1 = panels * (pp + 1) / panel_parts;
    const int r0 = m * rp / row_parts;
    const int r1 = m * (rp + 1) / row_parts;
    kernels::MatmulPanels(x + static_cast<size_t>(r0) * matrix_.k, r1 - r0, matrix_.k, matrix_,
                          p0, p1, y + static_cast<size_t>(r0) * matrix_.n, matrix_.n);
  });
}

}  // namespace blockserve::runtime
