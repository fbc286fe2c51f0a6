// LoRA adapters at run time. An adapter for one attn or ffn block holds, per target projection
// (attn: wq, wk, wv, wo; ffn: w1, w2, w3), A [rank, in] and B [out, rank]; the projection's
// output gains scale * (x A^T) B^T with scale = alpha / rank. The base projection runs once for
// the whole batch; each run of rows with the same adapter adds its own low-rank delta
// (SGMV-style), so requests with different adapters, or none, share one batch.
#pragma once

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/linear.h"
#include "runtime/model_config.h"
#include "runtime/tensor.h"

namespace blockserve::runtime {

struct LoraProjection {
  PackedLinear a;  // [rank, in]
  PackedLinear b;  // [out, rank]
  float scale = 1.0f;
};

class LoraAdapter {
 public:
  // `tensors`: "<target>.lora_A" [rank, in] and "<target>.lora_B" [out, rank] for each target
  // of a `kind` block of family `c`. Errors name `source`.
  static absl::StatusOr<std::shared_ptr<const LoraAdapter>> Create(
      BlockKind kind, const ModelConfig& c, const std::map<std::string, Tensor>& tensors,
      float alpha, const std::string& source);

  BlockKind kind() const { return kind_; }
  int rank() const { return rank_; }
  const LoraProjection* Find(const std::string& target) const;
  size_t bytes() const;

  // (in, out) of target `name` of a `kind` block; false when it is not a target of that kind.
  static bool TargetShape(BlockKind kind, const ModelConfig& c, const std::string& name, int* in,
                          int* out);

 private:
  BlockKind kind_ = BlockKind::kAttn;
  int rank_ = 0;
  std::map<std::string, LoraProjection> proj_;
};

// Adapters attached to one block instance, by key.
class AdapterTable {
 public:
  absl::Status Attach(BlockKind kind, int32_t key, std::shared_ptr<const LoraAdapter> a);
  void Detach(int32_t key) { adapters_.erase(key); }
  // For each run of consecutive spans with the same adapter key attached here and holding
  // `target` (a key not attached here means the adapter leaves this block unchanged):
  // y[r][col0 + j] += delta(x[r]) over the run's rows (x rows are `in` floats apart).
  void Apply(const BlockIo& io, const std::string& target, ExecContext& ctx, const float* x,
             float* y, int ldy, int col0) const;
  bool empty() const { return adapters_.empty(); }

 private:
  std::map<int32_t, std::shared_ptr<const LoraAdapter>> adapters_;
};

}  // namespace blockserve::runtime
