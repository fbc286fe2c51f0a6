// The output stage: events reach sinks in order per request, off the pushing thread; Drain
// waits for them; a full queue holds the pusher back instead of growing; and in the engine, a
// sink runs off the engine thread, outside its lock, so it may abort its own request.
#include "scheduler/output_stage.h"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "blockzoo/model_loader.h"
#include "scheduler/run_to_completion.h"
#include "tests/testing/test_util.h"

namespace blockserve::scheduler {
namespace {

TEST(OutputStage, KeepsEachRequestsOrderOffThePushingThread) {
  OutputStage stage(/*shards=*/3);
  constexpr int kRequests = 7, kEvents = 200;
  std::vector<std::vector<int32_t>> got(kRequests);
  std::vector<SinkPtr> sinks;
  std::atomic<int> on_caller{0};
  const auto caller = std::this_thread::get_id();
  for (int r = 0; r < kRequests; ++r) {
    sinks.push_back(std::make_shared<Sink>([&, r](const Event& e) {
      got[r].push_back(e.token);
      on_caller += std::this_thread::get_id() == caller;
    }));
  }
  for (int t = 0; t < kEvents; ++t) {
    std::vector<std::pair<SinkPtr, Event>> step;
    for (int r = 0; r < kRequests; ++r) step.push_back({sinks[r], Event(r, t, Finish::kNone)});
    stage.Push(std::move(step));
  }
  stage.Drain();
  EXPECT_EQ(on_caller, 0);
  for (int r = 0; r < kRequests; ++r) {
    ASSERT_EQ(got[r].size(), static_cast<size_t>(kEvents)) << r;
    for (int t = 0; t < kEvents; ++t) ASSERT_EQ(got[r][t], t) << r;
  }
}

TEST(OutputStage, AFullQueueHoldsThePusherBack) {
  OutputStage stage(/*shards=*/1, /*max_queued=*/4);
  std::promise<void> release;
  std::shared_future<void> gate = release.get_future().share();
  std::atomic<int> delivered{0};
  auto slow = std::make_shared<Sink>([&](const Event&) {
    gate.wait();
    ++delivered;
  });
  auto push = [&](int n) {
    std::vector<std::pair<SinkPtr, Event>> v;
    for (int i = 0; i < n; ++i) v.push_back({slow, Event(1, i, Finish::kNone)});
    stage.Push(std::move(v));
  };
  push(1);  // taken by the stage thread, which waits in the sink
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  push(4);  // fills the queue
  auto blocked = std::async(std::launch::async, [&] { push(1); });
  EXPECT_EQ(blocked.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout);
  release.set_value();
  blocked.get();
  stage.Drain();
  EXPECT_EQ(delivered, 6);
}

class EngineOutputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = blockserve::testing::ModelsDir();
    if (!dir) GTEST_SKIP() << "real models not found (../shared/models)";
    auto m = blockzoo::LoadModelFile(*dir + "/stories260K/stories260K.bin", std::nullopt);
    ASSERT_THAT(m, blockserve::testing::IsOk());
    auto c = runtime::BuildChain(m->weights);
    ASSERT_THAT(c, blockserve::testing::IsOk());
    chain_ = std::make_unique<runtime::Chain>(std::move(*c));
  }
  // `output_threads` 0: the stage runs sinks inline on the engine thread, outside its lock.
  std::unique_ptr<Engine> MakeEngine(int output_threads = 1) {
    EngineOptions opt;
    opt.threads = 2;
    opt.output_threads = output_threads;
    std::vector<EngineModel> models;
    models.push_back(ChainModel("m", *chain_));
    return std::make_unique<Engine>(opt, std::move(models));
  }
  std::unique_ptr<runtime::Chain> chain_;
};

// A sink that calls back into the engine (stats, abort of its own request) while the engine
// runs: with sinks on the engine thread under its lock, this deadlocked or raced.
TEST_F(EngineOutputTest, ASinkMayAbortItsOwnRequestWhileTheEngineRuns) {
  for (int output_threads : {1, 0}) {
  SCOPED_TRACE(output_threads ? "output stage thread" : "inline delivery");
  auto engine = MakeEngine(output_threads);
  Engine& e = *engine;
  e.Start();
  RequestSpec spec;
  spec.prompt = {1, 403, 407};
  spec.max_tokens = 400;
  std::promise<Finish> done_a, done_b;
  std::atomic<int> tokens_a{0}, tokens_b{0};
  std::atomic<RequestId> id_a{0};
  auto a = e.Submit(spec, [&](const Event& ev) {
    if (ev.token >= 0 && ++tokens_a == 3) {
      (void)e.stats();  // takes the engine's lock: not held around sinks
      e.Abort(id_a.load());
    }
    if (ev.finish != Finish::kNone) done_a.set_value(ev.finish);
  });
  ASSERT_THAT(a, blockserve::testing::IsOk());
  id_a = *a;
  spec.max_tokens = 20;
  ASSERT_THAT(e.Submit(spec, [&](const Event& ev) {
    tokens_b += ev.token >= 0;
    if (ev.finish != Finish::kNone) done_b.set_value(ev.finish);
  }).status(), blockserve::testing::IsOk());
  auto fa = done_a.get_future(), fb = done_b.get_future();
  ASSERT_EQ(fa.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  ASSERT_EQ(fb.wait_for(std::chrono::seconds(20)), std::future_status::ready);
  EXPECT_EQ(fa.get(), Finish::kAbort);
  EXPECT_LT(tokens_a.load(), 400);
  EXPECT_EQ(fb.get(), Finish::kLength);
  EXPECT_EQ(tokens_b.load(), 20);
  e.Stop();
  }
}

// Stepped on this thread, the engine still hands every event to the stage: sinks never run on
// the thread that computes, and Step returns only once they have run.
TEST_F(EngineOutputTest, SinksRunOffTheEngineThread) {
  auto engine = MakeEngine();
  Engine& e = *engine;
  RequestSpec spec;
  spec.prompt = {1, 403, 407};
  spec.max_tokens = 10;
  std::atomic<int> on_engine{0};
  const auto engine_thread = std::this_thread::get_id();
  auto out = RunToCompletion(e, {spec, spec}, [&](int, int32_t) {
    on_engine += std::this_thread::get_id() == engine_thread;
  });
  ASSERT_THAT(out, blockserve::testing::IsOk());
  EXPECT_EQ((*out)[0].tokens.size(), 10u);
  EXPECT_EQ((*out)[1].tokens, (*out)[0].tokens);
  EXPECT_EQ(on_engine, 0);
}

}  // namespace
}  // namespace blockserve::scheduler
