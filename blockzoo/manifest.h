// A model in the zoo: `models/<name>.json`, naming its family (hyper-parameters), the chain of
// block ids in order, the tokenizer, the parent model and provenance. Parsing checks every
// field; errors name the file and the field.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "runtime/block.h"
#include "runtime/dtype.h"
#include "runtime/model_config.h"

namespace blockserve::blockzoo {

struct TensorSpec {
  runtime::DType dtype = runtime::DType::kF32;
  std::vector<int64_t> shape;
  bool operator==(const TensorSpec&) const = default;
};

struct ChainEntry {
  runtime::BlockKind kind = runtime::BlockKind::kEmbed;
  int layer = -1;        // attn/ffn: the layer; -1 for embed and head
  std::string block;     // block id (64 hex)
  std::string lora;      // optional LoRA block id attached to this block
  uint64_t bytes = 0;    // size of the block file
  std::map<std::string, TensorSpec> tensors;
};

struct Manifest {
  std::string name;
  runtime::ModelConfig family;
  std::vector<ChainEntry> chain;
  std::string tokenizer;         // tokenizer id (64 hex); empty when none
  std::string tokenizer_format;  // "llama2c", "hf-json", "sentencepiece", "gguf"
  std::string parent;            // base model name, empty for none
  std::string chat_template;     // the source's Jinja chat template, empty for none
  bool synthetic = false;        // made by `blockzoo derive`
  nlohmann::json provenance = nlohmann::json::object();  // source, importer, recipe, seed ...

  uint64_t bytes() const;  // sum of the chain's block files
};

// Model names: 1-128 of [A-Za-z0-9._-], not starting with '.' (they become file names).
bool IsValidModelName(const std::string& name);
bool IsModelNameChar(char c);

// The chain a family implies: embed, (attn, ffn) x n_layers, head. Manifests must follow it.
std::vector<std::pair<runtime::BlockKind, int>> ExpectedChain(const runtime::ModelConfig& c);

// Family hyper-parameters that a block of `kind` depends on (hashed into its id).
nlohmann::json BlockHparams(runtime::BlockKind kind, const runtime::ModelConfig& c);

nlohmann::json FamilyToJson(const runtime::ModelConfig& c);
absl::StatusOr<runtime::ModelConfig> FamilyFromJson(const nlohmann::json& j,
                                                    const std::string& source);

std::string SerializeManifest(const Manifest& m);
absl::StatusOr<Manifest> ParseManifest(const std::string& text, const std::string& source);

absl::StatusOr<runtime::BlockKind> ParseBlockKind(const std::string& s);
absl::StatusOr<runtime::DType> ParseDTypeName(const std::string& s);

}  // namespace blockserve::blockzoo
