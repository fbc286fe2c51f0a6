// GGUF: the real model and vocabulary files parse; truncations and hostile fields are clear
// errors naming the file.
#include <cstring>
#include <fstream>
#include <sstream>

#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "blockzoo/model_loader.h"
#include "tests/testing/test_util.h"

namespace blockserve::blockzoo {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::ReadFile;
using blockserve::testing::StatusIs;

absl::StatusOr<GgufFile> Parse(const std::string& b) {
  return ParseGguf(reinterpret_cast<const uint8_t*>(b.data()), b.size(), "x.gguf");
}

// A tiny GGUF writer for hostile inputs.
class Builder {
 public:
  Builder& U32(uint32_t v) { return Raw(&v, 4); }
  Builder& U64(uint64_t v) { return Raw(&v, 8); }
  Builder& Str(const std::string& s) {
    U64(s.size());
    bytes_ += s;
    return *this;
  }
  Builder& Raw(const void* p, size_t n) {
    bytes_.append(static_cast<const char*>(p), n);
    return *this;
  }
  Builder& Pad() {
    bytes_.append(64, '\0');
    return *this;
  }
  Builder& Header(uint64_t n_tensors, uint64_t n_kv, uint32_t version = 3) {
    bytes_ += "GGUF";
    return U32(version).U64(n_tensors).U64(n_kv);
  }
  std::string bytes_;
};

TEST(Gguf, ParsesTheRealFiles) {
  BS_REQUIRE_MODELS(dir);
  const std::string bytes = ReadFile(dir + "/stories260K-gguf/stories260K.gguf");
  auto f = Parse(bytes);
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(f->version, 3u);
  EXPECT_EQ(f->tensors.size(), 48u);
  EXPECT_EQ(*f->GetInt("llama.block_count"), 5);
  EXPECT_EQ(f->tensors[0].offset >= 14176u, true);
  auto w = GgufToWeights(*f, reinterpret_cast<const uint8_t*>(bytes.data()), nullptr);
  ASSERT_THAT(w, IsOk());
  EXPECT_EQ(w->config.n_kv_heads, 4);
  EXPECT_FALSE(w->config.tied_embeddings);  // output.weight is stored (a copy)
  EXPECT_EQ(w->tensors.at("layers.0.wk").ShapeString(), "[32, 64]");
  auto vocab = Parse(ReadFile(dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf"));
  ASSERT_THAT(vocab, IsOk());
  EXPECT_EQ(vocab->Find("tokenizer.ggml.merges")->strings.size(), 50000u);
  // A vocabulary-only GGUF is not a runnable model.
  EXPECT_THAT(LoadModelFile(dir + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf", std::nullopt),
              StatusIs(absl::StatusCode::kUnimplemented, "gpt2"));
}

TEST(Gguf, EveryTruncationIsAnError) {
  BS_REQUIRE_MODELS(dir);
  const std::string bytes = ReadFile(dir + "/stories260K-gguf/stories260K.gguf");
  for (size_t cut = 0; cut < bytes.size(); cut += cut < 20000 ? 61 : 4999) {
    ASSERT_THAT(Parse(bytes.substr(0, cut)), StatusIs(absl::StatusCode::kInvalidArgument, "x.gguf"))
        << cut;
  }
}

TEST(Gguf, HostileFieldsAreRejected) {
  EXPECT_THAT(Parse("GGUX"), StatusIs(absl::StatusCode::kInvalidArgument, "bad magic"));
  EXPECT_THAT(Parse(Builder().Header(0, 0, 1).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "version 1"));
  EXPECT_THAT(Parse(Builder().Header(0, uint64_t{1} << 60).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "metadata count"));
  EXPECT_THAT(Parse(Builder().Header(uint64_t{1} << 62, 0).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "tensor count"));
  // Key string longer than the file.
  EXPECT_THAT(Parse(Builder().Header(0, 1).U64(uint64_t{1} << 40).Pad().bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "string length"));
  // Array claiming 2^61 u32 elements.
  EXPECT_THAT(Parse(Builder().Header(0, 1).Str("k").U32(9).U32(4).U64(uint64_t{1} << 61).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "array count"));
  // Unknown value type.
  EXPECT_THAT(Parse(Builder().Header(0, 1).Str("k").U32(77).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "unknown value type"));
  // Tensor with 9 dims, with an absurd dim, and with data outside the file.
  EXPECT_THAT(Parse(Builder().Header(1, 0).Str("t").U32(9).Pad().bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "dimensions"));
  EXPECT_THAT(Parse(Builder().Header(1, 0).Str("t").U32(2).U64(uint64_t{1} << 40).U64(4).U32(0).U64(0).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "absurd dimension"));
  EXPECT_THAT(Parse(Builder().Header(1, 0).Str("t").U32(1).U64(16).U32(0).U64(0).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "outside the file"));
  EXPECT_THAT(Parse(Builder().Header(1, 0).Str("t").U32(1).U64(16).U32(0).U64(uint64_t(-32)).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "outside the file"));
  EXPECT_THAT(Parse(Builder().Header(1, 0).Str("t").U32(1).U64(16).U32(0).U64(3).bytes_),
              StatusIs(absl::StatusCode::kInvalidArgument, "not aligned"));
}

TEST(Gguf, UnsupportedContentIsNamed) {
  // A llama model whose tensor is quantised (type 2 = Q4_0).
  Builder b;
  b.Header(1, 1).Str("general.architecture").U32(8).Str("llama");
  b.Str("token_embd.weight").U32(2).U64(32).U64(4).U32(2).U64(0);
  b.bytes_.resize((b.bytes_.size() + 31) / 32 * 32 + 1024, '\0');
  auto f = Parse(b.bytes_);
  ASSERT_THAT(f, IsOk());
  auto w = GgufToWeights(*f, reinterpret_cast<const uint8_t*>(b.bytes_.data()), nullptr);
  EXPECT_THAT(w, StatusIs(absl::StatusCode::kNotFound, "llama.embedding_length"));
  // Missing keys are named; a wrong architecture too.
  Builder c;
  c.Header(0, 1).Str("general.architecture").U32(8).Str("mamba");
  auto g = Parse(c.bytes_);
  ASSERT_THAT(g, IsOk());
  EXPECT_THAT(GgufToWeights(*g, nullptr, nullptr),
              StatusIs(absl::StatusCode::kUnimplemented, "mamba"));
}

}  // namespace
}  // namespace blockserve::blockzoo
