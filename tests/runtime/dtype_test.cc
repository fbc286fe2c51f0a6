#include "runtime/dtype.h"

#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

using blockserve::testing::StatusIs;

TEST(DType, ParsesTheNamesDTypeNameGivesOnlyWhenAllowed) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16}) {
    auto parsed = ParseDType(DTypeName(t), {DType::kF32, DType::kF16, DType::kBF16});
    ASSERT_TRUE(parsed.ok()) << DTypeName(t);
    EXPECT_EQ(*parsed, t);
  }
  EXPECT_THAT(ParseDType("f16", {DType::kF32, DType::kBF16}),
              StatusIs(absl::StatusCode::kInvalidArgument, "must be f32 or bf16, got 'f16'"));
  EXPECT_THAT(ParseDType("F32", {DType::kF32, DType::kF16, DType::kBF16}),
              StatusIs(absl::StatusCode::kInvalidArgument, "must be f32, f16 or bf16, got 'F32'"));
  EXPECT_THAT(ParseDType("", {DType::kF32}),
              StatusIs(absl::StatusCode::kInvalidArgument, "must be f32, got ''"));
}

}  // namespace
}  // namespace blockserve::runtime
