#include "runtime/thread_pool.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

TEST(ThreadPool, RunsEveryTaskExactlyOnceManyTimes) {
  for (int threads : {1, 2, 4}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int round = 0; round < 2000; ++round) {
      const int n = 1 + round % 17;
      std::vector<std::atomic<int>> hits(n);
      pool.Run(n, [&](int i) { hits[i].fetch_add(1); });
      for (int i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "round " << round;
    }
  }
}

TEST(ThreadPool, ParallelForCoversTheRangeOnce) {
  ThreadPool pool(3);
  std::vector<int> seen(1001, 0);
  pool.ParallelFor(1001, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) seen[i]++;
  });
  for (int v : seen) EXPECT_EQ(v, 1);
  pool.ParallelFor(0, [&](int64_t, int64_t) { FAIL(); });
}

// Ranges hold at least min_per_part items; too few items for two ranges run on the caller.
TEST(ThreadPool, ParallelForKeepsRangesAtLeastTheMinimum) {
  ThreadPool pool(4);
  const std::thread::id caller = std::this_thread::get_id();
  for (int64_t n : {1, 15, 31, 32, 33, 100, 1000}) {
    std::vector<std::atomic<int>> seen(n);
    std::atomic<int> ranges{0};
    std::atomic<bool> off_caller{false};
    pool.ParallelFor(
        n,
        [&](int64_t b, int64_t e) {
          EXPECT_TRUE(e - b >= 16 || (b == 0 && e == n)) << n << ": [" << b << ", " << e << ")";
          if (std::this_thread::get_id() != caller) off_caller = true;
          ranges.fetch_add(1);
          for (int64_t i = b; i < e; ++i) seen[i].fetch_add(1);
        },
        /*min_per_part=*/16);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(seen[i].load(), 1) << n;
    EXPECT_EQ(ranges.load(), std::max<int64_t>(1, std::min<int64_t>(4, n / 16))) << n;
    if (n < 32) {
      EXPECT_FALSE(off_caller.load()) << n;
    }
  }
}

}  // namespace
}  // namespace blockserve::runtime
