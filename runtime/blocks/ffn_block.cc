// ffn: RMSNorm, SwiGLU (gate|up fused into one matmul), down projection, residual add.
#include "kernels/cpu/activations.h"
#include "kernels/cpu/rmsnorm.h"
#include "runtime/blocks/blocks.h"
#include "runtime/linear.h"
#include "runtime/lora.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {
namespace {

class FfnBlock final : public Block {
 public:
  FfnBlock(const ModelConfig& c, Tensor norm, PackedLinear gate_up, PackedLinear down)
      : dim_(c.dim), hidden_(c.hidden_dim), eps_(c.norm_eps), norm_(std::move(norm)),
        gate_up_(std::move(gate_up)), down_(std::move(down)) {}
  BlockKind kind() const override { return BlockKind::kFfn; }
  size_t weight_bytes() const override { return norm_.nbytes() + gate_up_.bytes() + down_.bytes(); }
  absl::Status AttachAdapter(int32_t key, std::shared_ptr<const LoraAdapter> a) override {
    return adapters_.Attach(BlockKind::kFfn, key, std::move(a));
  }
  void DetachAdapter(int32_t key) override { adapters_.Detach(key); }

  int hidden_dim() const override { return dim_; }

  absl::Status Compute(const BlockIo& io, ExecContext& ctx) override {
    const int t = io.num_tokens;
    float* x = io.hidden;                                     // [t, dim]
    float* xn = ctx.Scratch(0, static_cast<size_t>(t) * dim_);           // [t, dim]
    float* gu = ctx.Scratch(1, static_cast<size_t>(t) * 2 * hidden_);    // [t, 2*hidden]
    float* h = ctx.Scratch(2, static_cast<size_t>(t) * hidden_);         // [t, hidden]
    float* out = ctx.Scratch(3, static_cast<size_t>(t) * dim_);          // [t, dim]
    NormRows(ctx, x, norm_.data<float>(), t, dim_, eps_, xn);
    gate_up_.Forward(ctx.pool(), xn, t, gu);
    adapters_.Apply(io, "w1", ctx, xn, gu, 2 * hidden_, 0);
    adapters_.Apply(io, "w3", ctx, xn, gu, 2 * hidden_, hidden_);
    ctx.ForRows(t, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const float* row = gu + i * 2 * hidden_;
        kernels::SwiGlu(row, row + hidden_, hidden_, h + i * hidden_);
      }
    });
    down_.Forward(ctx.pool(), h, t, out);
    adapters_.Apply(io, "w2", ctx, h, out, dim_, 0);
    AddResidual(ctx, t, dim_, out, x);
    return absl::OkStatus();
  }

 private:
  int dim_, hidden_;
  float eps_;
  Tensor norm_;  // [dim] f32
  PackedLinear gate_up_;  // [2*hidden, dim]: w1 rows then w3 rows
  PackedLinear down_;     // [dim, hidden]
  AdapterTable adapters_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<Block>> MakeFfnBlock(const ModelWeights& w, int layer,
                                                    const BlockOptions& opt) {
  const ModelConfig& c = w.config;
  ASSIGN_OR_RETURN(const Tensor* norm, w.Get(LayerTensor(layer, "ffn_norm"), {c.dim}));
  ASSIGN_OR_RETURN(const Tensor* w1, w.Get(LayerTensor(layer, "w1"), {c.hidden_dim, c.dim}));
  ASSIGN_OR_RETURN(const Tensor* w2, w.Get(LayerTensor(layer, "w2"), {c.dim, c.hidden_dim}));
  ASSIGN_OR_RETURN(const Tensor* w3, w.Get(LayerTensor(layer, "w3"), {c.hidden_dim, c.dim}));
  const DType storage = opt.weight_dtype.value_or(w1->dtype());
  ASSIGN_OR_RETURN(PackedLinear gate_up, PackedLinear::Pack({w1, w3}, storage));
  ASSIGN_OR_RETURN(PackedLinear down, PackedLinear::Pack({w2}, storage));
  return std::make_shared<FfnBlock>(c, ToF32Tensor(*norm), std::move(gate_up), std::move(down));
}

}  // namespace blockserve::runtime
