// Importers: llama2.c checkpoints, GGUF files and Hugging Face Llama directories into the zoo,
// and the shared path that stores any in-memory model (weights + tokenizer) as blocks.
#pragma once

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "blockzoo/zoo.h"
#include "runtime/model_weights.h"

namespace blockserve::blockzoo {

struct ImportOptions {
  std::string name;                      // model name; default: the source's file name stem
  std::optional<std::string> tokenizer;  // tokenizer file overriding the source's own
  bool replace = false;                  // replace an existing model of that name
  ProgressFn progress;
};

struct ImportResult {
  Manifest manifest;
  int blocks_written = 0;  // new block files
  int blocks_shared = 0;   // blocks already in the zoo (deduplicated)
};

struct TokenizerBytes {
  std::string bytes;
  std::string format;  // as Manifest::tokenizer_format
};

// Imports `source`: a directory (Hugging Face), a GGUF file or a llama2.c checkpoint.
absl::StatusOr<ImportResult> ImportModel(const Zoo& zoo, const std::string& source,
                                         const ImportOptions& opt);

// Imports a PEFT LoRA adapter directory onto zoo model `base`: a new model `opt.name` (default:
// the directory name) whose chain is the base's with LoRA blocks attached.
absl::StatusOr<ImportResult> ImportPeftAdapter(const Zoo& zoo, const std::string& dir,
                                               const std::string& base, const ImportOptions& opt);

// Stores a random-weight model of shape `config` (blockzoo/synthetic.h), labelled synthetic:
// a base for benchmarks and tests at realistic shapes (never for correctness claims).
absl::StatusOr<ImportResult> ImportSynthetic(const Zoo& zoo, const std::string& name,
                                             const runtime::ModelConfig& config,
                                             runtime::DType dtype, uint64_t seed,
                                             const ProgressFn& progress);

// Stores `w` as blocks plus a manifest built from `tmpl` (name, parent, provenance, synthetic;
// family, chain and tokenizer are filled in). The caller holds the zoo's write lock.
absl::StatusOr<ImportResult> StoreModel(const Zoo& zoo, const FileLock& lock,
                                        const runtime::ModelWeights& w,
                                        const std::optional<TokenizerBytes>& tokenizer,
                                        Manifest tmpl, bool replace, const ProgressFn& progress);

// A model name from a path: the file name without extension (or the directory name), with
// characters outside [A-Za-z0-9._-] replaced by '-'.
std::string ModelNameFromPath(const std::string& path);

}  // namespace blockserve::blockzoo
