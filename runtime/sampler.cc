#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/activations.h"

namespace blockserve::runtime {

absl::Status SamplingParams::Validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return absl::InvalidArgumentError(absl::StrCat("temperature must be >= 0, got ", temperature));
  }
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", top_p));
  }
  if (top_k < 0) return absl::InvalidArgumentError(absl::StrCat("top_k must be >= 0, got ", top_k));
  for (const auto& [name, v] : {std::pair<const char*, float>{"frequency_penalty", frequency_penalty},
                                 {"presence_penalty", presence_penalty}}) {
    if (!(v >= -2.0f && v <= 2.0f)) {
      return absl::InvalidArgumentError(absl::StrCat(name, " must be in [-2, 2], got ", v));
    }
  }
  for (const auto& [token, bias] : logit_bias) {
    if (token < 0) return absl::InvalidArgumentError(absl::StrCat("logit_bias: bad token id ", token));
    if (!(bias >= -100.0f && bias <= 100.0f)) {
      return absl::InvalidArgumentError(
          absl::StrCat("logit_bias of token ", token, " must be in [-100, 100], got ", bias));
    }
  }
  if (!(repetition_penalty > 0.0f && repetition_penalty <= 10.0f)) {
    return absl::InvalidArgumentError(
        absl::StrCat("repetition_penalty must be in (0, 10], got ", repetition_penalty));
  }
  if (min_tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("min_tokens must be >= 0, got ", min_tokens));
  }
  if (logprobs < -1 || logprobs > kMaxLogprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", kMaxLogprobs, "], got ", logprobs));
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params)
    : params_(params), rng_state_(params.seed == 0 ? 0x9E3779B97F4A7C15ull : params.seed) {
  if (params_.constraint) constraint_ = params_.constraint();
}

uint32_t Sampler::NextU32() {  // xorshift64*, as llama2.c random_u32
  rng_state_ ^= rng_state_ >> 12;
  rng_state_ ^= rng_state_ << 25;
  rng_state_ ^= rng_state_ >> 27;
  return static_cast<uint32_t>((rng_state_ * 0x2545F4914F6CDD1Dull) >> 32);
}

float Sampler::NextF32() { return static_cast<float>(NextU32() >> 8) / 16777216.0f; }

int Argmax(const float* x, int n) {
  // The first index of the largest value (NaNs never win; a NaN at 0 is returned as is), in
  // two passes the compiler vectorises — the largest value, then where it first occurs — instead
  // of one loop carrying `best` from element to element (greedy decoding scans the whole
  // vocabulary for every token).
  if (n <= 0 || std::isnan(x[0])) return 0;
  const float best = kernels::MaxValue(x, n);
  int i = 0;
  for (; i < n && !(x[i] == best); ++i) {
  }
  return i < n ? i : 0;
}

