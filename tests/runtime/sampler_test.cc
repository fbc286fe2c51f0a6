#include "runtime/sampler.h"

#include <map>

#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

using blockserve::testing::StatusIs;

TEST(Sampler, GreedyPicksFirstMaximum) {
  std::vector<float> logits = {0.1f, 3.0f, -2.0f, 3.0f};
  Sampler s({});
  EXPECT_EQ(s.Sample(logits.data(), 4), 1);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDiffers) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 133742;
  auto run = [&](uint64_t seed) {
    p.seed = seed;
    Sampler s(p);
    std::vector<int> out;
    for (int i = 0; i < 50; ++i) {
      std::vector<float> logits(10, 0.0f);
      out.push_back(s.Sample(logits.data(), 10));
    }
    return out;
  };
  EXPECT_EQ(run(5), run(5));
  EXPECT_NE(run(5), run(6));
}

TEST(Sampler, TopKAndTopPRestrictTheCandidates) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.top_k = 2;
  Sampler k(p);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> logits = {1.0f, 5.0f, 0.0f, 4.9f};
    const int t = k.Sample(logits.data(), 4);
    ASSERT_TRUE(t == 1 || t == 3) << t;
  }
  p.top_k = 0;
  p.top_p = 0.5f;  // token 0 alone holds > 50% of the mass
  Sampler tp(p);
  for (int i = 0; i < 200; ++i) {
    std::vector<float> logits = {3.0f, 1.0f, 1.0f, 0.0f};
    ASSERT_EQ(tp.Sample(logits.data(), 4), 0);
  }
}

TEST(Sampler, FollowsTheDistribution) {
  SamplingParams p;
  p.temperature = 1.0f;
  p.seed = 1;
  Sampler s(p);
  std::map<int, int> counts;
  for (int i = 0; i < 20000; ++i) {
    std::vector<float> logits = {0.0f, std::log(3.0f)};  // p = 0.25, 0.75
    counts[s.Sample(logits.data(), 2)]++;
  }
  EXPECT_NEAR(counts[1] / 20000.0, 0.75, 0.02);
}

TEST(SamplingParams, RejectsInvalidValues) {
  SamplingParams p;
  p.temperature = -1;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "temperature"));
  p = {};
  p.top_p = 0;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_p"));
  p = {};
  p.top_k = -3;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_k"));
}

}  // namespace
}  // namespace blockserve::runtime
