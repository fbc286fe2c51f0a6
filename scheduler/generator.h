// Batched generation over one chain: every live request advances one step per engine step,
// prefill spans and decode tokens mixed in one batch. (Continuous batching across chains, KV
// admission and preemption come with the engine; this is the exact core they build on.)
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/chain.h"
#include "runtime/sampler.h"

namespace blockserve::scheduler {

struct GenerationRequest {
  std::vector<int32_t> prompt;  // token ids, BOS included when wanted; not empty
  int32_t adapter = 0;          // LoRA adapter key (SeqSpan::adapter)
  int max_tokens = 16;          // generated tokens at most
  runtime::SamplingParams sampling;
  std::vector<int32_t> stop_tokens;  // generation ends (without emitting it) on any of these
  int start_step = 0;                // engine step at which the request joins (for tests)
};

enum class FinishReason { kLength, kStop, kContextFull };
const char* FinishReasonName(FinishReason r);

struct GenerationResult {
  std::vector<int32_t> tokens;  // generated ids (stop token excluded)
  FinishReason finish = FinishReason::kLength;
};

// Called for each generated token: (request index, token id).
using TokenCallback = std::function<void(int, int32_t)>;

// Runs `requests` to completion on `chain`. Sequence ids [seq_base, seq_base + n) are used in
// the chain's blocks and released at the end. Errors: invalid requests (named by index) or a
// block failure.
absl::StatusOr<std::vector<GenerationResult>> GenerateBatch(
    const runtime::Chain& chain, runtime::ExecContext& ctx,
    const std::vector<GenerationRequest>& requests, const TokenCallback& on_token = nullptr,
    runtime::SeqId seq_base = 0);

}  // namespace blockserve::scheduler
