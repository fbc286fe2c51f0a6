#include "kernels/cpu/activations.h"

#include <cmath>

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

}  // namespace blockserve::kernels
