#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/vec_math.h"

namespace blockserve::kernels {

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
  const int kv_dim = s.n_kv_heads * hd;
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / sqrtf(static_cast<float>(hd));
  for (int h = head_begin; h < head_end; ++h) {
    const float* qh = q + h * hd;
    const int kvh = h / group;
    // Scores, kL keys at a time from the transposed K pages.
    for (int t0 = 0; t0 < n_ctx; t0 += kL) {
      const float* kt = k_pages[t0 / ps] + kvh * hd * ps + (t0 % ps);
      float acc[kL] = {};
      for (int i = 0; i < hd; ++i) {
        const float qi = qh[i];
        for (int j = 0; j < kL; ++j) acc[j] += qi * kt[i * ps + j];
      }
      for (int j = 0; j < kL; ++j) scores[t0 + j] = acc[j] * scale;
    }
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
    // out = sum_t p_t v_t, four keys per pass.
    float o[kMaxHeadDim];
    for (int i = 0; i < hd; ++i) o[i] = 0.0f;
    int t = 0;
    for (; t + 4 <= n_ctx; t += 4) {
      const float* v0 = v_pages[t / ps] + (t % ps) * kv_dim + kvh * hd;
      const float* v1 = v_pages[(t + 1) / ps] + ((t + 1) % ps) * kv_dim + kvh * hd;
      const float* v2 = v_pages[(t + 2) / ps] + ((t + 2) % ps) * kv_dim + kvh * hd;
      const float* v3 = v_pages[(t + 3) / ps] + ((t + 3) % ps) * kv_dim + kvh * hd;
      const float p0 = scores[t], p1 = scores[t + 1], p2 = scores[t + 2], p3 = scores[t + 3];
      for (int i = 0; i < hd; ++i) o[i] += (p0 * v0[i] + p1 * v1[i]) + (p2 * v2[i] + p3 * v3[i]);
    }
    for (; t < n_ctx; ++t) {
      const float* v = v_pages[t / ps] + (t % ps) * kv_dim + kvh * hd;
      const float p = scores[t];
      for (int i = 0; i < hd; ++i) o[i] += p * v[i];
    }
    float* oh = out + h * hd;
    for (int i = 0; i < hd; ++i) oh[i] = o[i] * inv;
  }
}

}  // namespace blockserve::kernels
