// head: final RMSNorm and the LM head, for the token rows that want logits.
#include <cstring>

#include "kernels/cpu/rmsnorm.h"
#include "runtime/blocks/blocks.h"
#include "runtime/linear.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {
namespace {

class HeadBlock final : public Block {
 public:
  HeadBlock(const ModelConfig& c, Tensor norm, PackedLinear out)
      : dim_(c.dim), vocab_(c.vocab_size), eps_(c.norm_eps), norm_(std::move(norm)),
        out_(std::move(out)) {}
  BlockKind kind() const override { return BlockKind::kHead; }
  size_t weight_bytes() const override { return norm_.nbytes() + out_.bytes(); }
  int hidden_dim() const override { return dim_; }
  int vocab_size() const override { return vocab_; }

  absl::Status Compute(const BlockIo& io, ExecContext& ctx) override {
    const int rows = static_cast<int>(io.logit_rows.size());
    if (rows == 0) return absl::OkStatus();
    float* xn = ctx.Scratch(0, static_cast<size_t>(rows) * dim_);  // [rows, dim]
    for (int r = 0; r < rows; ++r) {
      kernels::RmsNorm(io.hidden + static_cast<size_t>(io.logit_rows[r]) * dim_,
                       norm_.data<float>(), 1, dim_, eps_, xn + static_cast<size_t>(r) * dim_);
    }
    out_.Forward(ctx.pool(), xn, rows, io.logits);  // [rows, vocab]
    return absl::OkStatus();
  }

 private:
  int dim_, vocab_;
  float eps_;
  Tensor norm_;       // [dim] f32
  PackedLinear out_;  // [vocab, dim]
};

}  // namespace

absl::StatusOr<std::shared_ptr<Block>> MakeHeadBlock(const ModelWeights& w,
                                                     const BlockOptions& opt) {
  const ModelConfig& c = w.config;
  ASSIGN_OR_RETURN(const Tensor* norm, w.Get("norm", {c.dim}));
  const std::string out_name = c.tied_embeddings ? "tok_embeddings" : "output";
  ASSIGN_OR_RETURN(const Tensor* out, w.Get(out_name, {c.vocab_size, c.dim}));
  ASSIGN_OR_RETURN(PackedLinear packed,
                   PackedLinear::Pack({out}, opt.weight_dtype.value_or(out->dtype())));
  return std::make_shared<HeadBlock>(c, ToF32Tensor(*norm), std::move(packed));
}

}  // namespace blockserve::runtime
