#include "runtime/constraint.h"

#include <cmath>
#include <string>
#include <vector>

#include "runtime/sampler.h"
#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

// Feeds `text` to a fresh recogniser: -1 if every byte is accepted and the object is complete,
// else the index of the first byte refused (text.size() when all are accepted but it is not
// complete).
int Recognize(const std::string& text) {
  JsonObjectRecognizer r;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!r.Feed(static_cast<unsigned char>(text[i]))) return static_cast<int>(i);
  }
  return r.complete() ? -1 : static_cast<int>(text.size());
}

TEST(JsonObjectRecognizer, AcceptsObjectsAndEveryPrefixOfThem) {
  for (const std::string doc :
       {R"({})", R"({"a":1})", R"({ "a": [1, 2.5e-3, -0, 1E+9, true, false, null], "b": {"c": {}}})",
        R"({"s":"q\"\\\/\b\f\n\r\t\u00e9 ok","e":[],"n":[[]]})", "{\"a\":\n\"\xc3\xa9\"}"}) {
    EXPECT_EQ(Recognize(doc), -1) << doc;
    for (size_t n = 0; n < doc.size(); ++n) {
      EXPECT_EQ(Recognize(doc.substr(0, n)), static_cast<int>(n)) << doc.substr(0, n);
    }
  }
}

TEST(JsonObjectRecognizer, RefusesWhatNoObjectCanContinue) {
  const std::vector<std::pair<std::string, int>> bad = {
      {"[1]", 0},           {" {}", 0},           {R"({"a" 1})", 5},    {R"({"a":01})", 6},
      {"{,}", 1},           {R"({"a":1,})", 7},   {R"({"a":tru e})", 8}, {"{\"a\":\"\x01\"}", 6},
      {R"({"a":1}})", 7},   {"{  }", 2},          {R"({"a":[1,]})", 8}, {R"({"a":-})", 6},
      {R"({"a":1.})", 7},   {R"({"a":"\x"})", 7}, {R"({"a":"\u12g4"})", 10}, {R"({1:2})", 1},
      {R"({"a":1]})", 6},   {R"({"a":[1}})", 7},  {"{}{}", 2},
  };
  for (const auto& [text, at] : bad) EXPECT_EQ(Recognize(text), at) << text;
  std::string deep = "{\"a\":";
  for (int i = 0; i < JsonObjectRecognizer::kMaxDepth - 1; ++i) deep += "[";
  EXPECT_EQ(Recognize(deep + "["), static_cast<int>(deep.size()));  // nesting is bounded
}

// A toy vocabulary: the tokens' bytes, then the stop token (kStop).
constexpr int32_t kStop = 9;
std::shared_ptr<const TokenBytes> Toy(std::vector<std::string> bytes) {
  auto t = std::make_shared<TokenBytes>();
  t->bytes = std::move(bytes);
  t->bytes.push_back("</s>");
  return t;
}

// The tokens `c` allows next.
std::vector<int> Allowed(const TokenConstraint& c, int vocab) {
  std::vector<float> logits(vocab, 1.0f);
  c.Mask(logits.data(), vocab);
  std::vector<int> out;
  for (int i = 0; i < vocab; ++i) {
    if (std::isfinite(logits[i])) out.push_back(i);
  }
  return out;
}

TEST(JsonObjectConstraint, MasksTokensByTheirBytesAndStopsOnlyWhenComplete) {
  //                      0    1     2      3    4    5    6    7     8
  const auto t = Toy({"{", "}", "\"a\"", ":", "1", " ", "x", "\"", ""});
  const int vocab = 10;  // 9 is the stop token
  auto c = JsonObjectConstraint(t, {kStop})();
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{0}));
  c->Accept(0);  // {
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{1, 2, 5, 7}));
  c->Accept(2);  // "a"
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{3, 5}));
  c->Accept(3);  // :
  c->Accept(4);  // 1
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{1, 4, 5}));  // more digits, } or a space
  c->Accept(1);  // }
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{9}));  // complete: only the stop token
}

TEST(ChoiceConstraint, AllowsExactlyThePrefixesOfTheChoices) {
  //                        0    1     2    3    4    5    6    7     8
  const auto t = Toy({"y", "es", "e", "s", "!", "n", "o", "no", "x"});
  const int vocab = 10;
  auto c = ChoiceConstraint(t, {kStop}, {"yes", "no", "yes!"})();
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{0, 5, 7}));
  c->Accept(0);
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{1, 2}));
  c->Accept(1);
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{4, 9}));  // "yes" is done, "yes!" goes on
  c->Accept(4);
  EXPECT_EQ(Allowed(*c, vocab), (std::vector<int>{9}));
  // A vocabulary that cannot spell any choice: the stop token, not garbage.
  auto none = ChoiceConstraint(t, {kStop}, {"zzz"})();
  EXPECT_EQ(Allowed(*none, vocab), (std::vector<int>{9}));
}

// Through the sampler: whatever the logits favour, greedy or sampled, the text is a choice.
TEST(ChoiceConstraint, SamplerOutputIsAlwaysAChoice) {
  const auto t = Toy({"y", "es", "e", "s", "!", "n", "o", "no", "x"});
  for (float temperature : {0.0f, 1.0f}) {
    for (uint64_t seed = 1; seed <= 20; ++seed) {
      SamplingParams p;
      p.temperature = temperature;
      p.seed = seed;
      p.constraint = ChoiceConstraint(t, {kStop}, {"yes", "no", "yes!"});
      Sampler s(p);
      std::string text;
      for (int step = 0; step < 10; ++step) {
        std::vector<float> logits = {0.1f, 0.2f, 0.3f, 0.1f, 0.5f, 0.2f, 0.1f, 0.3f, 9.0f, -1.0f};
        const int token = s.Sample(logits.data(), 10);
        if (token == 9) break;
        text += t->bytes[token];
      }
      EXPECT_TRUE(text == "yes" || text == "no" || text == "yes!") << text;
    }
  }
}

}  // namespace
}  // namespace blockserve::runtime
