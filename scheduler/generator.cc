#include "scheduler/generator.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::scheduler {
namespace {

using runtime::Batch;
using runtime::SeqSpan;

struct Live {
  int pos = 0;             // tokens already in the KV
  std::vector<int32_t> pending;  // tokens to feed next step
  runtime::Sampler sampler;
  bool done = false;
};

absl::Status Validate(const runtime::Chain& chain, const std::vector<GenerationRequest>& reqs) {
  for (size_t i = 0; i < reqs.size(); ++i) {
    const GenerationRequest& r = reqs[i];
    if (r.prompt.empty()) return absl::InvalidArgumentError(absl::StrCat("request ", i, ": empty prompt"));
    if (r.max_tokens < 0) {
      return absl::InvalidArgumentError(absl::StrCat("request ", i, ": max_tokens must be >= 0"));
    }
    if (static_cast<int>(r.prompt.size()) > chain.config().max_seq_len) {
      return absl::OutOfRangeError(absl::StrCat("request ", i, ": prompt of ", r.prompt.size(),
                                                " tokens exceeds the context length ",
                                                chain.config().max_seq_len));
    }
    for (int32_t t : r.prompt) {
      if (t < 0 || t >= chain.config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("request ", i, ": token id ", t, " out of range"));
      }
    }
    RETURN_IF_ERROR(r.sampling.Validate());
  }
  return absl::OkStatus();
}

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kLength: return "length";
    case FinishReason::kStop: return "stop";
    case FinishReason::kContextFull: return "context_full";
  }
  return "?";
}

absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(
    const runtime::Chain& chain, runtime::ExecContext& ctx,
    const std::vector<GenerationRequest>& requests, const TokenCallback& on_token,
    runtime::SeqId seq_base) {
  RETURN_IF_ERROR(Validate(chain, requests));
  const int n = static_cast<int>(requests.size());
  const int vocab = chain.config().vocab_size;
  const int ctx_len = chain.config().max_seq_len;
  std::vector<GenerationResult> results(n);
  std::vector<Live> live;
  live.reserve(n);
  for (const auto& r : requests) live.push_back({0, r.prompt, runtime::Sampler(r.sampling)});
  for (int i = 0; i < n; ++i) {
    if (requests[i].max_tokens == 0) live[i].done = true;
  }
  Batch batch;
  std::vector<int> members;
  absl::Status status;
  for (int step = 0; status.ok(); ++step) {
    batch.Clear();
    members.clear();
    bool waiting = false;
    for (int i = 0; i < n; ++i) {
      if (live[i].done) continue;
      if (requests[i].start_step > step) {
        waiting = true;
        continue;
      }
      batch.Add(seq_base + i, live[i].pos, live[i].pending.data(),
                static_cast<int>(live[i].pending.size()), runtime::SeqSpan::Logits::kLast,
                requests[i].adapter);
      members.push_back(i);
    }
    if (members.empty()) {
      if (waiting) continue;
      break;
    }
    status = chain.Forward(batch, ctx);
    if (!status.ok()) break;
    for (size_t b = 0; b < members.size(); ++b) {
      const int i = members[b];
      Live& l = live[i];
      l.pos += static_cast<int>(l.pending.size());
      float* logits = batch.logits.data() + b * vocab;
      const int32_t next = l.sampler.Sample(logits, vocab);
      const auto& stops = requests[i].stop_tokens;
      if (std::find(stops.begin(), stops.end(), next) != stops.end()) {
        l.done = true;
        results[i].finish = FinishReason::kStop;
        continue;
      }
      results[i].tokens.push_back(next);
      if (on_token) on_token(i, next);
      if (static_cast<int>(results[i].tokens.size()) >= requests[i].max_tokens) {
        l.done = true;
        results[i].finish = FinishReason::kLength;
      } else if (l.pos >= ctx_len) {
        l.done = true;
        results[i].finish = FinishReason::kContextFull;
      }
      l.pending.assign(1, next);
    }
  }
  for (int i = 0; i < n; ++i) chain.ReleaseSequence(seq_base + i);
  if (!status.ok()) return status;
  return results;
}

}  // namespace blockserve::scheduler
