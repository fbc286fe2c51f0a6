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

// Rows [r0, r0 + rows) of a [rows][k] tensor in `storage` dtype, at `buf` (converted there,
// or pointing into the tensor when the types agree: no copy).
const void* RowsAs(const Tensor& t, DType storage, int64_t r0, int64_t rows,
                   std::vector<uint8_t>& buf) {
  const int64_t k = t.dim(1);
  const size_t n = static_cast<size_t>(rows * k);
  const auto* src =
      static_cast<const uint8_t*>(t.raw()) + static_cast<size_t>(r0 * k) * DTypeSize(t.dtype());
  if (t.dtype() == storage) return src;
  buf.resize(n * DTypeSize(storage));
  if (storage == DType::kF32) {
    ConvertToF32(t.dtype(), src, n, reinterpret_cast<float*>(buf.data()));
  } else {
    std::vector<float> f(n);
    ConvertToF32(t.dtype(), src, n, f.data());
    auto* h = reinterpret_cast<uint16_t*>(buf.data());
    for (size_t i = 0; i < n; ++i) {
      h[i] = storage == DType::kF16 ? FloatToHalf(f[i]) : FloatToBF16(f[i]);
    }
  }
  return buf.data();
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
  // Every byte is written below (the packed rows, then the padding lanes of the last panel):
  // no zero-filling pass over fresh memory first.
  out.storage_ = AllocateAligned(out.bytes(), /*zeroed=*/false);
  out.matrix_.data = out.storage_.get();
  int row0 = 0;
  std::vector<uint8_t> buf;
  constexpr int64_t kRowsPerPass = 256;  // converted rows held at once (a dtype change only)
  for (const Tensor* t : parts) {
    for (int64_t r = 0; r < t->dim(0); r += kRowsPerPass) {
      const int64_t rows = std::min(kRowsPerPass, t->dim(0) - r);
      kernels::PackRows(RowsAs(*t, storage, r, rows, buf), out.matrix_.type,
                        static_cast<int>(rows), static_cast<int>(k), row0 + static_cast<int>(r),
                        out.storage_.get());
    }
    row0 += static_cast<int>(t->dim(0));
  }
  if (n % kernels::kPanel != 0) {  // zero weights for the columns past n
    const size_t es = DTypeSize(storage);
    auto* last = static_cast<uint8_t*>(out.storage_.get()) +
                 static_cast<size_t>(kernels::NumPanels(out.matrix_.n) - 1) * k * kernels::kPanel * es;
    const int lane0 = static_cast<int>(n % kernels::kPanel);
    for (int64_t kk = 0; kk < k; ++kk) {
      std::memset(last + (static_cast<size_t>(kk) * kernels::kPanel + lane0) * es, 0,
                  static_cast<size_t>(kernels::kPanel - lane0) * es);
    }
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
