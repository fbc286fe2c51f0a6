#include "kernels/cpu/rope.h"

#include <cmath>

namespace blockserve::kernels {

void RopeAngles(int pos, int head_dim, float theta, float* cos_out, float* sin_out) {
  for (int i = 0; i < head_dim / 2; ++i) {
    const float freq = 1.0f / powf(theta, static_cast<float>(2 * i) / static_cast<float>(head_dim));
    const float val = static_cast<float>(pos) * freq;
    cos_out[i] = cosf(val);
    sin_out[i] = sinf(val);
  }
}

// One loop per style so each vectorises (pairs adjacent, or half a head apart). Compiled
// without contraction into FMAs: every clone rounds exactly as llama2.c does.
__attribute__((target_clones("avx512f", "avx2", "default")))
void ApplyRope(RopeStyle style, float* x, int n_heads, int head_dim,
               const float* __restrict cos_v, const float* __restrict sin_v) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* __restrict v = x + h * head_dim;
    if (style == RopeStyle::kInterleaved) {
      for (int i = 0; i < half; ++i) {
        const float v0 = v[2 * i], v1 = v[2 * i + 1];
        v[2 * i] = v0 * cos_v[i] - v1 * sin_v[i];
        v[2 * i + 1] = v0 * sin_v[i] + v1 * cos_v[i];
      }
    } else {
      float* __restrict w = v + half;
      for (int i = 0; i < half; ++i) {
        const float v0 = v[i], v1 = w[i];
        v[i] = v0 * cos_v[i] - v1 * sin_v[i];
        w[i] = v0 * sin_v[i] + v1 * cos_v[i];
      }
    }
  }
}

}  // namespace blockserve::kernels
