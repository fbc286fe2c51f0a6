// Running zoo models: block instances built from block files, and whole chains.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "blockzoo/zoo.h"
#include "runtime/blocks/blocks.h"
#include "runtime/chain.h"

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

struct ZooModel {
  Manifest manifest;
  std::unique_ptr<runtime::Chain> chain;
  std::unique_ptr<runtime::Tokenizer> tokenizer;  // null when the model has none
};

absl::StatusOr<ZooModel> LoadZooModel(const Zoo& zoo, const std::string& name,
                                      const runtime::BlockOptions& opt, bool verify_hash);

}  // namespace blockserve::blockzoo
