// SentencePiece `tokenizer.model` files (Llama, Mistral, TinyLlama ...) through Debian's
// libsentencepiece; decoding follows llama2.c (byte pieces become bytes, the space after BOS is
// dropped) so that streamed text equals the llama2.c tokenizer's.
// Standard-library types only: sentencepiece's header defines its own `absl::string_view`,
// which clashes with Abseil's, so that header is included by the .cc alone.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::runtime {

// Parses a serialized ModelProto; null with `*error` set when it is not one.
std::unique_ptr<Tokenizer> ParseSentencePieceModel(const void* data, size_t size,
                                                   std::string* error);

}  // namespace blockserve::runtime
