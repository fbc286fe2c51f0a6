// A GGUF file as a Llama-family model and its embedded tokenizer.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "blockzoo/formats/gguf.h"
#include "runtime/model_weights.h"
#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::blockzoo {

// Maps a parsed GGUF of architecture "llama" (f32/f16/bf16 tensors) to canonical weights.
// `owner` keeps the bytes that `data` points into alive.
absl::StatusOr<runtime::ModelWeights> GgufToWeights(const GgufFile& f, const uint8_t* data,
                                                    std::shared_ptr<const void> owner);

// The tokenizer stored in GGUF metadata: "llama" (SentencePiece BPE) or "gpt2" (byte-level).
absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> GgufTokenizer(const GgufFile& f);

}  // namespace blockserve::blockzoo
