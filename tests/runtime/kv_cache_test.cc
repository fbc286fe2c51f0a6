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
  EXPECT_EQ(kv.PageIds(1).size(), 2u);
  EXPECT_EQ(static_cast<const float*>(kv.Table(1).k(1))[3], 7.0f);
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
  const auto* k0 = static_cast<const uint8_t*>(bf16.Table(1).k(0));
  // K then V within a page.
  EXPECT_EQ(static_cast<const uint8_t*>(bf16.Table(1).v(0)) - k0, 16 * 64 * 2);
}

// Page tables are integer ids into one arena: when the arena grows (doubling), what the pages
// hold moves with them and the ids stay.
TEST(KvCache, PageIdsSurviveTheArenaGrowing) {
  KvCache kv(/*kv_dim=*/4, /*page_size=*/2, /*max_pages=*/0);
  ASSERT_THAT(kv.Reserve(1, 2), IsOk());
  static_cast<float*>(kv.KeyPage(1, 0))[5] = 3.5f;
  static_cast<float*>(kv.ValuePage(1, 0))[1] = -2.0f;
  const std::vector<int32_t> ids = kv.PageIds(1);
  ASSERT_THAT(kv.Reserve(2, 2 * 1000), IsOk());  // 1000 pages: past the first arena
  EXPECT_EQ(kv.PageIds(1), ids);
  EXPECT_EQ(static_cast<const float*>(kv.Table(1).k(0))[5], 3.5f);
  EXPECT_EQ(static_cast<const float*>(kv.Table(1).v(0))[1], -2.0f);
  kv.SetLength(2, 2000);
  ASSERT_THAT(kv.Fork(2, 3, 4), IsOk());  // forks share ids
  EXPECT_EQ(kv.PageIds(3)[1], kv.PageIds(2)[1]);
  EXPECT_EQ(kv.pages_used(), 1001);
}

}  // namespace
}  // namespace blockserve::runtime
