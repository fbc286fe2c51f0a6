// Loads a model file (llama2.c .bin or GGUF) with its tokenizer.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/model_weights.h"
#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::blockzoo {

struct LoadedModel {
  runtime::ModelWeights weights;
  std::unique_ptr<runtime::Tokenizer> tokenizer;  // null when none was found
};

// Format by content (GGUF magic) else llama2.c. The tokenizer: `tokenizer_path` when given
// (llama2.c tokenizer .bin or tokenizer.json), else the GGUF's own, else a tokenizer.bin or
// tok<vocab>.bin next to a llama2.c checkpoint.
absl::StatusOr<LoadedModel> LoadModelFile(const std::string& path,
                                          const std::optional<std::string>& tokenizer_path);

// Tokenizer file format by name: "hf-json" (.json), "sentencepiece" (.model), "gguf" (.gguf,
// a GGUF's tokenizer.* keys), else "llama2c".
std::string TokenizerFormatForPath(const std::string& path);
// tok<vocab>.bin or tokenizer.bin in the directory of a llama2.c checkpoint.
std::optional<std::string> FindTokenizerNextTo(const std::string& model_path, int vocab_size);

absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> LoadTokenizerFile(const std::string& path,
                                                                      int vocab_size);

}  // namespace blockserve::blockzoo
