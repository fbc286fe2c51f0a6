#include "runtime/kv_cache.h"

#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::StatusIs;

TEST(KvCache, PagesAreReservedReusedAndBounded) {
  KvCache kv(/*kv_dim=*/4, /*page_size=*/2, /*max_pages=*/3);
  ASSERT_THAT(kv.Reserve(1, 3), IsOk());  // 2 pages
  EXPECT_EQ(kv.pages_used(), 2);
  static_cast<float*>(kv.KeyPage(1, 2))[3] = 7.0f;
  kv.SetLength(1, 3);
  EXPECT_EQ(kv.Length(1), 3);
  EXPECT_EQ(kv.KeyPages(1).size(), 2u);
  EXPECT_EQ(static_cast<const float*>(kv.KeyPages(1)[1])[3], 7.0f);
  EXPECT_THAT(kv.Reserve(2, 4), StatusIs(absl::StatusCode::kResourceExhausted, "KV cache full"));
  kv.Release(1);
  EXPECT_EQ(kv.pages_used(), 1);  // seq 2 kept the page it got
  ASSERT_THAT(kv.Reserve(2, 4), IsOk());
  EXPECT_EQ(kv.pages_used(), 2);
  EXPECT_EQ(kv.pages_allocated(), 3);  // freed pages are reused, not reallocated
  EXPECT_EQ(kv.Length(99), 0);
  kv.Release(99);  // unknown sequence: no-op
}

TEST(KvCache, Bf16PagesAreHalfTheBytes) {
  KvCache f32(/*kv_dim=*/64, /*page_size=*/16, /*max_pages=*/0);
  KvCache bf16(/*kv_dim=*/64, /*page_size=*/16, /*max_pages=*/0, /*elem_bytes=*/2);
  EXPECT_EQ(f32.page_bytes(), 2u * 16 * 64 * 4);
  EXPECT_EQ(bf16.page_bytes(), f32.page_bytes() / 2);
  ASSERT_THAT(bf16.Reserve(1, 17), IsOk());
  const auto* k0 = static_cast<const uint8_t*>(bf16.KeyPages(1)[0]);
  // K then V within a page.
  EXPECT_EQ(static_cast<const uint8_t*>(bf16.ValuePages(1)[0]) - k0, 16 * 64 * 2);
}

}  // namespace
}  // namespace blockserve::runtime
