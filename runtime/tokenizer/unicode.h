// Minimal Unicode support for tokenizers: UTF-8 decoding and the categories the GPT-2
// pre-tokenizer needs.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace blockserve::runtime::unicode {

struct CodepointRange {
  uint32_t first, last;
};
extern const CodepointRange kLetterRanges[];
extern const size_t kLetterRangesSize;
extern const CodepointRange kNumberRanges[];
extern const size_t kNumberRangesSize;

bool IsLetter(uint32_t cp);      // \p{L}
bool IsNumber(uint32_t cp);      // \p{N}
bool IsWhitespace(uint32_t cp);  // \s

// A decoded character and the bytes it came from. Invalid UTF-8 decodes one byte at a time as
// U+FFFD (cp) while keeping the original byte.
struct Char {
  uint32_t cp;
  uint32_t offset;  // byte offset in the text
  uint32_t len;     // bytes
};
std::vector<Char> DecodeUtf8(std::string_view text);
void AppendUtf8(uint32_t cp, std::string& out);
bool IsValidUtf8(std::string_view text);

}  // namespace blockserve::runtime::unicode
