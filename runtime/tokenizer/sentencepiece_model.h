// SentencePiece `tokenizer.model` files (Llama, Mistral, TinyLlama ...) of BPE type, read from
// the protobuf wire format by our own parser into the llama2.c-style SentencePiece BPE (the
// same merges by score; byte pieces become bytes, the space after BOS is dropped), so that
// streamed text equals the llama2.c tokenizer's.
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
