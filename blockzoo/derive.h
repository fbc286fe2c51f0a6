// `blockzoo derive`: clearly labelled synthetic variants of a zoo model for tests and
// benchmarks (only one real trained model is available): partial fine-tunes (chosen blocks
// perturbed) and full fine-tunes (every block perturbed). The recipe and seed go into the
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
  enum class Recipe { kPartial, kFull } recipe = Recipe::kPartial;
  int top_layers = 1;  // partial: the attn/ffn blocks of the top k layers change
  std::vector<runtime::BlockKind> kinds = {runtime::BlockKind::kAttn, runtime::BlockKind::kFfn};
  double rel_norm = 0.01;  // ||delta|| / ||W|| per tensor
  uint64_t seed = 1;
  bool replace = false;
  ProgressFn progress;
};

absl::StatusOr<ImportResult> DeriveModel(const Zoo& zoo, const DeriveOptions& opt);

// W + rel_norm * ||W|| * N / ||N|| with N standard normal from `seed` (same dtype as W).
runtime::Tensor PerturbTensor(const runtime::Tensor& w, double rel_norm, uint64_t seed);

}  // namespace blockserve::blockzoo
