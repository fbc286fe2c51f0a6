#include "kernels/cpu/matmul.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_features.h"
#include "kernels/cpu/matmul_internal.h"

namespace blockserve::kernels {
namespace {

struct Impl {
  internal::MatmulFn fn;
  const char* name;
};

Impl Select() {
#if defined(__x86_64__)
  const CpuFeatures& f = GetCpuFeatures();
  if (f.avx512f && f.avx512bw && f.avx512vl && f.f16c && f.fma) {
    return {internal::MatmulPanelsAvx512, "avx512"};
  }
  if (f.avx2 && f.fma && f.f16c) return {internal::MatmulPanelsAvx2, "avx2"};
#endif
  return {internal::MatmulPanelsGeneric, "generic"};
}

const Impl& Selected() {
  static const Impl impl = Select();
  return impl;
}

}  // namespace

namespace {

// One panel at a time: the panel's `lanes` source rows (from `lane0`) are read as parallel
// streams and the panel is written front to back, 32 lanes per k.
template <typename E>
void PackTyped(const E* src, int rows, int k, int row0, E* dst) {
  for (int r = 0; r < rows;) {
    const int row = row0 + r;
    const int lane0 = row % kPanel;
    const int lanes = std::min(kPanel - lane0, rows - r);
    E* panel = dst + static_cast<size_t>(row / kPanel) * k * kPanel;
    const E* s = src + static_cast<size_t>(r) * k;
    for (int kk = 0; kk < k; ++kk) {
      E* out = panel + static_cast<size_t>(kk) * kPanel + lane0;
      for (int l = 0; l < lanes; ++l) out[l] = s[static_cast<size_t>(l) * k + kk];
    }
    r += lanes;
  }
}

}  // namespace

void PackRows(const void* src, WeightType type, int rows, int k, int row0, void* dst) {
  if (WeightTypeSize(type) == 4) {
    PackTyped(static_cast<const uint32_t*>(src), rows, k, row0, static_cast<uint32_t*>(dst));
  } else {
    PackTyped(static_cast<const uint16_t*>(src), rows, k, row0, static_cast<uint16_t*>(dst));
  }
}

void MatmulPanels(const float* x, int m, int ldx, const PackedMatrix& w, int panel_begin,
                  int panel_end, float* y, int ldy) {
  if (m <= 0 || panel_begin >= panel_end) return;
  Selected().fn(x, m, ldx, w, panel_begin, panel_end, y, ldy);
}

const char* MatmulIsa() { return Selected().name; }

}  // namespace blockserve::kernels
