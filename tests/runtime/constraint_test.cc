#include "runtime/constraint.h"

#include <cmath>
#include <random>
#include <regex>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
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
      {"{\"a\":\"\xc3\"}", 7}, {"{\"a\":\"\xc0\xaf\"}", 6}, {"{\"a\":\"\xed\xa0\x80\"}", 7},
      {"{\"a\":\"\xf4\x90\x80\x80\"}", 7}, {"{\"a\":\"\x80\"}", 6},
  };
  for (const auto& [text, at] : bad) EXPECT_EQ(Recognize(text), at) << text;
  std::string deep = "{\"a\":";
  for (int i = 0; i < JsonObjectRecognizer::kMaxDepth - 1; ++i) deep += "[";
  EXPECT_EQ(Recognize(deep + "["), static_cast<int>(deep.size()));  // nesting is bounded
}

// Random JSON values (objects, arrays, strings with escapes, numbers, literals) for the
// differential test below.
nlohmann::json RandomValue(std::mt19937& rng, int depth) {
  std::uniform_int_distribution<int> kind(0, depth > 3 ? 4 : 6), small(0, 3);
  switch (kind(rng)) {
    case 0: return nullptr;
    case 1: return small(rng) % 2 == 0;
    case 2: return std::uniform_int_distribution<int>(-1000, 1000)(rng);
    case 3: return std::uniform_real_distribution<double>(-1e6, 1e6)(rng);
    case 4: {
      static const char* const kStrings[] = {"", "a", "q\"uote", "tab\tnew\nline", "\u00e9t\u00e9", "back\\slash", "/"};
      return kStrings[std::uniform_int_distribution<int>(0, 6)(rng)];
    }
    case 5: {
      nlohmann::json a = nlohmann::json::array();
      for (int i = small(rng); i > 0; --i) a.push_back(RandomValue(rng, depth + 1));
      return a;
    }
    default: {
      nlohmann::json o = nlohmann::json::object();
      for (int i = small(rng); i > 0; --i) o["k" + std::to_string(small(rng))] = RandomValue(rng, depth + 1);
      return o;
    }
  }
}

// The recogniser against nlohmann's parser on random objects and on one-byte mutations of them
// (deleted, inserted or replaced by a JSON-significant byte): complete exactly when the text
// parses as one object (texts whose whitespace the recogniser refuses by design are left out:
// leading, trailing, or two bytes in a row), and every prefix of a valid object accepted.
TEST(JsonObjectRecognizer, AgreesWithAJsonParserOnRandomAndMutatedObjects) {
  std::mt19937 rng(2024);
  const std::string alphabet = "{}[]\":,\\ -+.0123456789eEtrufalsn\n\t";
  std::uniform_int_distribution<int> op(0, 2), pick(0, static_cast<int>(alphabet.size()) - 1);
  int complete = 0, compared = 0;
  for (int i = 0; i < 3000; ++i) {
    nlohmann::json o = nlohmann::json::object();
    o["x"] = RandomValue(rng, 0);
    if (i % 3 == 0) o["y"] = RandomValue(rng, 0);
    const std::string doc = i % 2 ? o.dump() : o.dump(-1, ' ', false);
    for (size_t n = 0; n < doc.size(); ++n) {
      ASSERT_EQ(Recognize(doc.substr(0, n)), static_cast<int>(n)) << doc.substr(0, n);
    }
    ASSERT_EQ(Recognize(doc), -1) << doc;
    for (int m = 0; m < 20; ++m) {
      std::string t = doc;
      const size_t at = std::uniform_int_distribution<size_t>(0, t.size() - 1)(rng);
      switch (op(rng)) {
        case 0: t.erase(at, 1); break;
        case 1: t.insert(at, 1, alphabet[pick(rng)]); break;
        default: t[at] = alphabet[pick(rng)]; break;
      }
      auto ws = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; };
      bool doubled = false;
      for (size_t k = 0; k + 1 < t.size(); ++k) doubled |= ws(t[k]) && ws(t[k + 1]);
      if (t.empty() || ws(t.front()) || ws(t.back()) || doubled) continue;
      // nlohmann refuses numbers beyond a double's range (1e400); JSON's grammar does not.
      static const std::regex kHugeExponent("[eE][+-]?[0-9]{3}");
      if (std::regex_search(t, kHugeExponent)) continue;
      const bool parses = nlohmann::json::accept(t) && nlohmann::json::parse(t).is_object();
      ++compared;
      complete += parses;
      EXPECT_EQ(Recognize(t) == -1, parses) << t;
    }
  }
  EXPECT_GT(compared, 30000);
  EXPECT_GT(complete, 1000);  // the mutations make valid objects too, not only broken ones
}

// A toy vocabulary: the tokens' bytes, then the stop token (kStop).
constexpr int32_t kStop = 9;
std::shared_ptr<const TokenBytes> Toy(std::vector<std::string> bytes) {
  auto t = std::make_shared<TokenBytes>();
  t->bytes = std::move(bytes);
  t->bytes.push_back("</s>");
  for (const std::string& b : t->bytes) {
    t->plain.push_back(b.find_first_of("\"\\") == std::string::npos);  // toy bytes are ASCII
  }
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
