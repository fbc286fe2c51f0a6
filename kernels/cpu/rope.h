// Rotary position embedding.
#pragma once

#include <cstdint>

namespace blockserve::kernels {

enum class RopeStyle : uint8_t {
  kInterleaved,  // llama2.c / GGUF "normal": rotates pairs (x[2i], x[2i+1])
  kRotateHalf,   // Hugging Face / NeoX: rotates pairs (x[i], x[i + head_dim/2])
};

// cos_out/sin_out: [head_dim/2], the angle of pair i is pos * theta^(-2i/head_dim), computed in
// float exactly as llama2.c does.
void RopeAngles(int pos, int head_dim, float theta, float* cos_out, float* sin_out);

// Rotates every head of x: [n_heads][head_dim] in place with the angles of RopeAngles.
void ApplyRope(RopeStyle style, float* x, int n_heads, int head_dim, const float* cos_v,
               const float* sin_v);

}  // namespace blockserve::kernels
