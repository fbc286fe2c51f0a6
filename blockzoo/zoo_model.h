// Running zoo models: block instances built from block files, and whole chains.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "blockzoo/zoo.h"
#include "runtime/blocks/blocks.h"
#include "runtime/chain.h"
#include "runtime/lora.h"

namespace blockserve::blockzoo {

// The block of manifest entry `e` (tensors checked against the manifest; the content hash too
// when `verify_hash`), ready to run.
absl::StatusOr<std::shared_ptr<runtime::Block>> LoadBlock(const Zoo& zoo, const ChainEntry& e,
                                                          const runtime::ModelConfig& family,
                                                          const runtime::BlockOptions& opt,
                                                          bool verify_hash);

// The block's tensors under the canonical names the block factories read (layers.N.* for attn
// and ffn entries), with the family as config.
absl::StatusOr<runtime::ModelWeights> BlockWeights(const Zoo& zoo, const ChainEntry& e,
                                                   const runtime::ModelConfig& family,
                                                   bool verify_hash);

// The run-time adapter of manifest entry `e`'s LoRA block.
absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> LoadLora(
    const Zoo& zoo, const ChainEntry& e, const runtime::ModelConfig& family, bool verify_hash);

// The adapter key under which LoadZooModel attaches a model's own LoRA blocks.
constexpr int32_t kModelAdapterKey = 1;

// LoadBlock, with the entry's LoRA block (if any) attached under kModelAdapterKey.
absl::StatusOr<std::shared_ptr<runtime::Block>> LoadUnit(const Zoo& zoo, const ChainEntry& e,
                                                         const runtime::ModelConfig& family,
                                                         const runtime::BlockOptions& opt,
                                                         bool verify_hash);

struct ZooModel {
  Manifest manifest;
  int32_t adapter = 0;  // what spans of this model set SeqSpan::adapter to (0: no LoRA)
  std::unique_ptr<runtime::Chain> chain;
  std::unique_ptr<runtime::Tokenizer> tokenizer;  // null when the model has none
};

absl::StatusOr<ZooModel> LoadZooModel(const Zoo& zoo, const std::string& name,
                                      const runtime::BlockOptions& opt, bool verify_hash);

}  // namespace blockserve::blockzoo
