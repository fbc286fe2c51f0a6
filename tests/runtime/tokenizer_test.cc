// Tokenizers on real vocabularies: llama2.c tok512.bin and the GGUF copy of it (SentencePiece
// BPE), and GPT-2 byte-level BPE checked against llama.cpp's test vectors, loaded both from the
// GGUF and from a tokenizer.json written from it.
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_split.h"
#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "runtime/mapped_file.h"
#include "runtime/tokenizer/byte_level_bpe.h"
#include "runtime/tokenizer/sentencepiece_bpe.h"
#include "runtime/tokenizer/unicode.h"
#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::ReadFile;
using blockserve::testing::StatusIs;

std::unique_ptr<Tokenizer> GgufTok(const std::string& path) {
  auto file = MappedFile::Open(path);
  EXPECT_THAT(file, IsOk());
  auto g = blockzoo::ParseGguf((*file)->data(), (*file)->size(), path);
  EXPECT_THAT(g, IsOk());
  auto t = blockzoo::GgufTokenizer(*g);
  EXPECT_THAT(t, IsOk());
  return std::move(*t);
}

TEST(SentencePieceBpe, Tok512MatchesLlama2c) {
  BS_REQUIRE_MODELS(dir);
  auto bin = LoadLlama2cTokenizer(dir + "/stories260K/tok512.bin", 512);
  ASSERT_THAT(bin, IsOk());
  auto gguf = GgufTok(dir + "/stories260K-gguf/stories260K.gguf");
  for (const Tokenizer* t : std::vector<const Tokenizer*>{bin->get(), gguf.get()}) {
    EXPECT_EQ(t->Encode("Once upon a time", true), (std::vector<int32_t>{1, 403, 407, 261, 378}));
    EXPECT_EQ(t->Encode("Tom and his dog", true),
              (std::vector<int32_t>{1, 274, 287, 269, 345, 400, 428}));
    EXPECT_EQ(t->Encode("", true), (std::vector<int32_t>{1}));
    EXPECT_EQ(t->bos_id(), 1);
    EXPECT_EQ(t->eos_id(), 2);
    // Characters outside the vocabulary fall back to byte tokens (id = byte + 3) and decode back.
    const std::string odd = "caf\xC3\xA9 \xF0\x9F\xA6\x99!\n";
    const auto ids = t->Encode(odd, true);
    ASSERT_EQ(ids[0], 1);
    // The dummy prefix space is dropped again after BOS.
    EXPECT_EQ(t->DecodeAll(std::vector<int32_t>(ids.begin() + 1, ids.end()), ids[0]), odd);
  }
}

TEST(SentencePieceBpe, TruncatedFileIsAnErrorNamingIt) {
  BS_REQUIRE_MODELS(dir);
  const std::string bytes = ReadFile(dir + "/stories260K/tok512.bin");
  for (size_t cut : {size_t{0}, size_t{3}, size_t{4}, size_t{100}, bytes.size() - 1}) {
    auto t = ParseLlama2cTokenizer(reinterpret_cast<const uint8_t*>(bytes.data()), cut, 512,
                                   "tok512.bin");
    EXPECT_THAT(t, StatusIs(absl::StatusCode::kInvalidArgument, "tok512.bin")) << cut;
  }
  EXPECT_THAT(LoadLlama2cTokenizer("/nonexistent/tok.bin", 512),
              StatusIs(absl::StatusCode::kNotFound, "/nonexistent/tok.bin"));
}

struct Gpt2Case {
  std::string text;
  std::vector<int32_t> ids;
};

