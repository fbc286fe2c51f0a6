// Elementwise activations and softmax.
#pragma once

namespace blockserve::kernels {

// out[i] = silu(gate[i]) * up[i], silu(v) = v / (1 + exp(-v)). out may alias gate or up.
void SwiGlu(const float* gate, const float* up, int n, float* out);

// In-place softmax over x[0..n).
void Softmax(float* x, int n);

// The largest of x[0..n) (NaNs never win over a number; x[0] when n <= 0 is not allowed), in
// 16 lanes the compiler vectorises.
float MaxValue(const float* x, int n);

// log(sum exp x[i]) over x[0..n), the maximum taken out first (no overflow); -inf when n <= 0.
// Float sums in 16 lanes and ExpApprox: within ~1e-6 of a double-precision reference for the
// vocabulary-sized inputs it serves (log-probabilities).
float LogSumExp(const float* x, int n);

}  // namespace blockserve::kernels