int Sampler::SampleTopP(const float* probs, int n, float coin) {
  // Tokens below the cutoff cannot be part of the nucleus; dropping them first keeps the sort
  // short (llama2.c's trick).
  const float cutoff = (1.0f - params_.top_p) / static_cast<float>(n - 1);
  candidates_.clear();
  for (int i = 0; i < n; ++i) {
    if (probs[i] >= cutoff) candidates_.push_back({probs[i], i});
  }
  std::stable_sort(candidates_.begin(), candidates_.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  float cumulative = 0.0f;
  int last = static_cast<int>(candidates_.size()) - 1;
  for (int i = 0; i < static_cast<int>(candidates_.size()); ++i) {
    cumulative += candidates_[i].first;
    if (cumulative > params_.top_p) {
      last = i;
      break;
    }
  }
  const float r = coin * cumulative;
  float cdf = 0.0f;
  for (int i = 0; i <= last; ++i) {
    cdf += candidates_[i].first;
    if (r < cdf) return candidates_[i].second;
  }
  return candidates_[last].second;
}

Logprobs ComputeLogprobs(const float* logits, int vocab, int32_t token, int k) {
  Logprobs out;
  if (vocab <= 0) return out;
  const float lse = kernels::LogSumExp(logits, vocab);
  out.logprob = logits[token] - lse;
  k = std::min(k, vocab);
  if (k <= 0) return out;
  // The k largest, kept sorted (value descending, id ascending) by insertion: k <= 20, and
  // after the first few hundred logits almost every one is rejected by one comparison.
  std::vector<std::pair<float, int32_t>> top;
  top.reserve(k + 1);
  for (int i = 0; i < vocab; ++i) {
    if (static_cast<int>(top.size()) == k && !(logits[i] > top.back().first)) continue;
    auto at = std::find_if(top.begin(), top.end(), [&](const auto& t) { return logits[i] > t.first; });
    top.insert(at, {logits[i], i});
    if (static_cast<int>(top.size()) > k) top.pop_back();
  }
  for (const auto& [v, id] : top) out.top.push_back({id, v - lse});
  return out;
}

void Sampler::SetPrompt(const std::vector<int32_t>& prompt) {
  if (params_.repetition_penalty == 1.0f) return;
  prompt_tokens_ = prompt;
  std::sort(prompt_tokens_.begin(), prompt_tokens_.end());
  prompt_tokens_.erase(std::unique(prompt_tokens_.begin(), prompt_tokens_.end()), prompt_tokens_.end());
}

void Sampler::Adjust(float* logits, int vocab) const {
  for (const auto& [token, bias] : params_.logit_bias) {
    if (token < vocab) logits[token] += bias;
  }
  if (const float r = params_.repetition_penalty; r != 1.0f) {
    auto penalise = [&](int32_t t) {
      if (t >= 0 && t < vocab) logits[t] = logits[t] > 0 ? logits[t] / r : logits[t] * r;
    };
    // Each token once, whether in the prompt, picked, or both.
    for (int32_t t : prompt_tokens_) penalise(t);
    for (const auto& [t, count] : picked_) {
      if (!std::binary_search(prompt_tokens_.begin(), prompt_tokens_.end(), t)) penalise(t);
    }
  }
  for (const auto& [token, count] : picked_) {
    if (token < vocab) {
      logits[token] -= static_cast<float>(count) * params_.frequency_penalty + params_.presence_penalty;
    }
  }
  if (samples_ < params_.min_tokens) {
    for (int32_t t : params_.min_tokens_stops) {
      if (t >= 0 && t < vocab) logits[t] = -std::numeric_limits<float>::infinity();
    }
  }
}

int Sampler::Sample(float* logits, int vocab, Logprobs* logprobs) {
  const bool want = logprobs != nullptr && params_.logprobs >= 0;
  // Sampling rewrites the logits (bias, penalties, temperature, softmax): keep the model's own.
  if (want) raw_.assign(logits, logits + vocab);
  const bool penalised = params_.frequency_penalty != 0.0f || params_.presence_penalty != 0.0f ||
                         params_.repetition_penalty != 1.0f;
  Adjust(logits, vocab);
  if (constraint_) constraint_->Mask(logits, vocab);
  const int token = Draw(logits, vocab);
  if (constraint_) constraint_->Accept(token);
  ++samples_;
  if (want) *logprobs = ComputeLogprobs(raw_.data(), vocab, token, params_.logprobs);
  if (penalised) {
    auto it = std::lower_bound(picked_.begin(), picked_.end(), std::make_pair(token, 0));
    if (it != picked_.end() && it->first == token) {
      ++it->second;
    } else {
      picked_.insert(it, {token, 1});
    }
  }
  return token;
}

int Sampler::Draw(float* logits, int vocab) {
  if (params_.temperature == 0.0f) return Argmax(logits, vocab);
  for (int i = 0; i < vocab; ++i) logits[i] /= params_.temperature;
  if (params_.top_k > 0 && params_.top_k < vocab) {
    std::vector<float> sorted(logits, logits + vocab);
    std::nth_element(sorted.begin(), sorted.begin() + (params_.top_k - 1), sorted.end(),
                     std::greater<float>());
    const float kth = sorted[params_.top_k - 1];
    for (int i = 0; i < vocab; ++i) {
      if (logits[i] < kth) logits[i] = -std::numeric_limits<float>::infinity();
    }
  }
  kernels::Softmax(logits, vocab);
  const float coin = NextF32();
  if (params_.top_p <= 0.0f || params_.top_p >= 1.0f) {
    float cdf = 0.0f;
    for (int i = 0; i < vocab; ++i) {
      cdf += logits[i];
      if (coin < cdf) return i;
    }
    return vocab - 1;
  }
  return SampleTopP(logits, vocab, coin);
}

}  // namespace blockserve::runtime
