// Byte-level BPE (GPT-2 family: GPT-2, Llama 3, Qwen): the GPT-2 pre-tokenizer splits text
// into words, each word's bytes map to printable characters, and ranked merges join them.
// Loaded from a Hugging Face tokenizer.json or from a GGUF "gpt2" vocabulary.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::runtime {

class ByteLevelBpe final : public Tokenizer {
 public:
  // tokens: id -> token text in the byte-to-unicode alphabet ("Ġthe"); merges: "a b", by rank.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpe>> Create(std::vector<std::string> tokens,
                                                              const std::vector<std::string>& merges,
                                                              int32_t bos, int32_t eos,
                                                              const std::string& source);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string Decode(int32_t prev, int32_t token) const override;
  int vocab_size() const override { return static_cast<int>(tokens_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  size_t max_token_bytes() const override { return max_token_bytes_; }

 private:
  ByteLevelBpe() = default;
  void EncodeWord(std::string_view word, std::vector<int32_t>& out) const;

  std::vector<std::string> tokens_;
  absl::flat_hash_map<std::string, int32_t> vocab_;
  absl::flat_hash_map<std::string, int32_t> merge_rank_;  // "left\x01right" -> rank
  std::string byte_to_unicode_[256];                     // UTF-8 of each byte's character
  absl::flat_hash_map<uint32_t, uint8_t> unicode_to_byte_;
  int32_t bos_ = -1, eos_ = -1;
  size_t max_token_bytes_ = 1;
};

// Splits text the way GPT-2's pre-tokenizer regex does:
//   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::vector<std::string_view> Gpt2PreTokenize(std::string_view text);

// Parses a Hugging Face tokenizer.json holding a byte-level BPE model. `source` names the file.
absl::StatusOr<std::unique_ptr<ByteLevelBpe>> ParseTokenizerJson(std::string_view json,
                                                                 const std::string& source);
absl::StatusOr<std::unique_ptr<ByteLevelBpe>> LoadTokenizerJson(const std::string& path);

}  // namespace blockserve::runtime
