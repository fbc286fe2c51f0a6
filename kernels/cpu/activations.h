// Elementwise activations and softmax.
#pragma once

namespace blockserve::kernels {

// out[i] = silu(gate[i]) * up[i], silu(v) = v / (1 + exp(-v)). out may alias gate or up.
void SwiGlu(const float* gate, const float* up, int n, float* out);

// In-place softmax over x[0..n).
void Softmax(float* x, int n);

}  // namespace blockserve::kernels
