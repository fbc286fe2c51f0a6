#include "server/text_stream.h"

#include <algorithm>

namespace blockserve::server {

namespace {

// Bytes of the UTF-8 sequence a lead byte starts (0: not a valid lead byte).
int SequenceLength(unsigned char c) {
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) return 2;
  if (c >= 0xE0 && c <= 0xEF) return 3;
  if (c >= 0xF0 && c <= 0xF4) return 4;
  return 0;
}

// Length of the valid sequence at s[i] (0: invalid; -1: valid so far but cut off by the end).
int ValidAt(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const int n = SequenceLength(c);
  if (n <= 1) return n;
  for (int k = 1; k < n; ++k) {
    if (i + k >= s.size()) return -1;
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0) != 0x80) return 0;
    if (k == 1) {  // overlong / surrogate / beyond U+10FFFF
      if (c == 0xE0 && d < 0xA0) return 0;
      if (c == 0xED && d > 0x9F) return 0;
      if (c == 0xF0 && d < 0x90) return 0;
      if (c == 0xF4 && d > 0x8F) return 0;
    }
  }
  return n;
}

}  // namespace

size_t CompleteUtf8Prefix(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const int n = ValidAt(s, i);
    if (n < 0) break;
    i += n == 0 ? 1 : n;
  }
  return i;
}

std::string SanitizeUtf8(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    const int n = ValidAt(s, i);
    if (n > 0) {
      out.append(s, i, n);
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

TextStream::TextStream(const runtime::Tokenizer* tokenizer, std::vector<std::string> stops,
                       int32_t prev_token)
    : tokenizer_(tokenizer), prev_(prev_token) {
  for (auto& s : stops) {
    if (!s.empty()) stops_.push_back(std::move(s));
  }
}

std::string TextStream::Add(int32_t token, bool* stopped, bool stops_active) {
  *stopped = false;
  pending_ += tokenizer_->Decode(prev_, token);
  prev_ = token;
  const std::vector<std::string> none;
  const std::vector<std::string>& stops = stops_active ? stops_ : none;
  // A complete stop string: everything before its earliest occurrence is the rest of the text.
  size_t cut = std::string::npos;
  for (const std::string& s : stops) cut = std::min(cut, pending_.find(s));
  if (cut != std::string::npos) {
    *stopped = true;
    std::string out = SanitizeUtf8(pending_.substr(0, cut));
    pending_.clear();
    return out;
  }
  // Hold back a tail that could still become a stop string, and an unfinished character.
  size_t keep = 0;
  for (const std::string& s : stops) {
    for (size_t n = std::min(s.size() - 1, pending_.size()); n > keep; --n) {
      if (pending_.compare(pending_.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
    }
  }
  size_t emit = CompleteUtf8Prefix(pending_.substr(0, pending_.size() - keep));
  std::string out = SanitizeUtf8(pending_.substr(0, emit));
  pending_.erase(0, emit);
  return out;
}

std::string TextStream::Flush() {
  std::string out = SanitizeUtf8(pending_);
  pending_.clear();
  return out;
}

}  // namespace blockserve::server
