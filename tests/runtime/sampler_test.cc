#include "runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

using blockserve::testing::StatusIs;

TEST(Sampler, GreedyPicksFirstMaximum) {
  std::vector<float> logits = {0.1f, 3.0f, -2.0f, 3.0f};
  Sampler s({});
  EXPECT_EQ(s.Sample(logits.data(), 4), 1);
}

// Argmax must pick what a plain scan keeping the first strictly larger value picks, wherever
// the maximum and its ties fall relative to the vectorised lanes and the tail.
TEST(Sampler, ArgmaxMatchesAPlainScan) {
  auto scan = [](const std::vector<float>& x) {
    int best = 0;
    for (int i = 1; i < static_cast<int>(x.size()); ++i) {
      if (x[i] > x[best]) best = i;
    }
    return best;
  };
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> small(-3, 3);  // few distinct values: many ties
  for (int n : {1, 2, 15, 16, 17, 31, 32, 33, 100, 512, 8000}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> x(n);
      for (float& v : x) v = static_cast<float>(small(rng));
      if (trial % 4 == 1) x[n - 1] = 9.0f;  // the maximum in the tail
      if (trial % 4 == 2 && n > 3) x[n / 2] = std::nanf("");  // a NaN never wins
      if (trial % 4 == 3) x[rng() % n] = -0.0f;
      ASSERT_EQ(Argmax(x.data(), n), scan(x)) << "n " << n << " trial " << trial;
    }
  }
  std::vector<float> nan_first = {std::nanf(""), 1.0f, 2.0f};
  EXPECT_EQ(Argmax(nan_first.data(), 3), 0);  // as the plain scan: nothing beats a NaN
  std::vector<float> zeros = {-0.0f, 0.0f};
  EXPECT_EQ(Argmax(zeros.data(), 2), 0);
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
  p = {};
  p.logprobs = kMaxLogprobs + 1;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_logprobs"));
  p.logprobs = -2;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "top_logprobs"));
  p.logprobs = kMaxLogprobs;
  EXPECT_TRUE(p.Validate().ok());
  p = {};
  p.frequency_penalty = 2.5f;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "frequency_penalty"));
  p = {};
  p.presence_penalty = -2.01f;
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "presence_penalty"));
  p = {};
  p.logit_bias = {{5, 101.0f}};
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "logit_bias of token 5"));
  p.logit_bias = {{-1, 1.0f}};
  EXPECT_THAT(p.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "logit_bias"));
}

// Greedy picks from constant logits {1.0, 0.9, 0.0} under each adjustment, step by step.
std::vector<int> GreedyPicks(const SamplingParams& p, int steps, std::vector<Logprobs>* lps = nullptr) {
  Sampler s(p);
  std::vector<int> out;
  for (int i = 0; i < steps; ++i) {
    std::vector<float> logits = {1.0f, 0.9f, 0.0f};
    Logprobs lp;
    out.push_back(s.Sample(logits.data(), 3, &lp));
    if (lps) lps->push_back(lp);
  }
  return out;
}

TEST(Sampler, PenaltiesFollowOpenAisFormula) {
  SamplingParams p;
  EXPECT_EQ(GreedyPicks(p, 5), (std::vector<int>{0, 0, 0, 0, 0}));
  // Frequency: every pick of a token costs it 0.2 more.
  p.frequency_penalty = 0.2f;
  EXPECT_EQ(GreedyPicks(p, 6), (std::vector<int>{0, 1, 0, 1, 0, 1}));
  // Presence: 0.5 once a token has been picked, however often.
  p = {};
  p.presence_penalty = 0.5f;
  EXPECT_EQ(GreedyPicks(p, 5), (std::vector<int>{0, 1, 0, 0, 0}));
  // Negative penalties encourage repetition.
  p = {};
  p.frequency_penalty = -1.0f;
  EXPECT_EQ(GreedyPicks(p, 3), (std::vector<int>{0, 0, 0}));
}

TEST(Sampler, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogitsOfSeenTokens) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  Sampler s(p);
  s.SetPrompt({1, 1, 3});
  // Token 1 (in the prompt): 1.0 -> 0.5; token 3 (in the prompt): -0.5 -> -1.0; 0 and 2 untouched.
  std::vector<float> logits = {0.6f, 1.0f, 0.55f, -0.5f};
  EXPECT_EQ(s.Sample(logits.data(), 4), 0);
  EXPECT_FLOAT_EQ(logits[1], 0.5f);
  EXPECT_FLOAT_EQ(logits[3], -1.0f);
  // Token 0 was picked: 0.6 -> 0.3, now 2 (0.55) wins.
  logits = {0.6f, 1.0f, 0.55f, -0.5f};
  EXPECT_EQ(s.Sample(logits.data(), 4), 2);
  SamplingParams bad;
  bad.repetition_penalty = 0;
  EXPECT_THAT(bad.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "repetition_penalty"));
}

