// Token sampling: greedy, temperature, top-k, top-p, seeded. The RNG and the top-p procedure
// follow llama2.c run.c exactly, so a seeded run reproduces its sampled output.
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "runtime/constraint.h"

namespace blockserve::runtime {

// Most alternatives a sampled token's log-probabilities may list (OpenAI's chat limit).
inline constexpr int kMaxLogprobs = 20;

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy (argmax)
  float top_p = 1.0f;        // (0, 1): nucleus sampling; otherwise off
  int top_k = 0;             // > 0: only the k most likely tokens
  uint64_t seed = 0;         // 0 picks a fixed default seed
  // -1: none; k in [0, kMaxLogprobs]: report the sampled token's log-probability and the k most
  // likely tokens' (Logprobs).
  int logprobs = -1;
  // OpenAI's penalties, in [-2, 2], on the tokens this sampler has picked so far: a token's
  // logit loses frequency_penalty per time it was picked, and presence_penalty once if it was.
  float frequency_penalty = 0.0f;
  float presence_penalty = 0.0f;
  // Added to the logits of these tokens (in [-100, 100]; -100 all but bans one), greedy or not.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // vLLM's (Hugging Face's) repetition penalty, > 0 (1: off): the logit of every token of the
  // prompt (Sampler::SetPrompt) or picked so far is divided by it when positive, multiplied
  // when not.
  float repetition_penalty = 1.0f;
  // The tokens of `min_tokens_stops` cannot be picked before `min_tokens` tokens have been (the
  // engine puts the request's stop tokens there).
  int min_tokens = 0;
  std::vector<int32_t> min_tokens_stops;
  // Structured output: each sampler makes its own constraint, which masks what may come next
  // after the adjustments above (a complete text overrides min_tokens).
  ConstraintFactory constraint;

  absl::Status Validate() const;
};

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0;
};

// Log-probabilities under the model's own distribution — the log-softmax of its logits, before
// temperature and top-k/top-p shape the draw (as vLLM's default) — of a sampled token and of the
// most likely tokens, most likely first (ties: the lower id first).
struct Logprobs {
  float logprob = 0;
  std::vector<TokenLogprob> top;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);
  // Picks the next token from `logits` ([vocab]); overwrites logits with scratch values. With
  // `logprobs` set and SamplingParams::logprobs >= 0, also fills it.
  int Sample(float* logits, int vocab, Logprobs* logprobs = nullptr);
  bool wants_logprobs() const { return params_.logprobs >= 0; }
  // The prompt, for the repetition penalty.
  void SetPrompt(const std::vector<int32_t>& prompt);

 private:
  uint32_t NextU32();
  float NextF32();
  int SampleTopP(const float* probs, int n, float coin);
  int Draw(float* logits, int vocab);
  // logit_bias and the penalties, in place.
  void Adjust(float* logits, int vocab) const;

  SamplingParams params_;
  uint64_t rng_state_;
  std::vector<std::pair<float, int>> candidates_;
  std::vector<float> raw_;  // the logits before sampling changes them (log-probabilities)
  std::vector<std::pair<int32_t, int>> picked_;  // token -> times picked (penalties), by token
  std::unique_ptr<TokenConstraint> constraint_;
  std::vector<int32_t> prompt_tokens_;  // distinct, sorted (repetition penalty)
  int samples_ = 0;                     // tokens picked so far
};

// The log-probability of `token` and of the `k` most likely tokens under `logits` ([vocab]).
Logprobs ComputeLogprobs(const float* logits, int vocab, int32_t token, int k);

int Argmax(const float* x, int n);

}  // namespace blockserve::runtime
