// The tokenizers' merge loops (heap-ordered, O(n log n)) against the plain rescanning loops they
// replaced, which follow llama2.c's run.c and GPT-2's encoder.py step by step: on the real
// vocabularies, over random texts and the repetitive ones where merge order matters most, the
// ids must be identical.
#include <cstring>
#include <limits>
#include <map>
#include <random>

#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "runtime/mapped_file.h"
#include "runtime/tokenizer/byte_level_bpe.h"
#include "runtime/tokenizer/sentencepiece_bpe.h"
#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::ReadFile;

// ---- references: the rescanning loops ----

struct SpVocab {
  std::vector<std::string> text;
  std::vector<float> score;
  std::map<std::string, int32_t> index;  // first occurrence wins
};

SpVocab ReadTok512(const std::string& path) {
  const std::string b = ReadFile(path);
  SpVocab v;
  size_t off = 4;
  for (int i = 0; i < 512; ++i) {
    float s;
    int32_t len;
    std::memcpy(&s, b.data() + off, 4);
    std::memcpy(&len, b.data() + off + 4, 4);
    v.text.push_back(b.substr(off + 8, len));
    v.score.push_back(s);
    v.index.emplace(v.text.back(), i);
    off += 8 + len;
  }
  return v;
}

// llama2.c: merge the best-scoring adjacent pair (leftmost among equals) until none merges.
std::vector<int32_t> ReferenceSpMerge(const SpVocab& v, std::vector<int32_t> toks) {
  while (true) {
    float best_score = -1e10f;
    int32_t best_id = -1;
    size_t best_idx = 0;
    for (size_t j = 0; j + 1 < toks.size(); ++j) {
      auto it = v.index.find(v.text[toks[j]] + v.text[toks[j + 1]]);
      if (it != v.index.end() && v.score[it->second] > best_score) {
        best_score = v.score[it->second];
        best_id = it->second;
        best_idx = j;
      }
    }
    if (best_id < 0) return toks;
    toks[best_idx] = best_id;
    toks.erase(toks.begin() + best_idx + 1);
  }
}

// GPT-2: merge every non-overlapping occurrence of the lowest-ranked pair, left to right.
std::vector<std::string> ReferenceGpt2Merge(const std::map<std::string, int32_t>& rank,
                                            std::vector<std::string> sym) {
  while (sym.size() > 1) {
    int32_t best = std::numeric_limits<int32_t>::max();
    size_t best_i = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank.find(sym[i] + " " + sym[i + 1]);
      if (it != rank.end() && it->second < best) {
        best = it->second;
        best_i = i;
      }
    }
    if (best == std::numeric_limits<int32_t>::max()) break;
    const std::string left = sym[best_i], right = sym[best_i + 1];
    std::vector<std::string> next;
    for (size_t i = 0; i < sym.size(); ++i) {
      if (i + 1 < sym.size() && sym[i] == left && sym[i + 1] == right) {
        next.push_back(left + right);
        ++i;
      } else {
        next.push_back(sym[i]);
      }
    }
    sym = std::move(next);
  }
  return sym;
}

// Texts where the merge order matters: runs of one letter (overlapping pairs), repeated words,
// random letters and spaces, random bytes.
std::vector<std::string> Texts(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::string> out = {"aaaaaaaaaaaaaaaaaaaaaaa", "ababababababab",
                                  "the the the the thethethe", "    x     y", "Once upon a time"};
  const std::string letters = "aeiounsthrldm ";
  for (int n = 0; n < 60; ++n) {
    std::string s;
    const int len = 1 + static_cast<int>(rng() % 300);
    for (int i = 0; i < len; ++i) s += letters[rng() % letters.size()];
    out.push_back(s);
  }
  for (int n = 0; n < 20; ++n) {
    std::string s;
    for (int i = 0; i < 64; ++i) s += static_cast<char>(rng() % 256);
    out.push_back(s);
  }
  return out;
}

