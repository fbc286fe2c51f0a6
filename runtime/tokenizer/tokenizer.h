// Tokenizers: text <-> token ids.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace blockserve::runtime {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  // Encodes `text` (arbitrary bytes; invalid UTF-8 falls back to byte tokens where the
  // vocabulary has them), prepending BOS when asked and the tokenizer has one.
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_bos) const = 0;
  // The bytes `token` contributes to the text when it follows `prev` (-1: none).
  virtual std::string Decode(int32_t prev, int32_t token) const = 0;
  virtual int vocab_size() const = 0;
  virtual int32_t bos_id() const = 0;  // -1 when none
  virtual int32_t eos_id() const = 0;  // -1 when none
  // The most text bytes one token of Encode covers (at least 1): a text of n bytes encodes to
  // at least ceil(n / max_token_bytes()) tokens, a bound checked before encoding a prompt.
  virtual size_t max_token_bytes() const = 0;

  // Decode of a whole sequence (each token after its predecessor).
  std::string DecodeAll(const std::vector<int32_t>& ids, int32_t prev = -1) const;
  // The text a client reads for a sequence: as DecodeAll, but BOS and EOS add nothing (they
  // still shape what follows them, as the space llama2.c drops after BOS).
  std::string DecodeText(const std::vector<int32_t>& ids) const;
};

}  // namespace blockserve::runtime
