// The unit of execution: a block maps the hidden states of a batch of sequence spans to new
// hidden states. A model is an ordered chain of blocks (embed, attn/ffn per layer, head).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "runtime/device.h"

namespace blockserve::runtime {

class LoraAdapter;

enum class BlockKind : uint8_t { kEmbed, kAttn, kFfn, kHead };
const char* BlockKindName(BlockKind k);

using SeqId = int64_t;

// One sequence's slice of a batch: `len` consecutive tokens starting at position `pos`. A
// prefill span has many tokens, a decode span one; both mix freely in one batch.
struct SeqSpan {
  SeqId seq = 0;
  int pos = 0;
  int len = 0;
  enum class Logits : uint8_t { kNone, kLast, kAll } logits = Logits::kLast;
  // LoRA adapter key (0: none). attn/ffn blocks apply the adapter attached under this key to
  // the span's rows; a block with no adapter under that key runs its base weights (an adapter
  // usually touches only some projections of some layers).
  int32_t adapter = 0;
};

// What one block call reads and writes. The rows live in the memory of the block's backend
// (the executor's activation area); the spans are host metadata.
struct BlockIo {
  absl::Span<const SeqSpan> spans;
  const int32_t* tokens = nullptr;  // [num_tokens], device memory (embed reads them)
  int num_tokens = 0;
  float* hidden = nullptr;          // [num_tokens][dim]: in and out (embed: out only)
  absl::Span<const int> logit_rows;  // head: the rows it produces logits for
  float* logits = nullptr;          // head: [logit_rows.size()][vocab]
};

// A batch with its own host memory: tests, tools and the equivalence evaluator run blocks and
// chains on it (Block::Forward); the engine's executor keeps rows in the backend instead.
struct Batch {
  std::vector<SeqSpan> spans;
  std::vector<int32_t> tokens;  // [num_tokens]: the spans' tokens, in span order
  std::vector<float> hidden;    // [num_tokens][dim]
  std::vector<int> logit_rows;  // token rows the head produces logits for
  std::vector<float> logits;    // [logit_rows.size()][vocab]

  void Clear();
  // Appends a span for `seq` with `tokens` at positions pos, pos + 1, ...
  void Add(SeqId seq, int pos, const int32_t* tokens, int len,
           SeqSpan::Logits logits = SeqSpan::Logits::kLast, int32_t adapter = 0);
  int num_tokens() const { return static_cast<int>(tokens.size()); }
};

// Scratch and device for executing blocks; owned by one engine thread.
class ExecContext {
 public:
  explicit ExecContext(CpuDevice* device) : device_(device) {}
  CpuDevice& device() { return *device_; }
  ThreadPool& pool() { return device_->pool(); }
  // Scratch buffer `slot` with room for at least `n` floats (contents unspecified).
  float* Scratch(int slot, size_t n);
  // fn(begin, end) over contiguous ranges of [0, rows) on the pool, for row-wise work (norms,
  // activations, residual adds, RoPE): each row's result never depends on the split; batches
  // under 2 * kMinRowsPerTask rows run on the caller (a fork-join costs more than they do).
  static constexpr int kMinRowsPerTask = 16;
  void ForRows(int rows, absl::FunctionRef<void(int64_t, int64_t)> fn) {
    pool().ParallelFor(rows, fn, kMinRowsPerTask);
  }

 private:
  CpuDevice* device_;
  std::vector<std::vector<float>> scratch_;
};

class Block {
 public:
  virtual ~Block() = default;
  virtual BlockKind kind() const = 0;
  // Width of its hidden rows, and (head) of its logit rows.
  virtual int hidden_dim() const = 0;
  virtual int vocab_size() const { return 0; }
  // Runs the block on one call's rows (hidden states in and out; embed reads tokens, head
  // writes logits). Errors: invalid token ids, KV exhaustion, non-contiguous positions.
  virtual absl::Status Compute(const BlockIo& io, ExecContext& ctx) = 0;
  // Blocks whose segment_host() is the same non-null value live together elsewhere (on one
  // worker process) and can run consecutive calls on the same rows as one segment, one round
  // trip: the executor then calls ComputeSegment on the first of them with all of them (itself
  // first, in chain order; a head only last). Blocks in this process have none.
  virtual const void* segment_host() const { return nullptr; }
  // Runs `blocks` one after another on io's rows (the default: Compute of each in turn).
  virtual absl::Status ComputeSegment(absl::Span<Block* const> blocks, const BlockIo& io,
                                      ExecContext& ctx);
  // Compute on a host batch (sizes its hidden rows at the embed and its logits at the head).
  absl::Status Forward(Batch& batch, ExecContext& ctx);
  // Drops all state held for `seq` (attn: its KV pages). No-op for stateless blocks.
  virtual void ReleaseSequence(SeqId seq) {}
  // Starts `dst` with the first `len` positions of `src`'s state, shared (attn: full KV pages;
  // `len` a multiple of the page size). No-op for stateless blocks.
  virtual absl::Status ForkSequence(SeqId src, SeqId dst, int len) { return absl::OkStatus(); }
  virtual size_t weight_bytes() const = 0;
  // KV pages this block holds (attn blocks; 0 for the others).
  virtual int kv_pages_used() const { return 0; }
  // LoRA adapters this block applies to spans that name `key` (attn and ffn blocks only).
  // Many adapters may be attached at once; each span picks its own.
  virtual absl::Status AttachAdapter(int32_t key, std::shared_ptr<const LoraAdapter> adapter);
  virtual void DetachAdapter(int32_t key) {}
};

}  // namespace blockserve::runtime
