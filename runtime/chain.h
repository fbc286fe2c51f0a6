// A model as an ordered chain of blocks: embed, (attn, ffn) per layer, head. There is no
// monolithic model class; blocks may be shared between chains.
#pragma once

#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/blocks/blocks.h"
#include "runtime/model_weights.h"

namespace blockserve::runtime {

class Chain {
 public:
  // Checks the chain's shape: embed first, head last, attn/ffn in between.
  static absl::StatusOr<Chain> Create(ModelConfig config,
                                      std::vector<std::shared_ptr<Block>> blocks);

  // Runs every block in order: batch.tokens -> batch.logits (rows batch.logit_rows).
  absl::Status Forward(Batch& batch, ExecContext& ctx) const;
  // Frees `seq`'s state in every block (its KV).
  void ReleaseSequence(SeqId seq) const;

  const ModelConfig& config() const { return config_; }
  const std::vector<std::shared_ptr<Block>>& blocks() const { return blocks_; }
  size_t weight_bytes() const;

 private:
  Chain(ModelConfig config, std::vector<std::shared_ptr<Block>> blocks)
      : config_(config), blocks_(std::move(blocks)) {}
  ModelConfig config_;
  std::vector<std::shared_ptr<Block>> blocks_;
};

// Builds the chain of a loaded model: one block per kind and layer.
absl::StatusOr<Chain> BuildChain(const ModelWeights& weights, const BlockOptions& opt = {});

}  // namespace blockserve::runtime
