#include "kernels/cpu/attention.h"

#include "kernels/cpu/attention_internal.h"
#include "kernels/cpu/attention_layout.h"
#include "kernels/cpu/cpu_features.h"
#include "kernels/half.h"

namespace blockserve::kernels {

namespace {

template <typename T>
void StoreTyped(const float* k, int ldk, const float* v, int ldv, int rows,
                const AttentionShape& s, int slot, T* k_page, T* v_page) {
  auto cast = [](float x) {
    if constexpr (sizeof(T) == 4) {
      return x;
    } else {
      return FloatToBF16(x);
    }
  };
  const int kv_dim = s.n_kv_heads * s.head_dim, ps = s.page_size;
  constexpr size_t kStep = sizeof(T) == 4 ? 1 : 2;  // between a row's slots (K), dims (V)
  for (int d = 0; d < kv_dim; ++d) {
    T* dst = k_page + internal::KIndex<T>(d, slot, ps);
    for (int r = 0; r < rows; ++r) dst[r * kStep] = cast(k[static_cast<size_t>(r) * ldk + d]);
  }
  for (int r = 0; r < rows; ++r) {
    T* dst = v_page + internal::VIndex<T>(slot + r, 0, kv_dim);
    const float* src = v + static_cast<size_t>(r) * ldv;
    for (int d = 0; d < kv_dim; ++d) dst[d * kStep] = cast(src[d]);
  }
}

}  // namespace

void StoreKvRows(const float* k, int ldk, const float* v, int ldv, int rows,
                 const AttentionShape& s, int slot, void* k_page, void* v_page) {
  if (s.kv == KvType::kF32) {
    StoreTyped(k, ldk, v, ldv, rows, s, slot, static_cast<float*>(k_page),
               static_cast<float*>(v_page));
  } else {
    StoreTyped(k, ldk, v, ldv, rows, s, slot, static_cast<uint16_t*>(k_page),
               static_cast<uint16_t*>(v_page));
  }
}

namespace {

struct AttendImpl {
  decltype(&internal::AttendOneGeneric) one;
  decltype(&internal::AttendRowsGeneric) rows;
};

// Chosen once: within one process every query runs through the same code, so a row's result
// never depends on what it is batched with.
const AttendImpl& Selected() {
  static const AttendImpl impl = [] {
#if defined(__x86_64__)
    const CpuFeatures& f = GetCpuFeatures();
    if (f.avx512f && f.fma) return AttendImpl{internal::AttendOneAvx512, internal::AttendRowsAvx512};
    if (f.avx2 && f.fma) return AttendImpl{internal::AttendOneAvx2, internal::AttendRowsAvx2};
#endif
    return AttendImpl{internal::AttendOneGeneric, internal::AttendRowsGeneric};
  }();
  return impl;
}

}  // namespace

void AttendOne(const float* q, const PageTable& kv,
               int n_ctx, const AttentionShape& s, int head_begin, int head_end, float* scores,
               float* out) {
  Selected().one(q, kv, n_ctx, s, head_begin, head_end, scores, out);
}

void AttendRows(const float* q, int ldq, int rows, const PageTable& kv, int n_ctx0, const AttentionShape& s, int head_begin,
                int head_end, float* scores, int lds, float* out, int ldo) {
  Selected().rows(q, ldq, rows, kv, n_ctx0, s, head_begin, head_end, scores, lds,
                  out, ldo);
}

}  // namespace blockserve::kernels
