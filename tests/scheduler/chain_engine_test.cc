// One model's chain in the engine, driven on the calling thread (RunToCompletion, as the
// `generate` command does): batch invariance (requests generated together — prefill and decode
// mixed, joining at different steps, greedy and sampled — give exactly the tokens each gives
// alone, at any thread count), finish reasons, refused requests, and the attn block's checks.
#include "blockzoo/model_loader.h"
#include "runtime/chain.h"
#include "scheduler/run_to_completion.h"
#include "tests/testing/test_util.h"

namespace blockserve::scheduler {
namespace {

using blockserve::testing::IsOk;
using blockserve::testing::StatusIs;

class ChainEngineTest : public ::testing::Test {
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

  std::unique_ptr<Engine> MakeEngine(int threads) {
    EngineOptions opt;
    opt.threads = threads;
    opt.kv_page_size = 32;
    std::vector<EngineModel> models;
    models.push_back(ChainModel("stories260K", *chain_));
    return std::make_unique<Engine>(opt, std::move(models));
  }

  RequestSpec Make(const std::string& text, int max_tokens, float temp = 0, uint64_t seed = 0) {
    RequestSpec r;
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

TEST_F(ChainEngineTest, BatchedEqualsAloneBitForBit) {
  const std::vector<RequestSpec> reqs = {
      Make("Once upon a time", 80),
      Make("Tom and his dog", 50),
      Make("The little cat was very hungry and wanted to find some food in the kitchen", 40),
      Make("Lily", 60, 1.0f, 7),
      Make("", 30, 0.8f, 99),
      Make("One day, a big bird", 45),
  };
  const std::vector<int> join_step = {0, 0, 5, 0, 0, 17};  // prefill mixed with decode
  std::vector<std::vector<int32_t>> alone;
  for (const RequestSpec& r : reqs) {
    auto e = MakeEngine(2);
    auto out = RunToCompletion(*e, {r});
    ASSERT_THAT(out, IsOk());
    EXPECT_FALSE((*out)[0].tokens.empty());
    alone.push_back((*out)[0].tokens);
  }
  for (int threads : {1, 2, 3}) {
    auto e = MakeEngine(threads);
    std::vector<std::vector<int32_t>> got(reqs.size());
    int finished = 0;
    for (int step = 0; finished < static_cast<int>(reqs.size()) && step < 1000; ++step) {
      for (size_t i = 0; i < reqs.size(); ++i) {
        if (join_step[i] != step) continue;
        ASSERT_THAT(e->Submit(reqs[i], [&got, &finished, i](const Event& ev) {
          if (ev.token >= 0) got[i].push_back(ev.token);
          finished += ev.finish != Finish::kNone;
        }), IsOk());
      }
      ASSERT_THAT(e->Step(), IsOk());
    }
    for (size_t i = 0; i < reqs.size(); ++i) {
      EXPECT_EQ(got[i], alone[i]) << "request " << i << ", " << threads << " threads";
    }
  }
}

TEST_F(ChainEngineTest, FinishReasonsAndCallbacks) {
  auto e = MakeEngine(1);
  RequestSpec r = Make("Once upon a time", 10);
  std::vector<int32_t> streamed;
  auto out = RunToCompletion(*e, {r}, [&](int i, int32_t t) { streamed.push_back(t); });
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ((*out)[0].finish, Finish::kLength);
  EXPECT_EQ((*out)[0].tokens, streamed);
  EXPECT_EQ(streamed.size(), 10u);
  // Stop on the token the model will produce first (",", id 432): nothing emitted.
  r.stop_tokens = {432};
  out = RunToCompletion(*e, {r});
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ((*out)[0].finish, Finish::kStop);
  EXPECT_TRUE((*out)[0].tokens.empty());
  // The context (512) ends generation: 5 prompt tokens and 507 generated fill it.
  r = Make("Once upon a time", 10000);
  r.stop_tokens.clear();
  out = RunToCompletion(*e, {r});
  ASSERT_THAT(out, IsOk());
  EXPECT_EQ((*out)[0].finish, Finish::kContextFull);
  EXPECT_EQ((*out)[0].tokens.size(), 512u - 5);
}

TEST_F(ChainEngineTest, RefusedRequestsAreErrorsNamingTheRequest) {
  auto e = MakeEngine(1);
  RequestSpec r = Make("x", 5);
  r.prompt.clear();
  EXPECT_THAT(RunToCompletion(*e, {r}), StatusIs(absl::StatusCode::kInvalidArgument, "request 0: empty prompt"));
  r.prompt = {1, 9999};
  EXPECT_THAT(RunToCompletion(*e, {Make("x", 5), r}),
              StatusIs(absl::StatusCode::kInvalidArgument, "request 1: token id 9999"));
  r.prompt.assign(600, 5);
  EXPECT_THAT(RunToCompletion(*e, {r}), StatusIs(absl::StatusCode::kOutOfRange, "context of 512"));
  r = Make("x", 5, -1.0f);
  EXPECT_THAT(RunToCompletion(*e, {r}), StatusIs(absl::StatusCode::kInvalidArgument, "temperature"));
}

TEST_F(ChainEngineTest, AttnBlockRejectsPositionGaps) {
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
