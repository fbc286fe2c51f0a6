#include "runtime/tokenizer/sentencepiece_model.h"

#include <cstdint>
#include <cstring>
#include <string_view>
#include <vector>

#include "runtime/tokenizer/sentencepiece_bpe.h"

// A SentencePiece `tokenizer.model` is a serialized sentencepiece.ModelProto. We read the few
// fields a BPE model needs straight from the protobuf wire format (bounds checked at every
// step) instead of linking libsentencepiece: Debian's copy carries its own protobuf runtime,
// which crashes at load time in a process that also links libprotobuf (gRPC).
//   ModelProto     1: pieces (repeated SentencePiece)  2: trainer_spec  3: normalizer_spec
//   SentencePiece  1: piece (string)  2: score (float)  3: type (1 normal, 2 unknown,
//                  3 control, 4 user defined, 5 unused, 6 byte)
//   TrainerSpec    3: model_type (1 unigram, 2 bpe, 3 word, 4 char)  40: unk_id  41: bos_id
//                  42: eos_id
//   NormalizerSpec 3: add_dummy_prefix (bool)

namespace blockserve::runtime {
namespace {

class Wire {
 public:
  Wire(const uint8_t* p, size_t n) : p_(p), end_(p + n) {}
  bool done() const { return p_ >= end_; }

  bool Varint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p_ >= end_) return false;
      const uint8_t b = *p_++;
      *v |= static_cast<uint64_t>(b & 0x7F) << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  // Next field: number, wire type; for length-delimited fields the payload, for fixed32 the
  // value, for varints the value. False on malformed input.
  bool Next(uint32_t* field, uint64_t* value, std::string_view* bytes) {
    uint64_t key;
    if (!Varint(&key)) return false;
    *field = static_cast<uint32_t>(key >> 3);
    switch (key & 7) {
      case 0:
        return Varint(value);
      case 1:
        if (end_ - p_ < 8) return false;
        p_ += 8;
        return true;
      case 2: {
        uint64_t len;
        if (!Varint(&len) || len > static_cast<uint64_t>(end_ - p_)) return false;
        *bytes = std::string_view(reinterpret_cast<const char*>(p_), len);
        p_ += len;
        return true;
      }
      case 5: {
        if (end_ - p_ < 4) return false;
        uint32_t u = p_[0] | p_[1] << 8 | p_[2] << 16 | static_cast<uint32_t>(p_[3]) << 24;
        *value = u;
        p_ += 4;
        return true;
      }
      default:
        return false;  // groups (3, 4) and reserved types do not occur in ModelProto
    }
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

Wire Sub(std::string_view b) { return Wire(reinterpret_cast<const uint8_t*>(b.data()), b.size()); }

}  // namespace

std::unique_ptr<Tokenizer> ParseSentencePieceModel(const void* data, size_t size,
                                                   std::string* error) {
  Wire w(static_cast<const uint8_t*>(data), size);
  std::vector<SentencePieceBpe::Piece> pieces;
  int64_t model_type = 1, bos = 1, eos = 2;
  bool dummy_prefix = true;
  auto fail = [&](const std::string& what) {
    *error = "not a SentencePiece model: " + what;
    return nullptr;
  };
  while (!w.done()) {
    uint32_t f;
    uint64_t v = 0;
    std::string_view b;
    if (!w.Next(&f, &v, &b)) return fail("malformed protobuf");
    if (f == 1) {
      Wire pw = Sub(b);
      SentencePieceBpe::Piece piece;
      uint32_t type = 1;
      while (!pw.done()) {
        uint32_t pf;
        uint64_t pv = 0;
        std::string_view pb;
        if (!pw.Next(&pf, &pv, &pb)) return fail("malformed piece " + std::to_string(pieces.size()));
        if (pf == 1) piece.text = std::string(pb);
        if (pf == 2) {
          const uint32_t u = static_cast<uint32_t>(pv);
          std::memcpy(&piece.score, &u, sizeof(float));
        }
        if (pf == 3) type = static_cast<uint32_t>(pv);
      }
      if (type == 1 || type == 4) {  // U+2581 marks a space in normal pieces
        std::string text;
        for (size_t p = 0; p < piece.text.size();) {
          if (piece.text.compare(p, 3, "\xE2\x96\x81") == 0) {
            text += ' ';
            p += 3;
          } else {
            text += piece.text[p++];
          }
        }
        piece.text = std::move(text);
      }
      pieces.push_back(std::move(piece));
    } else if (f == 2 || f == 3) {
      Wire sw = Sub(b);
      while (!sw.done()) {
        uint32_t sf;
        uint64_t sv = 0;
        std::string_view sb;
        if (!sw.Next(&sf, &sv, &sb)) return fail(f == 2 ? "malformed trainer_spec" : "malformed normalizer_spec");
        const int64_t iv = static_cast<int64_t>(sv);  // int32 fields: -1 is a 10-byte varint
        if (f == 2 && sf == 3) model_type = iv;
        if (f == 2 && sf == 41) bos = iv;
        if (f == 2 && sf == 42) eos = iv;
        if (f == 3 && sf == 3) dummy_prefix = sv != 0;
      }
    }
  }
  if (pieces.empty()) return fail("no pieces");
  if (model_type != 2) {
    *error = "SentencePiece model of type " + std::to_string(model_type) +
             " (only BPE, type 2, is supported: unigram models need a Viterbi segmentation)";
    return nullptr;
  }
  if (!dummy_prefix) {
    *error = "SentencePiece model without add_dummy_prefix is not supported";
    return nullptr;
  }
  const int n = static_cast<int>(pieces.size());
  if (bos >= n || eos >= n) return fail("bos_id/eos_id outside the pieces");
  return std::make_unique<SentencePieceBpe>(std::move(pieces), static_cast<int32_t>(bos),
                                            static_cast<int32_t>(eos));
}

}  // namespace blockserve::runtime
