// The engine with its block instances on worker processes' servers (three, on loopback): the
// executor sends the consecutive calls a worker hosts as one segment, so a step costs one round
// trip per worker it visits, not one per block — what placement decides.
#include "tests/scheduler/engine_test_fixture.h"

namespace blockserve::scheduler {
namespace {

// Segments the workers of `list` have run so far.
uint64_t Segments(const std::string& list) {
  uint64_t n = 0;
  for (absl::string_view addr : absl::StrSplit(list, ',')) {
    server::WorkerClient w{std::string(addr)};
    grpc::ClientContext ctx;
    worker::v1::StatsRequest req;
    worker::v1::StatsResponse resp;
    EXPECT_TRUE(w.stub().Stats(&ctx, req, &resp).ok());
    n += resp.segments();
  }
  return n;
}

TEST_F(EngineTest, ASegmentOfOneWorkerIsOneRoundTripAndPlacementDecidesHowMany) {
  auto local = MakeEngine();
  const auto want = Run(*local, {Spec(*local, "base", 4, 12), Spec(*local, "ft1", 6, 12)});
  const std::string list = testing::WorkersFor(zoo_->dir());
  ASSERT_FALSE(list.empty());
  std::map<std::string, uint64_t> segments;
  for (const std::string placement : {"contiguous", "round-robin"}) {
    SCOPED_TRACE(placement);
    auto wrap = server::WorkerSources(list, placement, 10);
    ASSERT_THAT(wrap, IsOk());
    runtime::BlockOptions bo;
    auto models = LoadEngineModels(*zoo_, std::vector<std::string>{"base"}, bo, /*lazy=*/true, /*share=*/true, *wrap);
    ASSERT_THAT(models, IsOk());
    EngineOptions opt;
    opt.threads = 2;
    Engine e(opt, std::move(*models));
    const uint64_t before = Segments(list);
    const auto got = Run(e, {Spec(e, "base", 4, 12)});
    segments[placement] = Segments(list) - before;
    EXPECT_EQ(got[0].tokens, want[0].tokens);
  }
  // stories260K's chain is 12 blocks (embed, 5 x (attn, ffn), head). Contiguous placement puts
  // 4 on each of the three workers: 3 round trips a step; round-robin alternates workers at
  // every block: 12 a step. Same steps, so exactly 4 times as many.
  EXPECT_GT(segments["contiguous"], 0u);
  EXPECT_EQ(segments["round-robin"], 4 * segments["contiguous"]);
  // Two models that share the lower layers: their calls batch on the shared instances, and the
  // fine-tune's own top layers are calls of their own, on the same workers.
  auto wrap = server::WorkerSources(list, "contiguous", 10);
  ASSERT_THAT(wrap, IsOk());
  auto models = LoadEngineModels(*zoo_, std::vector<std::string>{"base", "ft1"},
                                 runtime::BlockOptions{}, true, true,
                                 *wrap);
  ASSERT_THAT(models, IsOk());
  EngineOptions opt;
  opt.threads = 2;
  Engine e(opt, std::move(*models));
  const auto got = Run(e, {Spec(e, "base", 4, 12), Spec(e, "ft1", 6, 12)});
  EXPECT_EQ(got[0].tokens, want[0].tokens);
  EXPECT_EQ(got[1].tokens, want[1].tokens);
}

}  // namespace
}  // namespace blockserve::scheduler
