// Synthetic Llama-shape models with random weights: for timing only, never for correctness.
#pragma once

#include <cstdint>

#include "runtime/model_weights.h"

namespace blockserve::blockzoo {

// The reference shape: dim 768, 12 layers, 12 heads, FFN 2048, vocab 32000 (~110M
// parameters, untied head).
runtime::ModelConfig Llama110MConfig();
// A small GQA shape for quick runs: dim 256, 4 layers, 8 heads, 4 kv heads, FFN 688, vocab 512.
runtime::ModelConfig SmallConfig();
// A mid-size shape for multi-model benchmarks on few cores: dim 512, 8 layers, 8 heads, FFN
// 1376, vocab 8000 (128 MiB in f32).
runtime::ModelConfig MediumConfig();

// Random weights (uniform, std ~0.02; norms 1) stored as `dtype`.
runtime::ModelWeights MakeSyntheticWeights(const runtime::ModelConfig& config,
                                           runtime::DType dtype, uint64_t seed);

}  // namespace blockserve::blockzoo
