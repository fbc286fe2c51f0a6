// `blockzoo derive`: clearly labelled synthetic variants of a zoo model for tests and
// benchmarks (only one real trained model is available): partial fine-tunes (chosen blocks
// perturbed), full fine-tunes (every block perturbed) and LoRA adapters (random low-rank deltas
// on chosen projections of every layer, attached to the base blocks or merged into copies). The recipe and seed go into the
// manifest, which is marked synthetic.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockzoo/importer.h"
#include "blockzoo/zoo.h"

namespace blockserve::blockzoo {

struct DeriveOptions {
  std::string base;  // model in the zoo
  std::string name;  // new model
  enum class Recipe { kPartial, kFull, kLora } recipe = Recipe::kPartial;
  int top_layers = 1;  // partial: the attn/ffn blocks of the top k layers change
  std::vector<runtime::BlockKind> kinds = {runtime::BlockKind::kAttn, runtime::BlockKind::kFfn};
  double rel_norm = 0.01;  // ||delta|| / ||W|| per tensor (LoRA: per target projection)
  // LoRA: rank, alpha, target projections (wq wk wv wo w1 w2 w3); `merge` writes W + delta as
  // new blocks instead of attaching LoRA blocks (the reference a run-time adapter must match).
  int lora_rank = 8;
  float lora_alpha = 16.0f;
  std::vector<std::string> lora_targets = {"wq", "wv"};
  bool merge = false;
  uint64_t seed = 1;
  bool replace = false;
  ProgressFn progress;
};

absl::StatusOr<ImportResult> DeriveModel(const Zoo& zoo, const DeriveOptions& opt);

// W + scale * B A for LoRA tensors A [rank, in], B [out, rank] (same dtype as W).
runtime::Tensor MergeLora(const runtime::Tensor& w, const runtime::Tensor& a,
                          const runtime::Tensor& b, float scale);

// W + rel_norm * ||W|| * N / ||N|| with N standard normal from `seed` (same dtype as W).
runtime::Tensor PerturbTensor(const runtime::Tensor& w, double rel_norm, uint64_t seed);

}  // namespace blockserve::blockzoo
