// The executor: runs one step's block calls on a backend. Its input is one self-contained
// value (ExecInput: each span's tokens, positions, adapter key and logits wanted, and the block
// instance of every call); it reads nothing back from the scheduler while it runs and returns a
// value (ExecResult). A worker process runs the same Executor behind a transport.
//
// Activations stay on the backend. The step's rows live in one activation arena of the
// backend's memory: the tokens, a region of hidden rows per hidden width (each sequence's rows
// together, sequences ordered by the instances they visit so the calls of shared and of
// per-model blocks find their members side by side), and the logit rows. A block call runs on
// its members' rows in place when they lie together, and otherwise on rows gathered by index
// into a staging region and scattered back, on the device. Per step the host copies the tokens
// in once and the logits out once; on the CPU backend, whose memory the host reads in place,
// neither copy happens.
//
// Sampling runs here, over the step's logits once the last round is done: each sequence's
// sampler (its RNG, penalties, structured-output state) lives with the executor from the step
// its sequence starts to the step it ends. A device backend may later sample next to the
// logits and copy back only the tokens, behind the same ExecInput and ExecResult.
//
// Threads: Run, Release and Fork are called by one thread (the engine's); the calls of a round
// run side by side on the pool, each on rows of its own.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/backend.h"
#include "runtime/block.h"
#include "runtime/device.h"
#include "runtime/sampler.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

// One sequence's work in a step.
struct ExecSpan {
  RequestId seq = 0;
  int pos = 0;
  int len = 0;
  int32_t adapter = 0;  // LoRA key (SeqSpan::adapter)
  int dim = 0;          // hidden width of its model
  int vocab = 0;        // logit width of its model
  std::vector<int32_t> tokens;  // [len]: the tokens at positions pos, pos + 1, ...
  bool sample = false;          // sample the token after its last position
  // Prompt scoring: positions [score_begin, score_end) of this span, position p scored against
  // score_targets[p - score_begin] (the prompt token after it) with score_top alternatives.
  int score_begin = 0, score_end = 0;
  std::vector<int32_t> score_targets;
  int score_top = 0;
};

// A sequence that starts: its sampler's parameters and the prompt its penalties count.
struct SamplerStart {
  RequestId seq = 0;
  runtime::SamplingParams params;
  std::vector<int32_t> prompt;
};

struct ExecInput {
  std::vector<Fork> donate;      // first: prefix-cache entries forked from finishing sequences
  std::vector<Release> release;  // then: KV freed
  std::vector<Fork> forks;       // then: sequences starting from cached prefixes
  std::vector<SamplerStart> start;
  std::vector<RequestId> end;    // sequences that ended (their samplers go)
  std::vector<ExecSpan> spans;
  std::vector<std::vector<BlockCall>> rounds;  // members index `spans`
};

struct ExecResult {
  struct Call {
    InstanceId instance = 0;
    int tokens = 0;
    double secs = 0;
  };
  struct Scored {  // a prompt position's log-probabilities (the prompt token after it)
    RequestId seq = 0;
    int pos = 0;
    runtime::Logprobs logprobs;
  };
  std::vector<StepOutput> out;  // one per sampling span
  std::vector<Scored> scored;   // per span, in order of position
  std::vector<Call> calls;
};

// Where the executor finds block instances (resident before a step that uses them).
class InstanceTable {
 public:
  virtual ~InstanceTable() = default;
  virtual runtime::Block* instance(InstanceId i) const = 0;  // null: not resident
};

struct ExecutorOptions {
  int threads = 0;  // compute threads (0: default)
  // Block calls of one round with at most this many tokens per instance run side by side, one
  // thread each (0: never); bigger ones use every thread, one after another.
  int concurrent_call_tokens = 48;
};

class Executor {
 public:
  // `chains`: per model, the instances of its chain (KV releases and forks go through them).
  Executor(ExecutorOptions opt, runtime::Backend* backend, const InstanceTable* table,
           std::vector<std::vector<InstanceId>> chains);

  absl::StatusOr<ExecResult> Run(const ExecInput& in);
  // KV operations outside a step (after a commit, or dropping prefixes before an unload).
  void Release(const Release& r);
  absl::Status Fork(const Fork& f);

  runtime::ExecContext& context() { return ctx_; }
  runtime::Backend& backend() { return *backend_; }

 private:
  struct Layout;
  Layout Arrange(const ExecInput& in) const;
  absl::Status Prepare(const ExecInput& in, const Layout& layout);
  absl::Status RunRound(const ExecInput& in, const Layout& layout,
                        const std::vector<BlockCall>& calls, ExecResult& result);
  // How many rounds from `r` on run as one segment: each a single call on the same members,
  // their instances on one segment host (runtime::Block::segment_host); 1 when not fusible.
  size_t FusibleRounds(const ExecInput& in, size_t r) const;
  // Block calls on the same members, run as one segment (one call: Compute).
  absl::Status RunCall(const ExecInput& in, const Layout& layout,
                       absl::Span<const BlockCall* const> calls, size_t staging_row,
                       runtime::ExecContext& ctx, std::vector<ExecResult::Call>& stats);
  void SampleAndScore(const ExecInput& in, const Layout& layout, ExecResult& result);
  uint8_t* arena() const { return static_cast<uint8_t*>(arena_.data()); }

  ExecutorOptions opt_;
  runtime::Backend* backend_;
  const InstanceTable* table_;
  std::vector<std::vector<InstanceId>> chains_;
  runtime::CpuDevice cpu_;
  runtime::ExecContext ctx_;
  // One-thread contexts for block calls run side by side.
  std::vector<std::unique_ptr<runtime::CpuDevice>> serial_cpu_;
  std::vector<std::unique_ptr<runtime::ExecContext>> serial_ctx_;
  std::map<RequestId, runtime::Sampler> samplers_;
  runtime::Buffer arena_;            // the step's activation arena (reused, grown)
  std::vector<int32_t> tokens_host_;  // staging of the copy in (device backends)
  std::vector<float> logits_host_;    // the copy out (device backends)
};

}  // namespace blockserve::scheduler
