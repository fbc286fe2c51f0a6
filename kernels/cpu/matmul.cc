#include "kernels/cpu/matmul.h"

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

void PackRows(const void* src, WeightType type, int rows, int k, int row0, void* dst) {
  const size_t es = WeightTypeSize(type);
  const auto* s = static_cast<const uint8_t*>(src);
  auto* d = static_cast<uint8_t*>(dst);
  for (int r = 0; r < rows; ++r) {
    const int row = row0 + r;
    const int panel = row / kPanel;
    const int lane = row % kPanel;
    uint8_t* base = d + (static_cast<size_t>(panel) * k * kPanel + lane) * es;
    const uint8_t* srow = s + static_cast<size_t>(r) * k * es;
    for (int kk = 0; kk < k; ++kk) {
      std::memcpy(base + static_cast<size_t>(kk) * kPanel * es, srow + kk * es, es);
    }
  }
}

void MatmulPanels(const float* x, int m, int ldx, const PackedMatrix& w, int panel_begin,
                  int panel_end, float* y, int ldy) {
  if (m <= 0 || panel_begin >= panel_end) return;
  Selected().fn(x, m, ldx, w, panel_begin, panel_end, y, ldy);
}

const char* MatmulIsa() { return Selected().name; }

}  // namespace blockserve::kernels
