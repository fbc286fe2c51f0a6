// A generation request inside the engine: parameters, state machine and progress.
//   queued -> running <-> preempted ; any but finished -> finished (stop, length, abort, error,
//   context full). Transitions are checked; an illegal one is an internal error.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "runtime/sampler.h"

namespace blockserve::scheduler {

using RequestId = int64_t;

enum class RequestState { kQueued, kRunning, kPreempted, kFinished };
const char* RequestStateName(RequestState s);

enum class Finish { kNone, kStop, kLength, kAbort, kError, kContextFull };
const char* FinishName(Finish f);
// The finish_reason clients see (OpenAI's vocabulary, also the gRPC API's): "stop", "length"
// (kLength and kContextFull), "abort", "error"; "" for kNone.
const char* FinishReason(Finish f);

struct RequestSpec {
  std::string tenant = "default";
  int priority = 0;  // higher runs first and is preempted last
  int model = 0;     // index of a model registered with the scheduler
  std::vector<int32_t> prompt;
  int max_tokens = 16;
  runtime::SamplingParams sampling;
  std::vector<int32_t> stop_tokens;
  // -1: none; k in [0, runtime::kMaxLogprobs]: the log-probability of every prompt token after
  // the first (given the tokens before it) and the k most likely tokens at each position,
  // delivered with the first generated token (Event::prompt_logprobs). Such a request computes
  // its whole prompt: it does not start from a cached prefix.
  int prompt_logprobs = -1;
};

struct Request {
  RequestId id = 0;
  RequestSpec spec;
  uint64_t arrival = 0;  // submission order
  RequestState state = RequestState::kQueued;
  Finish finish = Finish::kNone;
  std::vector<int32_t> generated;
  int computed = 0;     // tokens of Tokens() whose KV is in the caches
  int preemptions = 0;
  std::string prefix_key;  // the prefix-cache entry its KV starts with ("" when none)
  int prefix_len = 0;      // positions that entry provides

  int context_len() const { return static_cast<int>(spec.prompt.size() + generated.size()); }
  int32_t TokenAt(int i) const {
    const int p = static_cast<int>(spec.prompt.size());
    return i < p ? spec.prompt[i] : generated[i - p];
  }
  // Checked state change.
  absl::Status TransitionTo(RequestState next);
};

}  // namespace blockserve::scheduler