std::vector<Gpt2Case> Gpt2Vectors(const std::string& dir) {
  const std::string inp = ReadFile(dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf.inp");
  const std::string out = ReadFile(dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf.out");
  std::vector<std::string> texts = absl::StrSplit(inp, "\n__ggml_vocab_test__\n");
  std::vector<std::string> lines = absl::StrSplit(out, '\n');
  std::vector<Gpt2Case> cases;
  for (size_t i = 0; i + 1 < texts.size() && i < lines.size(); ++i) {
    Gpt2Case c{texts[i], {}};
    for (absl::string_view tok : absl::StrSplit(lines[i], ' ', absl::SkipEmpty())) {
      c.ids.push_back(std::stoi(std::string(tok)));
    }
    cases.push_back(std::move(c));
  }
  return cases;
}

void ExpectGpt2Vectors(const Tokenizer& t, const std::vector<Gpt2Case>& cases) {
  for (const auto& c : cases) {
    EXPECT_EQ(t.Encode(c.text, /*add_bos=*/false), c.ids) << "text: '" << c.text << "'";
    EXPECT_EQ(t.DecodeAll(c.ids), c.text);
  }
}

TEST(ByteLevelBpe, Gpt2VectorsFromGguf) {
  BS_REQUIRE_MODELS(dir);
  const auto cases = Gpt2Vectors(dir);
  ASSERT_GE(cases.size(), 40u);
  auto t = GgufTok(dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf");
  EXPECT_EQ(t->vocab_size(), 50257);
  ExpectGpt2Vectors(*t, cases);
}

TEST(ByteLevelBpe, Gpt2VectorsFromTokenizerJson) {
  BS_REQUIRE_MODELS(dir);
  // Write the GGUF vocabulary as a Hugging Face tokenizer.json and load that.
  const std::string path = dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf";
  auto file = MappedFile::Open(path);
  ASSERT_THAT(file, IsOk());
  auto g = blockzoo::ParseGguf((*file)->data(), (*file)->size(), path);
  ASSERT_THAT(g, IsOk());
  nlohmann::json vocab = nlohmann::json::object();
  const auto& tokens = g->Find("tokenizer.ggml.tokens")->strings;
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = i;
  nlohmann::json merges = nlohmann::json::array();
  for (const auto& m : g->Find("tokenizer.ggml.merges")->strings) {
    const auto sp = m.find(' ', 1);
    merges.push_back({m.substr(0, sp), m.substr(sp + 1)});  // the newer [a, b] form
  }
  nlohmann::json root = {
      {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}},
      {"added_tokens", {{{"id", 50256}, {"content", "<|endoftext|>"}, {"special", true}}}}};
  auto t = ParseTokenizerJson(root.dump(), "tokenizer.json");
  ASSERT_THAT(t, IsOk());
  EXPECT_EQ((*t)->eos_id(), 50256);
  ExpectGpt2Vectors(**t, Gpt2Vectors(dir));
}

TEST(ByteLevelBpe, MalformedTokenizerJsonIsAnError) {
  EXPECT_THAT(ParseTokenizerJson("{not json", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "t.json"));
  EXPECT_THAT(ParseTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": "x"}}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "model.vocab['a']"));
  EXPECT_THAT(ParseTokenizerJson(R"({"model": {"type": "BPE", "vocab": {"a": -4}}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "out of range"));
  EXPECT_THAT(ParseTokenizerJson(R"({"model": {"type": "WordPiece", "vocab": {}}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "not BPE"));
  // Llama-style tokenizer.json files are SentencePiece BPE, not byte-level: refused, not misread.
  EXPECT_THAT(ParseTokenizerJson(
                  R"({"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}}})", "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "tokenizer.model"));
  EXPECT_THAT(ParseTokenizerJson(R"({"pre_tokenizer": {"type": "Metaspace"},
                                     "model": {"type": "BPE", "vocab": {"a": 0}}})",
                                 "t.json"),
              StatusIs(absl::StatusCode::kInvalidArgument, "SentencePiece-style"));
}

TEST(Gpt2PreTokenize, SplitsLikeTheRegex) {
  using V = std::vector<std::string_view>;
  EXPECT_EQ(Gpt2PreTokenize("Hello world"), (V{"Hello", " world"}));
  EXPECT_EQ(Gpt2PreTokenize("I'll  go\n\n x2 !!"), (V{"I", "'ll", " ", " go", "\n\n", " x", "2", " !!"}));
  EXPECT_EQ(Gpt2PreTokenize("   "), (V{"   "}));
  EXPECT_EQ(Gpt2PreTokenize("a\t\tb"), (V{"a", "\t", "\t", "b"}));
}

TEST(Unicode, CategoriesAndInvalidUtf8) {
  EXPECT_TRUE(unicode::IsLetter(0x4E2D));   // 中
  EXPECT_TRUE(unicode::IsNumber(0x0663));   // Arabic-Indic three
  EXPECT_FALSE(unicode::IsLetter(0x1F999)); // emoji
  EXPECT_TRUE(unicode::IsWhitespace(0x3000));
  EXPECT_FALSE(unicode::IsValidUtf8("\xC3("));
  EXPECT_FALSE(unicode::IsValidUtf8("\xED\xA0\x80"));  // surrogate
  EXPECT_TRUE(unicode::IsValidUtf8("h\xC3\xA9llo"));
  const auto chars = unicode::DecodeUtf8("a\xFF\xE2\x82");
  ASSERT_EQ(chars.size(), 4u);  // invalid bytes decode one at a time
  EXPECT_EQ(chars[1].cp, 0xFFFDu);
}

}  // namespace
}  // namespace blockserve::runtime
