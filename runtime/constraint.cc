#include "runtime/constraint.h"

#include <algorithm>
#include <limits>

#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::runtime {

std::shared_ptr<const TokenBytes> MakeTokenBytes(const Tokenizer& tokenizer) {
  auto t = std::make_shared<TokenBytes>();
  t->bytes.resize(tokenizer.vocab_size());
  t->plain.resize(tokenizer.vocab_size());
  for (int32_t i = 0; i < tokenizer.vocab_size(); ++i) {
    t->bytes[i] = tokenizer.Decode(-1, i);
    t->plain[i] = std::all_of(t->bytes[i].begin(), t->bytes[i].end(), [](char ch) {
      return ch >= 0x20 && ch <= 0x7E && ch != '"' && ch != '\\';
    });
  }
  return t;
}

namespace {

bool IsDigit(unsigned char c) { return c >= '0' && c <= '9'; }
bool IsHex(unsigned char c) {
  return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

}  // namespace

bool JsonObjectRecognizer::Whitespace(unsigned char c) {
  if (c != ' ' && c != '\t' && c != '\n' && c != '\r') return false;
  return true;
}

bool JsonObjectRecognizer::Close(unsigned char c) {
  if (depth_ == 0 || stack_[depth_ - 1] != (c == '}' ? '{' : '[')) return false;
  --depth_;
  mode_ = depth_ == 0 ? Mode::kDone : Mode::kAfterValue;
  return true;
}

bool JsonObjectRecognizer::StartValue(unsigned char c) {
  switch (c) {
    case '{':
    case '[':
      if (depth_ == kMaxDepth) return false;
      stack_[depth_++] = static_cast<char>(c);
      mode_ = c == '{' ? Mode::kKeyOrEnd : Mode::kValue;
      array_open_ = c == '[';
      return true;
    case '"':
      mode_ = Mode::kString;
      key_ = false;
      return true;
    case '-':
      mode_ = Mode::kMinus;
      return true;
    case '0':
      mode_ = Mode::kZero;
      return true;
    case 't':
    case 'f':
    case 'n':
      literal_ = c == 't' ? "rue" : c == 'f' ? "alse" : "ull";
      mode_ = Mode::kLiteral;
      return true;
    default:
      if (c >= '1' && c <= '9') {
        mode_ = Mode::kInt;
        return true;
      }
      return false;
  }
}

bool JsonObjectRecognizer::EndValue(unsigned char c) {
  mode_ = Mode::kAfterValue;
  return Feed(c);
}

bool JsonObjectRecognizer::Feed(unsigned char c) {
  switch (mode_) {
    case Mode::kStart:
      if (c != '{') return false;
      stack_[depth_++] = '{';
      mode_ = Mode::kKeyOrEnd;
      return true;
    case Mode::kValue:
    case Mode::kKeyOrEnd:
    case Mode::kKey:
    case Mode::kColon:
    case Mode::kAfterValue: {
      if (Whitespace(c)) return ws_++ == 0;
      ws_ = 0;
      const Mode m = mode_;
      if (m == Mode::kValue) {
        if (c == ']' && array_open_) return Close(c);
        array_open_ = false;
        return StartValue(c);
      }
      if (m == Mode::kKeyOrEnd && c == '}') return Close(c);
      if (m == Mode::kKeyOrEnd || m == Mode::kKey) {
        if (c != '"') return false;
        mode_ = Mode::kString;
        key_ = true;
        return true;
      }
      if (m == Mode::kColon) {
        if (c != ':') return false;
        mode_ = Mode::kValue;
        array_open_ = false;
        return true;
      }
      // kAfterValue
      if (c == ',') {
        mode_ = stack_[depth_ - 1] == '{' ? Mode::kKey : Mode::kValue;
        array_open_ = false;
        return true;
      }
      if (c == '}' || c == ']') return Close(c);
      return false;
    }
    case Mode::kString:
      if (utf8_left_ > 0) {
        if (c < utf8_lo_ || c > utf8_hi_) return false;
        --utf8_left_;
        utf8_lo_ = 0x80;
        utf8_hi_ = 0xBF;
        return true;
      }
      if (c >= 0x80) {  // the lead byte of a multi-byte character
        if (c >= 0xC2 && c <= 0xDF) {
          utf8_left_ = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
          utf8_left_ = 2;
          if (c == 0xE0) utf8_lo_ = 0xA0;  // overlong
          if (c == 0xED) utf8_hi_ = 0x9F;  // surrogates
        } else if (c >= 0xF0 && c <= 0xF4) {
          utf8_left_ = 3;
          if (c == 0xF0) utf8_lo_ = 0x90;  // overlong
          if (c == 0xF4) utf8_hi_ = 0x8F;  // past U+10FFFF
        } else {
          return false;
        }
        return true;
      }
      if (c == '"') {
        mode_ = key_ ? Mode::kColon : Mode::kAfterValue;
        return true;
      }
      if (c == '\\') {
        mode_ = Mode::kEscape;
        return true;
      }
      return c >= 0x20;  // control characters must be escaped
    case Mode::kEscape:
      if (c == 'u') {
        mode_ = Mode::kUnicode;
        hex_left_ = 4;
        return true;
      }
      if (c == '"' || c == '\\' || c == '/' || c == 'b' || c == 'f' || c == 'n' || c == 'r' ||
          c == 't') {
        mode_ = Mode::kString;
        return true;
      }
      return false;
    case Mode::kUnicode:
      if (!IsHex(c)) return false;
      if (--hex_left_ == 0) mode_ = Mode::kString;
      return true;
    case Mode::kMinus:
      if (c == '0') {
        mode_ = Mode::kZero;
        return true;
      }
      if (c >= '1' && c <= '9') {
        mode_ = Mode::kInt;
        return true;
      }
      return false;
    case Mode::kZero:
    case Mode::kInt:
      if (mode_ == Mode::kInt && IsDigit(c)) return true;
      if (c == '.') {
        mode_ = Mode::kDot;
        return true;
      }
      if (c == 'e' || c == 'E') {
        mode_ = Mode::kExp;
        return true;
      }
      return EndValue(c);
    case Mode::kDot:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kFrac;
      return true;
    case Mode::kFrac:
      if (IsDigit(c)) return true;
      if (c == 'e' || c == 'E') {
        mode_ = Mode::kExp;
        return true;
      }
      return EndValue(c);
    case Mode::kExp:
      if (c == '+' || c == '-') {
        mode_ = Mode::kExpSign;
        return true;
      }
      if (!IsDigit(c)) return false;
      mode_ = Mode::kExpDigits;
      return true;
    case Mode::kExpSign:
      if (!IsDigit(c)) return false;
      mode_ = Mode::kExpDigits;
      return true;
    case Mode::kExpDigits:
      if (IsDigit(c)) return true;
      return EndValue(c);
    case Mode::kLiteral:
      if (c != static_cast<unsigned char>(*literal_)) return false;
      if (*++literal_ == '\0') mode_ = Mode::kAfterValue;
      return true;
    case Mode::kDone:
      return false;
  }
  return false;
}

namespace {

constexpr float kMasked = -std::numeric_limits<float>::infinity();

// The shared part of the constraints: the stop tokens are allowed when `stop_ok`, every other
// token when `go_on`, its first byte is in `first` (most tokens fail there, at the cost of a
// lookup) and `allows` its bytes; should nothing be allowed (a vocabulary that cannot continue
// the text), the stop tokens are, so the generation ends instead of going astray.
template <typename Allows>
void MaskBy(const TokenBytes& t, const std::vector<int32_t>& stops, bool stop_ok, bool go_on,
            const std::array<bool, 256>& first, float* logits, int vocab, Allows allows) {
  bool any = false;
  for (int i = 0; i < vocab; ++i) {
    if (logits[i] == kMasked) continue;
    const bool stop = std::find(stops.begin(), stops.end(), i) != stops.end();
    const bool ok = stop ? stop_ok
                         : go_on && i < static_cast<int>(t.bytes.size()) && !t.bytes[i].empty() &&
                               first[static_cast<unsigned char>(t.bytes[i][0])] && allows(i);
    if (ok) {
      any = true;
    } else {
      logits[i] = kMasked;
    }
  }
  if (any) return;
  for (int32_t s : stops) {
    if (s >= 0 && s < vocab) logits[s] = 0.0f;
  }
}

// The bytes of a token the text takes in (none for a stop token or an id outside the table).
const std::string* TextOf(const TokenBytes& t, const std::vector<int32_t>& stops, int32_t token) {
  if (token < 0 || token >= static_cast<int32_t>(t.bytes.size())) return nullptr;
  if (std::find(stops.begin(), stops.end(), token) != stops.end()) return nullptr;
  return &t.bytes[token];
}

class JsonConstraint : public TokenConstraint {
 public:
  JsonConstraint(std::shared_ptr<const TokenBytes> t, std::vector<int32_t> stops)
      : t_(std::move(t)), stops_(std::move(stops)) {}
  void Mask(float* logits, int vocab) const override {
    // The bytes that may come next, and, when they are few (outside strings), the byte pairs:
    // most tokens are then refused by lookups ("after a number", ~25,000 GPT-2 tokens start
    // with a space and fail at their second byte).
    std::array<bool, 256> first{};
    int firsts = 0;
    for (int b = 0; b < 256; ++b) {
      JsonObjectRecognizer r = r_;
      firsts += first[b] = r.Feed(static_cast<unsigned char>(b));
    }
    const bool pairs = firsts <= 32;
    if (pairs) {
      second_.assign(256 * 256, 0);
      for (int b0 = 0; b0 < 256; ++b0) {
        if (!first[b0]) continue;
        JsonObjectRecognizer after = r_;
        after.Feed(static_cast<unsigned char>(b0));
        for (int b1 = 0; b1 < 256; ++b1) {
          JsonObjectRecognizer r = after;
          second_[b0 * 256 + b1] = r.Feed(static_cast<unsigned char>(b1));
        }
      }
    }
    const bool in_string = r_.in_plain_string();
    MaskBy(*t_, stops_, r_.complete(), !r_.complete(), first, logits, vocab, [&](int token) {
      if (in_string && t_->plain[token]) return true;
      const std::string& bytes = t_->bytes[token];
      if (pairs && bytes.size() >= 2 &&
          !second_[static_cast<unsigned char>(bytes[0]) * 256 + static_cast<unsigned char>(bytes[1])]) {
        return false;
      }
      JsonObjectRecognizer r = r_;
      for (unsigned char c : bytes) {
        if (!r.Feed(c)) return false;
      }
      return true;
    });
  }
  void Accept(int32_t token) override {
    if (const std::string* b = TextOf(*t_, stops_, token)) {
      for (unsigned char c : *b) r_.Feed(c);
    }
  }

