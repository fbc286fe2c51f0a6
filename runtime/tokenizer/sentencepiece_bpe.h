// SentencePiece-style BPE as llama2.c run.c implements it: a dummy-prefix space, one piece per
// UTF-8 character (byte tokens <0xNN> as fallback), then greedy merges by highest score.
// Used for llama2.c tokenizer files and for GGUF "llama" vocabularies.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::runtime {

class SentencePieceBpe final : public Tokenizer {
 public:
  struct Piece {
    std::string text;  // with plain spaces (SentencePiece's U+2581 already replaced)
    float score = 0.0f;
  };
  SentencePieceBpe(std::vector<Piece> pieces, int32_t bos, int32_t eos);

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override;
  std::string Decode(int32_t prev, int32_t token) const override;
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int32_t bos_id() const override { return bos_; }
  int32_t eos_id() const override { return eos_; }
  size_t max_token_bytes() const override { return max_token_bytes_; }

 private:
  int32_t Lookup(std::string_view s) const;
  // The score-ordered merges over `toks`, in place.
  void Merge(std::vector<int32_t>& toks) const;

  std::vector<Piece> pieces_;
  absl::flat_hash_map<std::string, int32_t> index_;
  int32_t byte_ids_[256];  // id of "<0xNN>", or -1
  int32_t bos_, eos_;
  size_t max_token_bytes_ = 1;
};

// Parses a llama2.c tokenizer file (tokenizer.bin / tok512.bin) with `vocab_size` entries.
// `source` names the file in errors.
absl::StatusOr<std::unique_ptr<SentencePieceBpe>> ParseLlama2cTokenizer(const uint8_t* data,
                                                                        size_t size,
                                                                        int vocab_size,
                                                                        const std::string& source);
absl::StatusOr<std::unique_ptr<SentencePieceBpe>> LoadLlama2cTokenizer(const std::string& path,
                                                                       int vocab_size);

}  // namespace blockserve::runtime
