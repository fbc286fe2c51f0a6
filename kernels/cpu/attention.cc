#include "kernels/cpu/attention.h"

#include <cmath>
#include <cstring>

#include "kernels/cpu/activations.h"

namespace blockserve::kernels {

void AttendOne(const float* q, const float* const* k_pages, const float* const* v_pages,
               int n_ctx, const AttentionShape& s, int head_begin, int head_end, float* scores,
               float* out) {
  const int kv_dim = s.n_kv_heads * s.head_dim;
  const int group = s.n_heads / s.n_kv_heads;
  const float scale = 1.0f / sqrtf(static_cast<float>(s.head_dim));
  for (int h = head_begin; h < head_end; ++h) {
    const float* qh = q + h * s.head_dim;
    const int kv_off = (h / group) * s.head_dim;
    for (int t = 0; t < n_ctx; ++t) {
      const float* k = k_pages[t / s.page_size] + (t % s.page_size) * kv_dim + kv_off;
      float dot = 0.0f;
      for (int i = 0; i < s.head_dim; ++i) dot += qh[i] * k[i];
      scores[t] = dot * scale;
    }
    Softmax(scores, n_ctx);
    float* oh = out + h * s.head_dim;
    std::memset(oh, 0, sizeof(float) * s.head_dim);
    for (int t = 0; t < n_ctx; ++t) {
      const float* v = v_pages[t / s.page_size] + (t % s.page_size) * kv_dim + kv_off;
      const float a = scores[t];
      for (int i = 0; i < s.head_dim; ++i) oh[i] += a * v[i];
    }
  }
}

}  // namespace blockserve::kernels
