#include "runtime/tokenizer/sentencepiece_model.h"

#include <sentencepiece_processor.h>

#include <vector>


namespace blockserve::runtime {
namespace {

class SentencePieceTokenizer final : public Tokenizer {
 public:
  explicit SentencePieceTokenizer(std::unique_ptr<sentencepiece::SentencePieceProcessor> sp)
      : sp_(std::move(sp)) {
    const int n = sp_->GetPieceSize();
    pieces_.resize(n);
    for (int i = 0; i < n; ++i) {
      if (sp_->IsControl(i) || sp_->IsUnknown(i)) continue;  // decode to nothing
      const std::string& piece = sp_->IdToPiece(i);
      if (sp_->IsByte(i) && piece.size() == 6) {  // "<0xAB>"
        pieces_[i] = std::string(1, static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
        continue;
      }
      std::string text;
      for (size_t p = 0; p < piece.size();) {
        if (piece.compare(p, 3, "\xE2\x96\x81") == 0) {  // U+2581 marks a space
          text += ' ';
          p += 3;
        } else {
          text += piece[p++];
        }
      }
      pieces_[i] = std::move(text);
    }
  }

  std::vector<int32_t> Encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    if (!text.empty() && !sp_->Encode(text, &ids).ok()) {
      ids.clear();
    }
    std::vector<int32_t> out;
    if (add_bos && bos_id() >= 0) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string Decode(int32_t prev, int32_t token) const override {
    if (token < 0 || token >= vocab_size()) return "";
    const std::string& s = pieces_[token];
    if (prev == bos_id() && !s.empty() && s[0] == ' ') return s.substr(1);
    return s;
  }

  int vocab_size() const override { return static_cast<int>(pieces_.size()); }
  int32_t bos_id() const override { return sp_->bos_id(); }
  int32_t eos_id() const override { return sp_->eos_id(); }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::vector<std::string> pieces_;
};

}  // namespace

std::unique_ptr<Tokenizer> ParseSentencePieceModel(const void* data, size_t size,
                                                   std::string* error) {
  auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
  const auto status =
      sp->LoadFromSerializedProto(std::string_view(static_cast<const char*>(data), size));
  if (!status.ok()) {
    *error = "not a SentencePiece model: " + status.ToString();
    return nullptr;
  }
  if (sp->GetPieceSize() <= 0) {
    *error = "SentencePiece model without pieces";
    return nullptr;
  }
  return std::make_unique<SentencePieceTokenizer>(std::move(sp));
}

}  // namespace blockserve::runtime
