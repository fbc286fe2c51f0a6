#include "runtime/thread_pool.h"

#include <atomic>
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

}  // namespace
}  // namespace blockserve::runtime
