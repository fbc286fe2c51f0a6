// Token sampling: greedy, temperature, top-k, top-p, seeded. The RNG and the top-p procedure
// follow llama2.c run.c exactly, so a seeded run reproduces its sampled output.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"

namespace blockserve::runtime {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  float top_p = 1.0f;        // (0, 1): nucleus sampling; otherwise off
  int top_k = 0;             // > 0: only the k most likely tokens
  uint64_t seed = 0;         // 0 picks a fixed default seed

  absl::Status Validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from `logits` ([vocab]); overwrites logits with scratch values.
  int Sample(float* logits, int vocab);

 private:
  uint32_t NextU32();
  float NextF32();
  int SampleTopP(const float* probs, int n, float coin);

  SamplingParams params_;
  uint64_t rng_state_;
  std::vector<std::pair<float, int>> candidates_;
};

int Argmax(const float* x, int n);

}  // namespace blockserve::runtime
