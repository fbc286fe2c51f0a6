// PEFT LoRA adapters: adapter_config.json + adapter_model.safetensors. Tensors come out per
// (block kind, layer) under block-local names ("wq.lora_A" [r, in], "wq.lora_B" [out, r]) in
// Hugging Face row order (q/k rows permuted for rotate-half RoPE).
#pragma once

#include <map>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "blockzoo/formats/safetensors.h"
#include "nlohmann/json.hpp"
#include "runtime/block.h"

namespace blockserve::blockzoo {

struct PeftAdapter {
  int rank = 0;
  float alpha = 0;  // effective: delta = alpha / rank * B A (rsLoRA folded in)
  std::map<std::pair<runtime::BlockKind, int>, std::map<std::string, runtime::Tensor>> blocks;
  nlohmann::json config;  // adapter_config.json as read
  SafetensorsFile file;   // keeps the tensors mapped
};

absl::StatusOr<PeftAdapter> LoadPeftAdapter(const std::string& dir);

// The parts of it, for callers with the bytes in hand (and the fuzzer): adapter_config.json's
// text into rank, alpha and config (errors name `cfg_path` and the field), and the tensors of
// `out->file` into out->blocks (errors name `source` and the tensor).
absl::Status ParsePeftConfig(const std::string& text, const std::string& cfg_path, PeftAdapter* out);
absl::Status MapPeftTensors(const std::string& source, PeftAdapter* out);

}  // namespace blockserve::blockzoo
