// The engine on a second backend, through the Backend interface alone: the same tokens and
// log-probabilities as on the CPU, with one copy of tokens in and one of logits out per step —
// not two per block call — and every byte it allocated given back.
#include "tests/scheduler/engine_test_fixture.h"

namespace blockserve::scheduler {
namespace {

TEST_F(EngineTest, ASecondBackendGivesTheSameOutputWithOneCopyEachWayPerStep) {
  testing::CountingBackend device;
  std::vector<Result> on_cpu, on_device;
  EngineStats stats;
  const auto specs = [](const Engine& e) {
    std::vector<RequestSpec> s = {Spec(e, "base", 6, 20), Spec(e, "ft3", 40, 12, 7),
                                  Spec(e, "lora16", 5, 16, 9), Spec(e, "ft5", 3, 10),
                                  Spec(e, "lora2", 12, 14)};
    s[0].sampling.logprobs = 5;
    s[2].sampling.logprobs = 2;
    s[3].prompt_logprobs = 3;
    return s;
  };
  {
    runtime::BlockOptions bo;
    auto models = LoadEngineModels(*zoo_, AllModels(), bo);
    ASSERT_THAT(models, IsOk());
    EngineOptions opt;
    opt.threads = 2;
    opt.scheduler.prefill_chunk = 16;  // prompts over several steps
    Engine e(opt, std::move(*models));
    on_cpu = Run(e, specs(e));
  }
  {
    runtime::BlockOptions bo;
    bo.backend = &device;
    auto models = LoadEngineModels(*zoo_, AllModels(), bo);
    ASSERT_THAT(models, IsOk());
    EngineOptions opt;
    opt.threads = 2;
    opt.scheduler.prefill_chunk = 16;
    opt.backend = &device;
    Engine e(opt, std::move(*models));
    on_device = Run(e, specs(e));
    stats = e.stats();
    EXPECT_GT(device.memory().used, 0u);  // KV pages and the activation arena
  }
  EXPECT_EQ(device.memory().used, 0u);
  ASSERT_EQ(on_cpu.size(), on_device.size());
  for (size_t i = 0; i < on_cpu.size(); ++i) {
    EXPECT_EQ(on_device[i].tokens, on_cpu[i].tokens) << i;
    EXPECT_EQ(on_device[i].finish, on_cpu[i].finish) << i;
    ExpectSameLogprobs(on_device[i].logprobs, on_cpu[i].logprobs, "request " + std::to_string(i));
    ExpectSameLogprobs(on_device[i].prompt_logprobs, on_cpu[i].prompt_logprobs,
                       "prompt of request " + std::to_string(i));
  }
  ASSERT_GT(stats.steps, 10u);
  // Many block calls per step, yet one copy each way per step at most.
  EXPECT_GT(stats.block_calls, 10 * stats.steps);
  EXPECT_GT(device.copies_in.load(), 0u);
  EXPECT_LE(device.copies_in.load(), stats.steps);
  EXPECT_LE(device.copies_out.load(), stats.steps);
  std::printf("%llu steps, %llu block calls, %llu copies in, %llu copies out\n",
              static_cast<unsigned long long>(stats.steps),
              static_cast<unsigned long long>(stats.block_calls),
              static_cast<unsigned long long>(device.copies_in.load()),
              static_cast<unsigned long long>(device.copies_out.load()));
}

}  // namespace
}  // namespace blockserve::scheduler
