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
  kv.KeyPage(1, 2)[3] = 7.0f;
  kv.SetLength(1, 3);
  EXPECT_EQ(kv.Length(1), 3);
  EXPECT_EQ(kv.KeyPages(1).size(), 2u);
  EXPECT_EQ(kv.KeyPages(1)[1][3], 7.0f);
  EXPECT_THAT(kv.Reserve(2, 4), StatusIs(absl::StatusCode::kResourceExhausted, "KV cache full"));
  kv.Release(1);
  EXPECT_EQ(kv.pages_used(), 1);  // seq 2 kept the page it got
  ASSERT_THAT(kv.Reserve(2, 4), IsOk());
  EXPECT_EQ(kv.pages_used(), 2);
  EXPECT_EQ(kv.pages_allocated(), 3);  // freed pages are reused, not reallocated
  EXPECT_EQ(kv.Length(99), 0);
  kv.Release(99);  // unknown sequence: no-op
}

}  // namespace
}  // namespace blockserve::runtime
