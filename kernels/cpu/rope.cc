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

void ApplyRope(RopeStyle style, float* x, int n_heads, int head_dim, const float* cos_v,
               const float* sin_v) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* v = x + h * head_dim;
    for (int i = 0; i < half; ++i) {
      const int a = style == RopeStyle::kInterleaved ? 2 * i : i;
      const int b = style == RopeStyle::kInterleaved ? 2 * i + 1 : i + half;
      const float v0 = v[a];
      const float v1 = v[b];
      v[a] = v0 * cos_v[i] - v1 * sin_v[i];
      v[b] = v0 * sin_v[i] + v1 * cos_v[i];
    }
  }
}

}  // namespace blockserve::kernels
