#include "runtime/block.h"

#include "absl/strings/str_cat.h"

namespace blockserve::runtime {

const char* BlockKindName(BlockKind k) {
  switch (k) {
    case BlockKind::kEmbed:
      return "embed";
    case BlockKind::kAttn:
      return "attn";
    case BlockKind::kFfn:
      return "ffn";
    case BlockKind::kHead:
      return "head";
  }
  return "?";
}

void Batch::Clear() {
  spans.clear();
  tokens.clear();
  logit_rows.clear();
}

void Batch::Add(SeqId seq, int pos, const int32_t* toks, int len, SeqSpan::Logits logits,
                int32_t adapter) {
  const int first_row = num_tokens();
  spans.push_back({seq, pos, len, logits, adapter});
  tokens.insert(tokens.end(), toks, toks + len);
  if (logits == SeqSpan::Logits::kAll) {
    for (int i = 0; i < len; ++i) logit_rows.push_back(first_row + i);
  } else if (logits == SeqSpan::Logits::kLast && len > 0) {
    logit_rows.push_back(first_row + len - 1);
  }
}

float* ExecContext::Scratch(int slot, size_t n) {
  if (scratch_.size() <= static_cast<size_t>(slot)) scratch_.resize(slot + 1);
  if (scratch_[slot].size() < n) scratch_[slot].resize(n);
  return scratch_[slot].data();
}

absl::Status Block::ComputeSegment(absl::Span<Block* const> blocks, const BlockIo& io,
                                   ExecContext& ctx) {
  for (Block* b : blocks) {
    if (absl::Status st = b->Compute(io, ctx); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status Block::Forward(Batch& batch, ExecContext& ctx) {
  const size_t t = static_cast<size_t>(batch.num_tokens());
  if (kind() == BlockKind::kEmbed) batch.hidden.resize(t * hidden_dim());
  if (kind() == BlockKind::kHead) batch.logits.resize(batch.logit_rows.size() * vocab_size());
  if (batch.hidden.size() < t * hidden_dim()) {
    return absl::InvalidArgumentError(absl::StrCat("a batch of ", t, " tokens holds ",
                                                   batch.hidden.size(), " hidden values, not ",
                                                   t * hidden_dim()));
  }
  BlockIo io;
  io.spans = batch.spans;
  io.tokens = batch.tokens.data();
  io.num_tokens = batch.num_tokens();
  io.hidden = batch.hidden.data();
  io.logit_rows = batch.logit_rows;
  io.logits = batch.logits.data();
  return Compute(io, ctx);
}

absl::Status Block::AttachAdapter(int32_t, std::shared_ptr<const LoraAdapter>) {
  return absl::FailedPreconditionError(
      absl::StrCat(BlockKindName(kind()), " blocks take no LoRA adapters"));
}

}  // namespace blockserve::runtime
