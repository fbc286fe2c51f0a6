// Text out of a token stream: incremental detokenization that only ever emits whole UTF-8
// characters, and stop strings that are cut from the output (text that might be the start of a
// stop string is held back until it is known not to be).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::server {

class TextStream {
 public:
  TextStream(const runtime::Tokenizer* tokenizer, std::vector<std::string> stops,
             int32_t prev_token = -1);

  // Appends one token; returns the text that is now final. `*stopped` turns true when a stop
  // string completed (its text and everything after it are dropped; feed no more tokens).
  // `stops_active` false (before min_tokens): stop strings neither match nor hold text back.
  std::string Add(int32_t token, bool* stopped, bool stops_active = true);
  // The end of the stream: whatever is held back (an incomplete UTF-8 sequence becomes U+FFFD).
  std::string Flush();

 private:
  const runtime::Tokenizer* tokenizer_;
  std::vector<std::string> stops_;
  int32_t prev_;
  std::string pending_;  // decoded bytes not yet emitted
};

// Length of the longest prefix of `s` made of whole, valid UTF-8 characters, leaving out an
// incomplete sequence at the end (invalid bytes elsewhere count as single characters).
size_t CompleteUtf8Prefix(const std::string& s);
// `s` with every invalid UTF-8 byte replaced by U+FFFD (JSON and protobuf strings need UTF-8).
std::string SanitizeUtf8(const std::string& s);

}  // namespace blockserve::server
