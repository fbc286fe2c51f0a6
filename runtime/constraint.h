// Constrained decoding (structured output): a TokenConstraint masks, before each draw, the
// logits of the tokens that would take a sequence's text out of a language — a JSON object
// (OpenAI's response_format json_object) or one of a list of strings (vLLM's guided_choice) —
// and learns each token picked. Tokens are judged by their bytes (TokenBytes), so the
// constraint works with any tokenizer, a token at a time, one pass over the vocabulary.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace blockserve::runtime {

class Tokenizer;

// The bytes each token adds to the text (index: token id), built once per tokenizer.
struct TokenBytes {
  std::vector<std::string> bytes;
  // Each token is plain string content: printable ASCII without '"' or '\\' (a JSON string
  // takes it as is, whatever came before).
  std::vector<uint8_t> plain;
};
// The table of `tokenizer`: each token as it reads after an ordinary token.
std::shared_ptr<const TokenBytes> MakeTokenBytes(const Tokenizer& tokenizer);

class TokenConstraint {
 public:
  virtual ~TokenConstraint() = default;
  // Sets to -inf the logits of the tokens not allowed next (`vocab` entries). The stop tokens
  // are allowed exactly when the text so far is complete; at least one token stays allowed
  // while the vocabulary can continue the text.
  virtual void Mask(float* logits, int vocab) const = 0;
  // The token that was picked.
  virtual void Accept(int32_t token) = 0;
};

// Makes a fresh constraint for each sequence (SamplingParams::constraint).
using ConstraintFactory = std::function<std::unique_ptr<TokenConstraint>()>;

// A character-level JSON recogniser (RFC 8259) for one top-level object: Feed() takes a byte
// and says whether the text is still a prefix of a valid object (strings must be valid UTF-8). Outside strings at most one
// whitespace byte in a row is accepted (a model cannot pad forever). Trivially copyable: a
// constraint tries each token's bytes on a copy.
class JsonObjectRecognizer {
 public:
  static constexpr int kMaxDepth = 32;
  bool Feed(unsigned char c);
  bool complete() const { return mode_ == Mode::kDone; }
  // Inside a string, between characters: any TokenBytes::plain token is accepted as is.
  bool in_plain_string() const { return mode_ == Mode::kString && utf8_left_ == 0; }

 private:
  enum class Mode : uint8_t {
    kStart,          // before the top-level '{'
    kValue,          // a value (or ']' right after '[')
    kKeyOrEnd,       // after '{': a key or '}'
    kKey,            // after ',' in an object: a key
    kColon,          // after a key
    kAfterValue,     // ',' or the closing bracket
    kString,         // inside a string
    kEscape,         // after '\' in a string
    kUnicode,        // in the 4 hex digits of \u
    kMinus,          // after a leading '-'
    kZero,           // after a leading '0'
    kInt,            // integer digits
    kDot,            // after '.'
    kFrac,           // fraction digits
    kExp,            // after 'e'
    kExpSign,        // after 'e+' / 'e-'
    kExpDigits,      // exponent digits
    kLiteral,        // inside true / false / null
    kDone,           // the top-level object closed
  };
  bool Whitespace(unsigned char c);
  bool StartValue(unsigned char c);
  bool EndValue(unsigned char c);  // a byte right after a number ends it
  bool Close(unsigned char c);

  Mode mode_ = Mode::kStart;
  bool key_ = false;        // the string being read is a key
  bool array_open_ = false;  // kValue right after '[': ']' allowed
  uint8_t depth_ = 0;
  uint8_t hex_left_ = 0;
  uint8_t ws_ = 0;          // whitespace bytes in a row
  // Inside a UTF-8 character of a string: continuation bytes still due, and the range the next
  // one must fall in (overlong forms, surrogates and code points past U+10FFFF are refused).
  uint8_t utf8_left_ = 0, utf8_lo_ = 0x80, utf8_hi_ = 0xBF;
  const char* literal_ = nullptr;  // the rest of true / false / null
  std::array<char, kMaxDepth> stack_{};  // '{' or '['
};

// response_format json_object: the text is one JSON object; `stops` (the tokens that end the
// generation) come once it is complete.
ConstraintFactory JsonObjectConstraint(std::shared_ptr<const TokenBytes> table,
                                       std::vector<int32_t> stops);
// guided_choice: the text is exactly one of `choices`.
ConstraintFactory ChoiceConstraint(std::shared_ptr<const TokenBytes> table,
                                   std::vector<int32_t> stops, std::vector<std::string> choices);

}  // namespace blockserve::runtime
