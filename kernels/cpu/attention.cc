#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/vec_math.h"

namespace blockserve::kernels {
namespace {

// 16 floats as one value; each target_clones clone lowers it to its widest registers.
typedef float V16 __attribute__((vector_size(64)));

// Helpers pass vectors by pointer: by value they would change the ABI between clones.
inline void Madd16(V16* acc, float s, const float* p) {
  V16 v;
  std::memcpy(&v, p, sizeof(v));
  *acc += s * v;
}
inline void Madd4x16(V16* acc, float p0, const float* v0, float p1, const float* v1, float p2,
                     const float* v2, float p3, const float* v3) {
  V16 a, b, c, d;
  std::memcpy(&a, v0, sizeof(a));
  std::memcpy(&b, v1, sizeof(b));
  std::memcpy(&c, v2, sizeof(c));
  std::memcpy(&d, v3, sizeof(d));
  *acc += (p0 * a + p1 * b) + (p2 * c + p3 * d);
}
inline void StoreScaled16(float* p, const V16* v, float s) {
  const V16 r = *v * s;
  std::memcpy(p, &r, sizeof(r));
}

// softmax(scores[0..n_ctx)) . V of kv head `kvh` -> oh [head_dim]. Inlined into each clone.
__attribute__((always_inline)) inline void SoftmaxTimesV(float* scores, int n_ctx,
                                                         const float* const* v_pages,
                                                         const AttentionShape& s, int kvh,
                                                         float* oh) {
  constexpr int kL = kPageAlign;
  const int hd = s.head_dim, ps = s.page_size;
  const int kv_dim = s.n_kv_heads * hd;
  float max_score = -INFINITY;
  for (int t = 0; t < n_ctx; ++t) max_score = scores[t] > max_score ? scores[t] : max_score;
  float lane_sum[kL] = {};
  const int n_pad = (n_ctx + kL - 1) / kL * kL;
  for (int t = n_ctx; t < n_pad; ++t) scores[t] = -INFINITY;  // padding weighs nothing
  for (int t0 = 0; t0 < n_pad; t0 += kL) {
    for (int j = 0; j < kL; ++j) {
      scores[t0 + j] = ExpApprox(scores[t0 + j] - max_score);
      lane_sum[j] += scores[t0 + j];
    }
  }
  float sum = 0.0f;
  for (int j = 0; j < kL; ++j) sum += lane_sum[j];
  const float inv = 1.0f / sum;
  if (hd % kL != 0) {  // small heads (e.g. 8 dims): plain loop
    for (int i = 0; i < hd; ++i) oh[i] = 0.0f;
    for (int t = 0; t < n_ctx; ++t) {
      const float* v = v_pages[t / ps] + (t % ps) * kv_dim + kvh * hd;
      for (int i = 0; i < hd; ++i) oh[i] += scores[t] * v[i];
    }
    for (int i = 0; i < hd; ++i) oh[i] *= inv;
    return;
  }
  // out = sum_t p_t v_t, four keys per pass, 16 dims at a time.
  V16 o[kMaxHeadDim / kL] = {};
  const int nv = hd / kL;
  int t = 0;
  for (; t + 4 <= n_ctx; t += 4) {
    const float* v0 = v_pages[t / ps] + (t % ps) * kv_dim + kvh * hd;
    const float* v1 = v_pages[(t + 1) / ps] + ((t + 1) % ps) * kv_dim + kvh * hd;
    const float* v2 = v_pages[(t + 2) / ps] + ((t + 2) % ps) * kv_dim + kvh * hd;
    const float* v3 = v_pages[(t + 3) / ps] + ((t + 3) % ps) * kv_dim + kvh * hd;
    const float p0 = scores[t], p1 = scores[t + 1], p2 = scores[t + 2], p3 = scores[t + 3];
    for (int c = 0; c < nv; ++c) {
      Madd4x16(&o[c], p0, v0 + c * kL, p1, v1 + c * kL, p2, v2 + c * kL, p3, v3 + c * kL);
    }
  }
  for (; t < n_ctx; ++t) {
    const float* v = v_pages[t / ps] + (t % ps) * kv_dim + kvh * hd;
    const float p = scores[t];
    for (int c = 0; c < nv; ++c) Madd16(&o[c], p, v + c * kL);
  }
  for (int c = 0; c < nv; ++c) StoreScaled16(oh + c * kL, &o[c], inv);
}

}  // namespace

void StoreKv(const float* k, const float* v, const AttentionShape& s, int slot, float* k_page,
             float* v_page) {
  const int kv_dim = s.n_kv_heads * s.head_dim;
  for (int d = 0; d < kv_dim; ++d) k_page[d * s.page_size + slot] = k[d];
  std::memcpy(v_page + slot * kv_dim, v, sizeof(float) * kv_dim);
}

// Vectorised per ISA through target_clones; each clone computes every query the same way
// whatever else is in the batch.
__attribute__((target_clones("avx512f", "avx2", "default")))
void AttendOne(const float* q, const float* const* k_pages, const float* const* v_pages,
               int n_ctx, const AttentionShape& s, int head_begin, int head_end, float* scores,
               float* out) {
  constexpr int kL = kPageAlign;
  const int hd = s.head_dim, ps = s.page_size;
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  for (int h = head_begin; h < head_end; ++h) {
    const float* qh = q + h * hd;
    const int kvh = h / group;
    // Scores, kL keys at a time from the transposed K pages; four key blocks at once when
    // there are enough, for independent FMA chains (each score's own order is unchanged).
    int t0 = 0;
    for (; t0 + 4 * kL <= n_ctx; t0 += 4 * kL) {
      const float* k0 = k_pages[t0 / ps] + kvh * hd * ps + (t0 % ps);
      const float* k1 = k_pages[(t0 + kL) / ps] + kvh * hd * ps + ((t0 + kL) % ps);
      const float* k2 = k_pages[(t0 + 2 * kL) / ps] + kvh * hd * ps + ((t0 + 2 * kL) % ps);
      const float* k3 = k_pages[(t0 + 3 * kL) / ps] + kvh * hd * ps + ((t0 + 3 * kL) % ps);
      V16 a0 = {}, a1 = {}, a2 = {}, a3 = {};
      for (int i = 0; i < hd; ++i) {
        const float qi = qh[i];
        Madd16(&a0, qi, k0 + i * ps);
        Madd16(&a1, qi, k1 + i * ps);
        Madd16(&a2, qi, k2 + i * ps);
        Madd16(&a3, qi, k3 + i * ps);
      }
      StoreScaled16(scores + t0, &a0, scale);
      StoreScaled16(scores + t0 + kL, &a1, scale);
      StoreScaled16(scores + t0 + 2 * kL, &a2, scale);
      StoreScaled16(scores + t0 + 3 * kL, &a3, scale);
    }
    for (; t0 < n_ctx; t0 += kL) {
      const float* kt = k_pages[t0 / ps] + kvh * hd * ps + (t0 % ps);
      V16 acc = {};
      for (int i = 0; i < hd; ++i) Madd16(&acc, qh[i], kt + i * ps);
      StoreScaled16(scores + t0, &acc, scale);
    }
    SoftmaxTimesV(scores, n_ctx, v_pages, s, kvh, out + h * hd);
  }
}

// Rows r of a prefill span (positions n_ctx0 - 1 + r): the K loads of each key block are shared
// by all rows; every row's scores are the same FMA chains AttendOne computes, and its softmax and
// V product are AttendOne's own code, so each row's result is bit-identical to AttendOne's.
__attribute__((target_clones("avx512f", "avx2", "default")))
void AttendRows(const float* q, int ldq, int rows, const float* const* k_pages,
                const float* const* v_pages, int n_ctx0, const AttentionShape& s, int head_begin,
                int head_end, float* scores, int lds, float* out, int ldo) {
  constexpr int kL = kPageAlign;
  const int hd = s.head_dim, ps = s.page_size;
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  for (int h = head_begin; h < head_end; ++h) {
    const int kvh = h / group;
    const int n_last = n_ctx0 + rows - 1;
    for (int t0 = 0; t0 < n_last; t0 += kL) {
      const float* kt = k_pages[t0 / ps] + kvh * hd * ps + (t0 % ps);
      V16 acc[kMaxAttendRows] = {};
      // Row r needs this block when t0 < n_ctx0 + r; the first such row is `first`.
      const int first = t0 < n_ctx0 ? 0 : t0 - n_ctx0 + 1;
      for (int i = 0; i < hd; ++i) {
        for (int r = first; r < rows; ++r) Madd16(&acc[r], q[r * ldq + h * hd + i], kt + i * ps);
      }
      for (int r = first; r < rows; ++r) StoreScaled16(scores + r * lds + t0, &acc[r], scale);
    }
    for (int r = 0; r < rows; ++r) {
      SoftmaxTimesV(scores + r * lds, n_ctx0 + r, v_pages, s, kvh, out + r * ldo + h * hd);
    }
  }
}

}  // namespace blockserve::kernels
