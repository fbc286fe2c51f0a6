// llama2.c checkpoints: the real model loads; truncated, oversized and hostile files are clear
// errors naming the file, never crashes.
#include <cstring>
#include <fstream>
#include <sstream>

#include "blockzoo/formats/llama2c.h"
#include "runtime/chain.h"
#include "tests/testing/test_util.h"

namespace blockserve::blockzoo {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::ReadFile;
using blockserve::testing::StatusIs;

absl::StatusOr<runtime::ModelWeights> Parse(const std::string& bytes) {
  return ParseLlama2cBytes(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(),
                           "model.bin", nullptr);
}

TEST(Llama2c, LoadsStories260K) {
  BS_REQUIRE_MODELS(dir);
  auto file = runtime::MappedFile::Open(dir + "/stories260K/stories260K.bin");
  ASSERT_THAT(file, IsOk());
  auto w = ParseLlama2c(*file);
  ASSERT_THAT(w, IsOk());
  const auto& c = w->config;
  EXPECT_EQ(c.dim, 64);
  EXPECT_EQ(c.hidden_dim, 172);
  EXPECT_EQ(c.n_layers, 5);
  EXPECT_EQ(c.n_heads, 8);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_TRUE(c.tied_embeddings);
  EXPECT_EQ(w->tensors.size(), 2u + 9u * 5u);
  EXPECT_EQ(w->tensors.at("layers.4.w2").ShapeString(), "[64, 172]");
}

TEST(Llama2c, EveryTruncationIsAnErrorNamingTheFile) {
  BS_REQUIRE_MODELS(dir);
  const std::string bytes = ReadFile(dir + "/stories260K/stories260K.bin");
  for (size_t cut = 0; cut < bytes.size(); cut += 997) {
    auto w = Parse(bytes.substr(0, cut));
    ASSERT_THAT(w, StatusIs(absl::StatusCode::kInvalidArgument, "model.bin")) << cut;
  }
  EXPECT_THAT(Parse(bytes + "junk"), StatusIs(absl::StatusCode::kInvalidArgument, "trailing bytes"));
}

TEST(Llama2c, HostileHeadersAreRejected) {
  struct Case {
    int32_t h[7];
    const char* message;
  };
  const Case cases[] = {
      {{-64, 172, 5, 8, 4, 512, 512}, "dim"},
      {{64, 172, 5, 7, 4, 512, 512}, "n_heads"},
      {{64, 172, 5, 8, 3, 512, 512}, "n_kv_heads"},
      {{64, 172, 5, 8, 0, 512, 512}, "n_kv_heads"},
      {{64, 172, 1 << 30, 8, 4, 512, 512}, "n_layers"},
      {{1 << 20, 1 << 20, 4000, 8, 4, 1 << 24, 512}, "truncated"},  // absurd sizes, no overflow
      {{64, 172, 5, 8, 4, INT32_MIN, 512}, "vocab"},
      {{64, 172, 5, 8, 4, 512, 0}, "seq_len"},
  };
  for (const Case& c : cases) {
    std::string bytes(reinterpret_cast<const char*>(c.h), sizeof(c.h));
    bytes.resize(4096, '\0');
    EXPECT_THAT(Parse(bytes), StatusIs(absl::StatusCode::kInvalidArgument, c.message)) << c.message;
  }
}

TEST(Llama2c, ExportVersion1GivesTheSameWeights) {
  BS_REQUIRE_MODELS(dir);
  const std::string legacy = ReadFile(dir + "/stories260K/stories260K.bin");
  auto a = Parse(legacy);
  ASSERT_THAT(a, IsOk());
  // Re-export as llama2.c version 1: 256-byte header, norms first, no freq_cis.
  std::string v1(256, '\0');
  const uint32_t magic = 0x616b3432;
  const int32_t version = 1;
  std::memcpy(v1.data(), &magic, 4);
  std::memcpy(v1.data() + 4, &version, 4);
  std::memcpy(v1.data() + 8, legacy.data(), 28);
  v1[8 + 28] = 1;  // shared classifier
  auto put = [&](const std::string& name) {
    const auto& t = a->tensors.at(name);
    v1.append(static_cast<const char*>(t.raw()), t.nbytes());
  };
  auto put_layers = [&](const char* n) {
    for (int l = 0; l < 5; ++l) put(runtime::LayerTensor(l, n));
  };
  put_layers("attention_norm");
  put_layers("ffn_norm");
  put("norm");
  put("tok_embeddings");
  for (const char* n : {"wq", "wk", "wv", "wo", "w1", "w2", "w3"}) put_layers(n);
  auto b = Parse(v1);
  ASSERT_THAT(b, IsOk());
  ASSERT_EQ(a->tensors.size(), b->tensors.size());
  for (const auto& [name, t] : a->tensors) {
    ASSERT_EQ(0, std::memcmp(t.raw(), b->tensors.at(name).raw(), t.nbytes())) << name;
  }
}

}  // namespace
}  // namespace blockserve::blockzoo