TEST(TokenizerMerges, SentencePieceEqualsTheRescanningLoop) {
  BS_REQUIRE_MODELS(dir);
  const std::string path = dir + "/stories260K/tok512.bin";
  auto t = LoadLlama2cTokenizer(path, 512);
  ASSERT_THAT(t, IsOk());
  const SpVocab v = ReadTok512(path);
  for (const std::string& text : Texts(1)) {
    // The initial symbols: what Encode gives with no merges at all is not public, so build
    // them the same way (dummy space, one piece per character, byte fallback).
    std::vector<int32_t> toks = {v.index.at(" ")};
    for (size_t i = 0; i < text.size();) {
      size_t len = 1;
      while (i + len < text.size() && len < 4 &&
             (static_cast<uint8_t>(text[i + len]) & 0xC0) == 0x80) {
        ++len;
      }
      auto it = v.index.find(text.substr(i, len));
      if (it != v.index.end()) {
        toks.push_back(it->second);
      } else {
        for (size_t j = 0; j < len; ++j) toks.push_back(static_cast<uint8_t>(text[i + j]) + 3);
      }
      i += len;
    }
    std::vector<int32_t> want = {1};
    for (int32_t id : ReferenceSpMerge(v, toks)) want.push_back(id);
    EXPECT_EQ((*t)->Encode(text, true), want) << "text: '" << text << "'";
  }
}

TEST(TokenizerMerges, ByteLevelEqualsTheRescanningLoop) {
  BS_REQUIRE_MODELS(dir);
  const std::string path = dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf";
  auto file = MappedFile::Open(path);
  ASSERT_THAT(file, IsOk());
  auto g = blockzoo::ParseGguf((*file)->data(), (*file)->size(), path);
  ASSERT_THAT(g, IsOk());
  auto t = blockzoo::GgufTokenizer(*g);
  ASSERT_THAT(t, IsOk());
  const auto& tokens = g->Find("tokenizer.ggml.tokens")->strings;
  std::map<std::string, int32_t> vocab, rank;
  for (size_t i = 0; i < tokens.size(); ++i) vocab.emplace(tokens[i], static_cast<int32_t>(i));
  const auto& merges = g->Find("tokenizer.ggml.merges")->strings;
  for (size_t r = 0; r < merges.size(); ++r) rank.emplace(merges[r], static_cast<int32_t>(r));
  // Each byte's character: the one-byte token that decodes to it.
  std::map<uint8_t, std::string> byte_sym;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string d = (*t)->Decode(-1, static_cast<int32_t>(i));
    if (d.size() == 1 && !byte_sym.count(d[0])) byte_sym[static_cast<uint8_t>(d[0])] = tokens[i];
  }
  ASSERT_EQ(byte_sym.size(), 256u);
  for (const std::string& text : Texts(2)) {
    std::vector<int32_t> want;
    for (std::string_view word : Gpt2PreTokenize(text)) {
      std::vector<std::string> sym;
      for (unsigned char b : word) sym.push_back(byte_sym.at(b));
      for (const std::string& s : ReferenceGpt2Merge(rank, sym)) want.push_back(vocab.at(s));
    }
    EXPECT_EQ((*t)->Encode(text, false), want) << "text: '" << text << "'";
  }
}

// The bound a prompt is checked against before encoding: no token covers more bytes.
TEST(TokenizerMerges, MaxTokenBytesBoundsEveryToken) {
  BS_REQUIRE_MODELS(dir);
  auto sp = LoadLlama2cTokenizer(dir + "/stories260K/tok512.bin", 512);
  ASSERT_THAT(sp, IsOk());
  for (const std::string& text : Texts(3)) {
    const auto ids = (*sp)->Encode(text, false);
    EXPECT_GE(ids.size() * (*sp)->max_token_bytes(), text.size() + 1);  // + the dummy space
  }
  EXPECT_GE((*sp)->max_token_bytes(), 2u);
}

}  // namespace
}  // namespace blockserve::runtime
