// safetensors reading and writing: round trip, and every malformed header is an error naming the
// file and the problem.
#include "blockzoo/formats/safetensors.h"

#include <cstring>

#include "tests/testing/test_util.h"

namespace blockserve::blockzoo {
namespace {

using ::testing::HasSubstr;
using runtime::DType;
using runtime::Tensor;
using testing::IsOk;

std::string WithHeader(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  uint64_t n = json.size();
  std::memcpy(out.data(), &n, 8);
  return out + json + data;
}

absl::StatusOr<SafetensorsFile> Parse(const std::string& bytes) {
  return ParseSafetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), nullptr,
                          "x.safetensors");
}

TEST(Safetensors, RoundTripsTensorsAndMetadata) {
  Tensor a = Tensor::Zeros(DType::kF32, {2, 3});
  for (int i = 0; i < 6; ++i) a.mutable_data<float>()[i] = 0.5f * i;
  Tensor b = Tensor::Zeros(DType::kF16, {5});
  for (int i = 0; i < 5; ++i) b.mutable_data<uint16_t>()[i] = static_cast<uint16_t>(i + 1);
  std::map<std::string, const Tensor*> m = {{"a", &a}, {"b", &b}};
  std::string bytes = SafetensorsHeader(m, {{"k", "v"}});
  EXPECT_EQ(bytes.size() % 64, 0u);  // data starts aligned
  bytes.append(static_cast<const char*>(a.raw()), a.nbytes());
  bytes.append(static_cast<const char*>(b.raw()), b.nbytes());
  auto f = Parse(bytes);
  ASSERT_THAT(f, IsOk());
  EXPECT_EQ(f->metadata.at("k"), "v");
  ASSERT_EQ(f->tensors.size(), 2u);
  EXPECT_EQ(f->tensors.at("a").shape(), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(f->tensors.at("a").data<float>()[5], 2.5f);
  EXPECT_EQ(f->tensors.at("b").dtype(), DType::kF16);
  EXPECT_EQ(f->tensors.at("b").data<uint16_t>()[4], 5);
}

TEST(Safetensors, MalformedHeadersAreClearErrors) {
  const std::string data(16, '\0');
  struct Case {
    std::string bytes, expect;
  };
  std::string huge(8, '\xff');
  const std::vector<Case> cases = {
      {"abc", "too short"},
      {huge + "{}", "exceeds the file"},
      {WithHeader("[1,2]", data), "not a JSON object"},
      {WithHeader("{\"t\":", data), "not a JSON object"},
      {WithHeader(R"({"t":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})", data),
       "unsupported dtype"},
      {WithHeader(R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}})", data),
       "16 bytes for shape of 2"},
      {WithHeader(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", data),
       "outside the 16 data bytes"},
      {WithHeader(R"({"t":{"dtype":"F32","shape":[4],"data_offsets":[18446744073709551615,15]}})",
                  data),
       "outside"},
      {WithHeader(R"({"t":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,16]}})",
                  data),
       "too large"},
      {WithHeader(R"({"t":{"dtype":"F32","shape":[-1],"data_offsets":[0,16]}})", data),
       "not a count"},
      {WithHeader(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},)"
                  R"("b":{"dtype":"F32","shape":[3],"data_offsets":[4,16]}})",
                  data),
       "overlap"},
      {WithHeader(R"({"__metadata__":{"k":1}})", data), "__metadata__.k"},
  };
  for (const Case& c : cases) {
    auto f = Parse(c.bytes);
    ASSERT_FALSE(f.ok()) << c.expect;
    EXPECT_THAT(std::string(f.status().message()), HasSubstr("x.safetensors")) << c.expect;
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(c.expect));
  }
}

}  // namespace
}  // namespace blockserve::blockzoo