 private:
  std::shared_ptr<const TokenBytes> t_;
  std::vector<int32_t> stops_;
  JsonObjectRecognizer r_;
  mutable std::vector<uint8_t> second_;  // Mask's byte-pair table (scratch, kept for its memory)
};

class Choice : public TokenConstraint {
 public:
  Choice(std::shared_ptr<const TokenBytes> t, std::vector<int32_t> stops,
         std::shared_ptr<const std::vector<std::string>> choices)
      : t_(std::move(t)), stops_(std::move(stops)), choices_(std::move(choices)) {}
  void Mask(float* logits, int vocab) const override {
    const bool complete =
        std::find(choices_->begin(), choices_->end(), text_) != choices_->end();
    // A choice that another one extends ("yes", "yes!") is complete and may go on.
    bool longer = false;
    for (const std::string& c : *choices_) longer |= c.size() > text_.size() && c.rfind(text_, 0) == 0;
    // The choices the text so far begins, and the bytes that may come next.
    std::vector<const std::string*> open;
    std::array<bool, 256> first{};
    for (const std::string& c : *choices_) {
      if (c.size() > text_.size() && c.compare(0, text_.size(), text_) == 0) {
        open.push_back(&c);
        first[static_cast<unsigned char>(c[text_.size()])] = true;
      }
    }
    MaskBy(*t_, stops_, complete, longer, first, logits, vocab, [&](int token) {
      const std::string& bytes = t_->bytes[token];
      return std::any_of(open.begin(), open.end(), [&](const std::string* c) {
        return c->size() >= text_.size() + bytes.size() &&
               c->compare(text_.size(), bytes.size(), bytes) == 0;
      });
    });
  }
  void Accept(int32_t token) override {
    if (const std::string* b = TextOf(*t_, stops_, token)) text_ += *b;
  }

 private:
  std::shared_ptr<const TokenBytes> t_;
  std::vector<int32_t> stops_;
  std::shared_ptr<const std::vector<std::string>> choices_;
  std::string text_;
};

}  // namespace

ConstraintFactory JsonObjectConstraint(std::shared_ptr<const TokenBytes> table,
                                       std::vector<int32_t> stops) {
  return [table, stops] { return std::make_unique<JsonConstraint>(table, stops); };
}

ConstraintFactory ChoiceConstraint(std::shared_ptr<const TokenBytes> table,
                                   std::vector<int32_t> stops, std::vector<std::string> choices) {
  auto shared = std::make_shared<const std::vector<std::string>>(std::move(choices));
  return [table, stops, shared] { return std::make_unique<Choice>(table, stops, shared); };
}

}  // namespace blockserve::runtime
