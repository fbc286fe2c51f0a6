// libFuzzer: llama2.c tokenizer files and tokenizer.json; the first byte picks the parser, the
// rest is the file. Whatever parses must encode and decode arbitrary text without crashing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "runtime/tokenizer/byte_level_bpe.h"
#include "runtime/tokenizer/sentencepiece_bpe.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (data[0] & 1) {
    auto t = blockserve::runtime::ParseTokenizerJson(text.substr(1), "fuzz.json");
    if (t.ok()) (void)(*t)->DecodeAll((*t)->Encode(text, false));
  } else {
    auto t = blockserve::runtime::ParseLlama2cTokenizer(data + 1, size - 1, 64, "fuzz.bin");
    if (t.ok()) (void)(*t)->DecodeAll((*t)->Encode(text, true));
  }
  return 0;
}
