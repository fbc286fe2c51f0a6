// Batch invariance: requests generated together (prefill and decode mixed, joining at
// different steps, greedy and sampled) give exactly the tokens each gives alone.
#include "blockzoo/model_loader.h"
#include "runtime/chain.h"
#include "scheduler/generator.h"
#include "tests/testing/test_util.h"

namespace blockserve::scheduler {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::StatusIs;

class GeneratorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = blockserve::testing::ModelsDir();
    if (!dir) GTEST_SKIP() << "real models not found (../shared/models)";
    auto m = blockzoo::LoadModelFile(*dir + "/stories260K/stories260K.bin", std::nullopt);
    ASSERT_THAT(m, IsOk());
    model_ = std::move(*m);
    runtime::BlockOptions opt;
    opt.kv_page_size = 32;
    auto c = runtime::BuildChain(model_.weights, opt);
    ASSERT_THAT(c, IsOk());
    chain_ = std::make_unique<runtime::Chain>(std::move(*c));
  }

  GenerationRequest Make(const std::string& text, int max_tokens, float temp = 0, uint64_t seed = 0) {
    GenerationRequest r;
    r.prompt = model_.tokenizer->Encode(text, true);
    r.max_tokens = max_tokens;
    r.sampling.temperature = temp;
    r.sampling.top_p = temp > 0 ? 0.9f : 1.0f;
    r.sampling.seed = seed;
    r.stop_tokens = {1};
    return r;
  }

  blockzoo::LoadedModel model_;
  std::unique_ptr<runtime::Chain> chain_;
};

TEST_F(GeneratorTest, BatchedEqualsAloneBitForBit) {
  std::vector<GenerationRequest> reqs = {
      Make("Once upon a time", 80),
      Make("Tom and his dog", 50),
      Make("The little cat was very hungry and wanted to find some food in the kitchen", 40),
      Make("Lily", 60, 1.0f, 7),
      Make("", 30, 0.8f, 99),
      Make("One day, a big bird", 45),
  };
  reqs[2].start_step = 5;  // joins while others decode: prefill mixed with decode
  reqs[5].start_step = 17;
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  std::vector<std::vector<int32_t>> alone;
  for (auto r : reqs) {
    r.start_step = 0;
    auto out = GenerateBatch(*chain_, ctx, {r});
    ASSERT_THAT(out, IsOk());
    alone.push_back((*out)[0].tokens);
  }
  for (int threads : {1, 2, 3}) {
    runtime::CpuDevice pool(threads);
    runtime::ExecContext bctx(&pool);
    auto together = GenerateBatch(*chain_, bctx, reqs, nullptr, 1000);
    ASSERT_THAT(together, IsOk());
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ((*together)[i].tokens, alone[i]) << "request " << i << ", " << threads << " threads";
      EXPECT_FALSE(alone[i].empty());
    }
  }
}

TEST_F(GeneratorTest, FinishReasonsAndCallbacks) {
  runtime::CpuDevice cpu(1);
  runtime::ExecContext ctx(&cpu);
  auto r = Make("Once upon a time", 10);
  std::vector<int32_t> streamed;
  auto out = GenerateBatch(*chain_, ctx, {r}, [&](int i, int32_t t) { streamed.push_back(t); });
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ((*out)[0].finish, FinishReason::kLength);
  EXPECT_EQ((*out)[0].tokens, streamed);
  EXPECT_EQ(streamed.size(), 10u);
  // Stop on the token the model will produce first (",", id 432): nothing emitted.
  r.stop_tokens = {432};
  out = GenerateBatch(*chain_, ctx, {r});
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ((*out)[0].finish, FinishReason::kStop);
  EXPECT_TRUE((*out)[0].tokens.empty());
  // The context (512) ends generation.
  r = Make("Once upon a time", 10000);
  r.stop_tokens.clear();
  out = GenerateBatch(*chain_, ctx, {r});
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ((*out)[0].finish, FinishReason::kContextFull);
  EXPECT_EQ((*out)[0].tokens.size(), 512u - 5 + 1);
}

TEST_F(GeneratorTest, InvalidRequestsAreErrorsNotCrashes) {
  runtime::CpuDevice cpu(1);
  runtime::ExecContext ctx(&cpu);
  GenerationRequest r = Make("x", 5);
  r.prompt.clear();
  EXPECT_THAT(GenerateBatch(*chain_, ctx, {r}), StatusIs(absl::StatusCode::kInvalidArgument, "empty prompt"));
  r.prompt = {1, 9999};
  EXPECT_THAT(GenerateBatch(*chain_, ctx, {r}), StatusIs(absl::StatusCode::kInvalidArgument, "token id 9999"));
  r.prompt.assign(600, 5);
  EXPECT_THAT(GenerateBatch(*chain_, ctx, {r}), StatusIs(absl::StatusCode::kOutOfRange, "context length"));
  r = Make("x", 5, -1.0f);
  EXPECT_THAT(GenerateBatch(*chain_, ctx, {r}), StatusIs(absl::StatusCode::kInvalidArgument, "temperature"));
}

TEST_F(GeneratorTest, AttnBlockRejectsPositionGaps) {
  runtime::CpuDevice cpu(1);
  runtime::ExecContext ctx(&cpu);
  runtime::Batch b;
  const int32_t t[] = {1, 403};
  b.Add(5, 3, t, 2);  // position 3 but nothing cached
  EXPECT_THAT(chain_->Forward(b, ctx), StatusIs(absl::StatusCode::kFailedPrecondition, "position 3"));
  chain_->ReleaseSequence(5);
}

}  // namespace
}  // namespace blockserve::scheduler