TEST(Sampler, MinTokensHoldsTheStopTokensBack) {
  SamplingParams p;
  p.min_tokens = 3;
  p.min_tokens_stops = {0};
  std::vector<Logprobs> lps;
  p.logprobs = 0;
  // Token 0 (a stop token) is the favourite: it comes only once three tokens are out; its
  // log-probability (the model's) is unchanged meanwhile.
  EXPECT_EQ(GreedyPicks(p, 5, &lps), (std::vector<int>{1, 1, 1, 0, 0}));
  EXPECT_EQ(lps[0].top.size(), 0u);
  EXPECT_LT(lps[0].logprob, std::log(0.5f));
  SamplingParams bad;
  bad.min_tokens = -1;
  EXPECT_THAT(bad.Validate(), StatusIs(absl::StatusCode::kInvalidArgument, "min_tokens"));
}

TEST(Sampler, LogitBiasSteersGreedyAndSampledPicksButNotTheLogprobs) {
  SamplingParams p;
  p.logit_bias = {{2, 100.0f}};
  p.logprobs = 1;
  std::vector<Logprobs> lps;
  EXPECT_EQ(GreedyPicks(p, 3, &lps), (std::vector<int>{2, 2, 2}));
  // Log-probabilities describe the model, not the biased draw.
  ASSERT_EQ(lps.size(), 3u);
  EXPECT_EQ(lps[0].top[0].token, 0);
  EXPECT_LT(lps[0].logprob, lps[0].top[0].logprob);
  p.logit_bias = {{0, -100.0f}};
  EXPECT_EQ(GreedyPicks(p, 2), (std::vector<int>{1, 1}));
  // Sampled: a -100 bias never lets the token through.
  p.temperature = 1.0f;
  p.seed = 5;
  p.logit_bias = {{0, -100.0f}, {1, -100.0f}};
  Sampler s(p);
  for (int i = 0; i < 2000; ++i) {
    std::vector<float> logits = {1.0f, 0.9f, 0.0f};
    ASSERT_EQ(s.Sample(logits.data(), 3), 2);
  }
}

// Log-probabilities against a plain double-precision log-softmax, on logits with ties.
TEST(Logprobs, MatchADoubleLogSoftmaxMostLikelyFirst) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 4.0f);
  std::vector<float> logits(32000);
  for (float& x : logits) x = normal(rng);
  logits[17] = logits[23001] = 30.0f;  // a tie for the top: the lower id comes first
  logits[999] = 29.0f;
  double max = *std::max_element(logits.begin(), logits.end()), sum = 0;
  for (float x : logits) sum += std::exp(static_cast<double>(x) - max);
  const double lse = max + std::log(sum);
  const Logprobs lp = ComputeLogprobs(logits.data(), 32000, 4242, 5);
  EXPECT_NEAR(lp.logprob, logits[4242] - lse, 1e-5);
  ASSERT_EQ(lp.top.size(), 5u);
  EXPECT_EQ(lp.top[0].token, 17);
  EXPECT_EQ(lp.top[1].token, 23001);
  EXPECT_EQ(lp.top[2].token, 999);
  std::vector<int> order(32000);
  for (int i = 0; i < 32000; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return logits[a] > logits[b]; });
  for (int j = 0; j < 5; ++j) {
    EXPECT_EQ(lp.top[j].token, order[j]) << j;
    EXPECT_NEAR(lp.top[j].logprob, logits[order[j]] - lse, 1e-5) << j;
  }
  EXPECT_TRUE(ComputeLogprobs(logits.data(), 32000, 17, 0).top.empty());
  EXPECT_EQ(ComputeLogprobs(logits.data(), 3, 1, 20).top.size(), 3u);  // k > vocab
}

// Asking for log-probabilities changes nothing about the draw: same tokens, same RNG stream;
// they describe the model's distribution (before temperature), greedy or sampled.
TEST(Logprobs, DoNotChangeTheSampledTokens) {
  for (float temperature : {0.0f, 0.8f}) {
    SamplingParams plain;
    plain.temperature = temperature;
    plain.top_p = 0.9f;
    plain.seed = 11;
    SamplingParams asked = plain;
    asked.logprobs = 3;
    Sampler a(plain), b(asked);
    std::mt19937 rng(3);
    std::normal_distribution<float> normal(0.0f, 2.0f);
    for (int step = 0; step < 50; ++step) {
      std::vector<float> logits(512);
      for (float& x : logits) x = normal(rng);
      std::vector<float> copy = logits;
      const Logprobs expected = ComputeLogprobs(logits.data(), 512, 0, 3);
      Logprobs lp;
      const int ta = a.Sample(copy.data(), 512);
      const int tb = b.Sample(logits.data(), 512, &lp);
      ASSERT_EQ(ta, tb) << "temperature " << temperature << " step " << step;
      ASSERT_EQ(lp.top.size(), 3u);
      for (int j = 0; j < 3; ++j) EXPECT_EQ(lp.top[j].token, expected.top[j].token);
      if (temperature == 0.0f) {
        EXPECT_EQ(tb, lp.top[0].token);
        EXPECT_EQ(lp.logprob, lp.top[0].logprob);
      }
    }
  }
}

}  // namespace
}  // namespace blockserve::runtime
