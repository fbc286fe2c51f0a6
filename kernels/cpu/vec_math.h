// Branch-free scalar math that the compiler vectorises when inlined into a loop (used inside
// target_clones kernels). Accuracy: ExpApprox is within ~2 ulp of expf for x in [-87, 88],
// exactly 0 below (so masked -inf scores get zero weight).
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace blockserve::kernels {

inline float ExpApprox(float x) {
  float xc = x < -87.0f ? -87.0f : x;  // ternaries, not fmin/fmax: those stay library calls
  xc = xc > 88.0f ? 88.0f : xc;
  const float n = std::nearbyint(xc * 1.44269504088896341f);
  // Cody-Waite range reduction: r = x - n ln2, |r| <= ln2 / 2.
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  // Cephes expf polynomial.
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = static_cast<int32_t>(n) + 127;
  const float scale = std::bit_cast<float>(static_cast<uint32_t>(e) << 23);
  return x < -87.0f ? 0.0f : p * scale;
}

}  // namespace blockserve::kernels
