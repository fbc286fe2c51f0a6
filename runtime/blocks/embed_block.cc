// embed: token ids -> hidden states (a row lookup in the embedding table).
#include "absl/strings/str_cat.h"
#include "kernels/cpu/convert.h"
#include "runtime/blocks/blocks.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {
namespace {

class EmbedBlock final : public Block {
 public:
  EmbedBlock(Tensor table, int vocab, int dim) : table_(std::move(table)), vocab_(vocab), dim_(dim) {}
  BlockKind kind() const override { return BlockKind::kEmbed; }
  size_t weight_bytes() const override { return table_.nbytes(); }
  int hidden_dim() const override { return dim_; }

  absl::Status Compute(const BlockIo& io, ExecContext& ctx) override {
    for (int i = 0; i < io.num_tokens; ++i) {
      const int32_t id = io.tokens[i];
      if (id < 0 || id >= vocab_) {
        return absl::InvalidArgumentError(
            absl::StrCat("token id ", id, " out of range [0, ", vocab_, ")"));
      }
    }
    const auto type = table_.dtype() == DType::kF32   ? kernels::WeightType::kF32
                      : table_.dtype() == DType::kF16 ? kernels::WeightType::kF16
                                                      : kernels::WeightType::kBF16;
    kernels::EmbeddingLookup(type, table_.raw(), dim_, io.tokens, io.num_tokens, io.hidden);
    return absl::OkStatus();
  }

 private:
  Tensor table_;  // [vocab][dim], kept in its stored dtype
  int vocab_;
  int dim_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Block>> MakeEmbedBlock(const ModelWeights& w,
                                                      const BlockOptions& opt) {
  const ModelConfig& c = w.config;
  ASSIGN_OR_RETURN(const Tensor* t, w.Get("tok_embeddings", {c.vocab_size, c.dim}));
  return std::make_shared<EmbedBlock>(*t, c.vocab_size, c.dim);
}

}  // namespace blockserve::runtime
