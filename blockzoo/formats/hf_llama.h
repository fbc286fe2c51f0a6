// Hugging Face Llama-family model directories: config.json, model.safetensors or sharded
// safetensors with model.safetensors.index.json, and tokenizer.model or tokenizer.json.
// Weights keep HF's layout: q/k rows are in rotate-half order (the official converters permute
// them), so the config records RopeStyle::kRotateHalf.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/model_weights.h"

namespace blockserve::blockzoo {

struct HfModel {
  runtime::ModelWeights weights;            // canonical names; views into the mapped shards
  std::optional<std::string> tokenizer;     // tokenizer.model (preferred) or tokenizer.json
};

absl::StatusOr<HfModel> LoadHfLlama(const std::string& dir);

// HF config.json -> ModelConfig (errors name the file and field).
absl::StatusOr<runtime::ModelConfig> ParseHfConfig(const std::string& text,
                                                   const std::string& source);

}  // namespace blockserve::blockzoo
