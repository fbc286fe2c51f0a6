// Test fixture generator: writes a llama2.c-convention model as a Hugging Face Llama directory
// laid out as the official converters do (q/k rows permuted for rotate-half RoPE, HF tensor
// names, tied embeddings without lm_head, optional sharding with an index file).
#pragma once

#include <string>

#include "absl/status/status.h"
#include "runtime/model_weights.h"

namespace blockserve::testing {

// `tokenizer_model`: a SentencePiece file copied in as tokenizer.model (empty: none).
absl::Status ExportHfLlama(const runtime::ModelWeights& w, const std::string& dir, int shards,
                           const std::string& tokenizer_model);

}  // namespace blockserve::testing
