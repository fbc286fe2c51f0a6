#include "runtime/chain.h"

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {

absl::StatusOr<Chain> Chain::Create(ModelConfig config,
                                    std::vector<std::shared_ptr<Block>> blocks) {
  if (blocks.size() < 2 || blocks.front()->kind() != BlockKind::kEmbed ||
      blocks.back()->kind() != BlockKind::kHead) {
    return absl::InvalidArgumentError("a chain must start with embed and end with head");
  }
  for (size_t i = 1; i + 1 < blocks.size(); ++i) {
    const BlockKind k = blocks[i]->kind();
    if (k != BlockKind::kAttn && k != BlockKind::kFfn) {
      return absl::InvalidArgumentError(
          absl::StrCat("chain position ", i, " is a ", BlockKindName(k), " block"));
    }
  }
  return Chain(config, std::move(blocks));
}

absl::Status Chain::Forward(Batch& batch, ExecContext& ctx) const {
  for (const auto& block : blocks_) RETURN_IF_ERROR(block->Forward(batch, ctx));
  return absl::OkStatus();
}

void Chain::ReleaseSequence(SeqId seq) const {
  for (const auto& block : blocks_) block->ReleaseSequence(seq);
}

size_t Chain::weight_bytes() const {
  size_t n = 0;
  for (const auto& b : blocks_) n += b->weight_bytes();
  return n;
}

absl::StatusOr<Chain> BuildChain(const ModelWeights& weights, const BlockOptions& opt) {
  RETURN_IF_ERROR(weights.config.Validate(weights.source));
  Backend& backend = opt.backend ? *opt.backend : DefaultCpuBackend();
  std::vector<std::shared_ptr<Block>> blocks;
  ASSIGN_OR_RETURN(auto embed, backend.MakeBlock(BlockKind::kEmbed, weights, -1, opt));
  blocks.push_back(std::move(embed));
  for (int l = 0; l < weights.config.n_layers; ++l) {
    ASSIGN_OR_RETURN(auto attn, backend.MakeBlock(BlockKind::kAttn, weights, l, opt));
    blocks.push_back(std::move(attn));
    ASSIGN_OR_RETURN(auto ffn, backend.MakeBlock(BlockKind::kFfn, weights, l, opt));
    blocks.push_back(std::move(ffn));
  }
  ASSIGN_OR_RETURN(auto head, backend.MakeBlock(BlockKind::kHead, weights, -1, opt));
  blocks.push_back(std::move(head));
  return Chain::Create(weights.config, std::move(blocks));
}

}  // namespace blockserve::runtime
