// Factories for the block kinds, each implemented in its own file.
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "kernels/cpu/rmsnorm.h"
#include "runtime/backend.h"
#include "runtime/block.h"
#include "runtime/model_weights.h"

namespace blockserve::runtime {

struct BlockOptions {
  // Storage type for matrix weights; nullopt keeps the file's type.
  std::optional<DType> weight_dtype;
  int kv_page_size = 16;  // tokens per KV page
  int kv_max_pages = 0;   // per attn block; 0 = unbounded
  // Element type of the KV cache: f32 (exact: what the reference implementations compute) or
  // bf16 (half the memory and the bytes attention reads; K and V rounded on store).
  DType kv_dtype = DType::kF32;
  // Where the block keeps its KV pages (and, for a device backend, everything else); null: the
  // CPU. Backend::MakeBlock sets it.
  Backend* backend = nullptr;
};

absl::StatusOr<std::shared_ptr<Block>> MakeEmbedBlock(const ModelWeights& w,
                                                      const BlockOptions& opt);
absl::StatusOr<std::shared_ptr<Block>> MakeAttnBlock(const ModelWeights& w, int layer,
                                                     const BlockOptions& opt);
absl::StatusOr<std::shared_ptr<Block>> MakeFfnBlock(const ModelWeights& w, int layer,
                                                    const BlockOptions& opt);
absl::StatusOr<std::shared_ptr<Block>> MakeHeadBlock(const ModelWeights& w,
                                                     const BlockOptions& opt);

// out[rows][dim] = RMSNorm(x[rows][dim]) * weight, rows in parallel (the first op of attn and ffn).
inline void NormRows(ExecContext& ctx, const float* x, const float* weight, int rows, int dim,
                     float eps, float* out) {
  ctx.ForRows(rows, [&](int64_t r0, int64_t r1) {
    kernels::RmsNorm(x + r0 * dim, weight, static_cast<int>(r1 - r0), dim, eps, out + r0 * dim);
  });
}

// x[rows][dim] += delta[rows][dim] (the residual connection of attn and ffn), rows in parallel.
inline void AddResidual(ExecContext& ctx, int rows, int dim, const float* delta, float* x) {
  ctx.ForRows(rows, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0 * dim; i < r1 * dim; ++i) x[i] += delta[i];
  });
}

}  // namespace blockserve::runtime
