#include "kernels/cpu/activations.h"

#include <cmath>
#include <limits>

#include "kernels/cpu/vec_math.h"

namespace blockserve::kernels {

__attribute__((target_clones("avx512f", "avx2", "default")))
void SwiGlu(const float* gate, const float* up, int n, float* out) {
  for (int i = 0; i < n; ++i) {
    const float g = gate[i];
    out[i] = g * (1.0f / (1.0f + ExpApprox(-g))) * up[i];
  }
}

// Exact expf, as llama2.c: the sampler's probabilities must reproduce its seeded output.
void Softmax(float* x, int n) {
  if (n <= 0) return;
  float max_val = x[0];
  for (int i = 1; i < n; ++i) max_val = x[i] > max_val ? x[i] : max_val;
  float sum = 0.0f;
  for (int i = 0; i < n; ++i) {
    x[i] = expf(x[i] - max_val);
    sum += x[i];
  }
  for (int i = 0; i < n; ++i) x[i] /= sum;
}

// Lanes the compiler keeps in vector registers: a single running max or sum would be a
// loop-carried chain it may not reorder.
constexpr int kLanes = 16;

__attribute__((target_clones("avx512f", "avx2", "default")))
float MaxValue(const float* x, int n) {
  float lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = x[0];
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
  }
  float max = x[0];
  for (int j = 0; j < kLanes; ++j) max = lane[j] > max ? lane[j] : max;
  for (; i < n; ++i) max = x[i] > max ? x[i] : max;
  return max;
}

__attribute__((target_clones("avx512f", "avx2", "default")))
float LogSumExp(const float* x, int n) {
  if (n <= 0) return -std::numeric_limits<float>::infinity();
  const float max = MaxValue(x, n);
  if (!std::isfinite(max)) return max;
  float lane[kLanes];
  for (int j = 0; j < kLanes; ++j) lane[j] = 0.0f;
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) lane[j] += ExpApprox(x[i + j] - max);
  }
  float sum = 0.0f;
  for (; i < n; ++i) sum += ExpApprox(x[i] - max);
  for (int j = 0; j < kLanes; ++j) sum += lane[j];
  return max + std::log(sum);
}

}  // namespace blockserve::kernels
