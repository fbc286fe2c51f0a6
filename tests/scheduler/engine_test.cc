// The engine on real blocks: stories260K and synthetic fine-tunes of it in one zoo, loaded as
// shared block instances. A request gives the same tokens alone, batched with requests of 7
// other models, with LoRA adapters of other ranks in the batch, after being preempted, and as
// the monolithic model; abort frees every page. KV accounting is checked against the blocks'
// real caches after every step.
#include "scheduler/engine.h"

#include <atomic>
#include <filesystem>
#include <future>
#include <random>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "blockzoo/derive.h"
#include "blockzoo/equiv.h"
#include "blockzoo/importer.h"
#include "blockzoo/model_loader.h"
#include "scheduler/generator.h"
#include "scheduler/zoo_engine.h"
#include "tests/testing/test_util.h"

namespace blockserve::scheduler {
namespace {

using testing::IsOk;

// The two ways an engine loads blocks, for test traces (EngineOptions::background_loads).
const char* LoadMode(bool background) {
  return background ? "background loads" : "loads in the step";
}

struct Result {
  std::vector<int32_t> tokens;
  Finish finish = Finish::kNone;
  std::string error;
  std::vector<runtime::Logprobs> logprobs;  // one per token, when the request asked for them
  std::vector<runtime::Logprobs> prompt_logprobs;  // as delivered (RequestSpec::prompt_logprobs)
};

// Bit-for-bit equal log-probabilities (same tokens, same floats).
void ExpectSameLogprobs(const std::vector<runtime::Logprobs>& a,
                        const std::vector<runtime::Logprobs>& b, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  for (size_t t = 0; t < a.size(); ++t) {
    EXPECT_EQ(a[t].logprob, b[t].logprob) << what << " token " << t;
    ASSERT_EQ(a[t].top.size(), b[t].top.size()) << what << " token " << t;
    for (size_t j = 0; j < a[t].top.size(); ++j) {
      EXPECT_EQ(a[t].top[j].token, b[t].top[j].token) << what << " token " << t;
      EXPECT_EQ(a[t].top[j].logprob, b[t].top[j].logprob) << what << " token " << t;
    }
  }
}

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto dir = testing::ModelsDir();
    if (!dir) return;
    models_dir_ = new std::string(*dir);
    tmp_ = new testing::TempDir();
    auto zoo = blockzoo::Zoo::Open(tmp_->path(), true);
    ASSERT_THAT(zoo, IsOk());
    zoo_ = zoo->release();
    blockzoo::ImportOptions io;
    io.name = "base";
    ASSERT_THAT(blockzoo::ImportModel(*zoo_, *dir + "/stories260K/stories260K.bin", io), IsOk());
    for (int i = 1; i <= 7; ++i) {  // 7 partial fine-tunes: top 2 layers changed
      blockzoo::DeriveOptions d;
      d.base = "base";
      d.name = "ft" + std::to_string(i);
      d.top_layers = 2;
      d.rel_norm = 0.1;
      d.seed = i;
      ASSERT_THAT(blockzoo::DeriveModel(*zoo_, d), IsOk());
    }
    for (int rank : {2, 16}) {
      blockzoo::DeriveOptions d;
      d.base = "base";
      d.name = "lora" + std::to_string(rank);
      d.recipe = blockzoo::DeriveOptions::Recipe::kLora;
      d.lora_rank = rank;
      d.lora_alpha = 2.0f * rank;
      d.lora_targets = {"wq", "wv", "w2"};
      d.rel_norm = 0.2;
      d.seed = rank;
      ASSERT_THAT(blockzoo::DeriveModel(*zoo_, d), IsOk());
    }
  }
  static void TearDownTestSuite() {
    delete zoo_;
    delete tmp_;
    delete models_dir_;
  }
  void SetUp() override {
    if (models_dir_ == nullptr) GTEST_SKIP() << "real models not found (../shared/models)";
  }

  static std::vector<std::string> AllModels() {
    std::vector<std::string> names = {"base"};
    for (int i = 1; i <= 7; ++i) names.push_back("ft" + std::to_string(i));
    names.push_back("lora2");
    names.push_back("lora16");
    return names;
  }

  std::unique_ptr<Engine> MakeEngine(EngineOptions opt = {}) {
    runtime::BlockOptions bo;
    bo.kv_page_size = opt.kv_page_size;
    bo.kv_max_pages = opt.kv_max_pages;
    bo.kv_dtype = opt.kv_dtype;
    auto models = LoadEngineModels(*zoo_, AllModels(), bo);
    EXPECT_THAT(models, IsOk());
    if (opt.threads == 0) opt.threads = 2;
    return std::make_unique<Engine>(opt, std::move(*models));
  }

  // A zoo of its own in `tmp` holding stories260K as "base" (for tests that damage its files);
  // null (with the failure reported) if it cannot be made.
  std::unique_ptr<blockzoo::Zoo> ZooWithBase(const testing::TempDir& tmp) {
    auto z = blockzoo::Zoo::Open(tmp.path(), true);
    EXPECT_THAT(z, IsOk());
    if (!z.ok()) return nullptr;
    blockzoo::ImportOptions io;
    io.name = "base";
    auto m = blockzoo::ImportModel(**z, *models_dir_ + "/stories260K/stories260K.bin", io);
    EXPECT_THAT(m, IsOk());
    return m.ok() ? std::move(*z) : nullptr;
  }

  // An engine over `names` of `zoo` whose blocks load on first use.
  // `background`: loads run on loader threads (EngineOptions::background_loads).
  static std::unique_ptr<Engine> LazyEngine(const blockzoo::Zoo& zoo,
                                            const std::vector<std::string>& names,
                                            bool background = false) {
    auto models = LoadEngineModels(zoo, names, runtime::BlockOptions{}, /*lazy=*/true);
    EXPECT_THAT(models, IsOk());
    if (!models.ok()) return nullptr;
    EngineOptions opt;
    opt.threads = 2;
    opt.background_loads = background;
    return std::make_unique<Engine>(opt, std::move(*models));
  }

  static RequestSpec Spec(const Engine& e, const std::string& model, int n, int max_tokens,
                          uint64_t seed = 0) {
    RequestSpec s;
    s.model = e.FindModel(model);
    s.prompt = {1};
    for (int i = 0; i < n; ++i) s.prompt.push_back(static_cast<int32_t>(300 + 7 * i) % 512);
    s.max_tokens = max_tokens;
    if (seed != 0) {
      s.sampling.temperature = 1.0f;
      s.sampling.top_p = 0.9f;
      s.sampling.seed = seed;
    }
    return s;
  }

  // Runs every spec to completion on `e` (Step() on this thread), checking invariants.
  std::vector<Result> Run(Engine& e, const std::vector<RequestSpec>& specs) {
    std::vector<Result> out(specs.size());
    for (size_t i = 0; i < specs.size(); ++i) {
      auto id = e.Submit(specs[i], [&out, i](const Event& ev) {
        if (ev.token >= 0) out[i].tokens.push_back(ev.token);
        if (ev.logprobs) out[i].logprobs.push_back(*ev.logprobs);
        out[i].prompt_logprobs.insert(out[i].prompt_logprobs.end(), ev.prompt_logprobs.begin(),
                                      ev.prompt_logprobs.end());
        if (ev.finish != Finish::kNone) {
          out[i].finish = ev.finish;
          out[i].error = ev.error;
        }
      });
      EXPECT_THAT(id, IsOk());
    }
    for (int step = 0; step < 10000; ++step) {
      auto worked = e.Step();
      EXPECT_THAT(worked, IsOk());
      CheckKv(e);
      if (!worked.ok() || !*worked) break;
    }
    return out;
  }

  // LoadingUnderMemoryPressureStaysExactAndInBudget, with or without background loads.
  void PressureRun(bool background);

  static void CheckKv(const Engine& e) {
    ASSERT_THAT(e.scheduler().CheckInvariants(), IsOk());
    for (size_t i = 0; i < e.num_instances(); ++i) {
      ASSERT_EQ(e.InstancePages(static_cast<int>(i)),
                e.scheduler().pages_used(static_cast<int>(i)))
          << "instance " << i;
    }
  }

  static std::string* models_dir_;
  static testing::TempDir* tmp_;
  static blockzoo::Zoo* zoo_;
};

std::string* EngineTest::models_dir_ = nullptr;
testing::TempDir* EngineTest::tmp_ = nullptr;
blockzoo::Zoo* EngineTest::zoo_ = nullptr;

TEST_F(EngineTest, SharedInstancesAreLoadedOnce) {
  auto e = MakeEngine();
  // base: 12 blocks; each ft adds its own attn/ffn of layers 3-4; LoRA models share base's.
  EXPECT_EQ(e->num_instances(), 12u + 7 * 4);
}

TEST_F(EngineTest, BatchedWithSevenOtherModelsEqualsAlone) {
  const auto names = AllModels();
  std::vector<RequestSpec> specs;
  auto e = MakeEngine();
  for (size_t i = 0; i < 8; ++i) {
    specs.push_back(Spec(*e, names[i], 3 + static_cast<int>(i), 24, i % 2 ? 100 + i : 0));
  }
  std::vector<Result> alone;
  for (const auto& s : specs) {
    auto fresh = MakeEngine();
    alone.push_back(Run(*fresh, {s})[0]);
  }
  const auto together = Run(*e, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << names[i];
    EXPECT_EQ(together[i].finish, Finish::kLength);
  }
  // The fine-tunes really differ from the base somewhere.
  EXPECT_NE(alone[0].tokens, alone[2].tokens);
  const auto stats = e->stats();
  // One embed call serves all 8 models in a step: far fewer calls than 8 separate chains.
  EXPECT_LT(stats.block_calls, 8u * 12 * stats.steps);
}

TEST_F(EngineTest, SharedChainEqualsTheMonolithicModel) {
  auto loaded = blockzoo::LoadModelFile(*models_dir_ + "/stories260K/stories260K.bin", std::nullopt);
  ASSERT_THAT(loaded, IsOk());
  auto chain = runtime::BuildChain(loaded->weights);
  ASSERT_THAT(chain, IsOk());
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  auto e = MakeEngine();
  RequestSpec s = Spec(*e, "base", 6, 40);
  GenerationRequest g;
  g.prompt = s.prompt;
  g.max_tokens = 40;
  auto mono = GenerateBatch(*chain, ctx, {g});
  ASSERT_THAT(mono, IsOk());
  // Batched with other models' requests in the same engine.
  const auto got = Run(*e, {s, Spec(*e, "ft3", 4, 10), Spec(*e, "lora2", 5, 30)});
  EXPECT_EQ(got[0].tokens, (*mono)[0].tokens);
}

// Log-probabilities of generated tokens: those of the monolithic model's logits at each
// position (a whole-sequence forward pass), and bit-for-bit the same batched with strangers
// (other models, LoRA, sampled) as alone.
TEST_F(EngineTest, LogprobsMatchTheMonolithicModelAndAreBatchInvariant) {
  auto loaded = blockzoo::LoadModelFile(*models_dir_ + "/stories260K/stories260K.bin", std::nullopt);
  ASSERT_THAT(loaded, IsOk());
  auto chain = runtime::BuildChain(loaded->weights);
  ASSERT_THAT(chain, IsOk());
  auto e = MakeEngine();
  std::vector<RequestSpec> specs = {Spec(*e, "base", 6, 20), Spec(*e, "ft3", 4, 12, 7),
                                    Spec(*e, "lora16", 5, 16, 9), Spec(*e, "ft5", 3, 10)};
  specs[0].sampling.logprobs = 5;
  specs[1].sampling.logprobs = 0;
  specs[2].sampling.logprobs = runtime::kMaxLogprobs;
  // specs[3] asks for none.
  std::vector<Result> alone;
  for (const auto& s : specs) {
    auto fresh = MakeEngine();
    alone.push_back(Run(*fresh, {s})[0]);
  }
  const auto together = Run(*e, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
    ExpectSameLogprobs(together[i].logprobs, alone[i].logprobs, "request " + std::to_string(i));
  }
  ASSERT_EQ(together[0].logprobs.size(), together[0].tokens.size());
  EXPECT_TRUE(together[3].logprobs.empty());
  for (const auto& lp : together[1].logprobs) EXPECT_TRUE(lp.top.empty());
  for (const auto& lp : together[2].logprobs) EXPECT_EQ(lp.top.size(), 20u);

  // The base request is greedy: each token is the most likely, and every figure is the
  // log-softmax of the monolithic model's logits at that position.
  std::vector<int32_t> seq = specs[0].prompt;
  seq.insert(seq.end(), together[0].tokens.begin(), together[0].tokens.end() - 1);
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  runtime::Batch b;
  b.Add(1, 0, seq.data(), static_cast<int>(seq.size()), runtime::SeqSpan::Logits::kAll);
  ASSERT_THAT(chain->Forward(b, ctx), IsOk());
  const int vocab = chain->config().vocab_size;
  const size_t p = specs[0].prompt.size();
  for (size_t t = 0; t < together[0].tokens.size(); ++t) {
    const float* logits = b.logits.data() + (p - 1 + t) * vocab;
    const runtime::Logprobs want =
        runtime::ComputeLogprobs(logits, vocab, together[0].tokens[t], 5);
    const runtime::Logprobs& got = together[0].logprobs[t];
    EXPECT_EQ(got.top[0].token, together[0].tokens[t]) << t;
    EXPECT_NEAR(got.logprob, want.logprob, 1e-5) << t;
    ASSERT_EQ(got.top.size(), want.top.size());
    for (size_t j = 0; j < want.top.size(); ++j) {
      EXPECT_EQ(got.top[j].token, want.top[j].token) << t << "/" << j;
      EXPECT_NEAR(got.top[j].logprob, want.top[j].logprob, 1e-5) << t << "/" << j;
    }
    EXPECT_LT(got.top[4].logprob, got.top[0].logprob);
  }
}

// Prompt log-probabilities: one per prompt token after the first, from the monolithic model's
// logits; bit for bit the same alone, batched with strangers while the prompt is prefilled in
// small chunks over several steps, when preempted and recomputed (delivered once), and when
// the same prompt is in the prefix cache (not used for them).
TEST_F(EngineTest, PromptLogprobsMatchTheMonolithicModelHoweverScheduled) {
  auto loaded = blockzoo::LoadModelFile(*models_dir_ + "/stories260K/stories260K.bin", std::nullopt);
  ASSERT_THAT(loaded, IsOk());
  auto chain = runtime::BuildChain(loaded->weights);
  ASSERT_THAT(chain, IsOk());
  auto probe = MakeEngine();
  RequestSpec scored = Spec(*probe, "base", 30, 6);
  scored.prompt_logprobs = 3;
  const int n = static_cast<int>(scored.prompt.size());
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  runtime::Batch b;
  b.Add(1, 0, scored.prompt.data(), n, runtime::SeqSpan::Logits::kAll);
  ASSERT_THAT(chain->Forward(b, ctx), IsOk());
  const int vocab = chain->config().vocab_size;

  const Result alone = Run(*probe, {scored})[0];
  ASSERT_EQ(alone.prompt_logprobs.size(), static_cast<size_t>(n - 1));
  for (int p = 0; p + 1 < n; ++p) {
    const runtime::Logprobs want =
        runtime::ComputeLogprobs(b.logits.data() + p * vocab, vocab, scored.prompt[p + 1], 3);
    const runtime::Logprobs& got = alone.prompt_logprobs[p];
    EXPECT_NEAR(got.logprob, want.logprob, 1e-5) << p;
    ASSERT_EQ(got.top.size(), 3u);
    for (int j = 0; j < 3; ++j) {
      EXPECT_EQ(got.top[j].token, want.top[j].token) << p;
      EXPECT_NEAR(got.top[j].logprob, want.top[j].logprob, 1e-5) << p;
    }
  }

  EngineOptions chunked;
  chunked.scheduler.prefill_chunk = 7;  // the 31-token prompt over five steps
  chunked.scheduler.prefix_cache = true;
  auto e = MakeEngine(chunked);
  RequestSpec other = Spec(*e, "ft5", 12, 5);
  other.prompt_logprobs = 0;
  const auto together =
      Run(*e, {scored, Spec(*e, "ft3", 9, 8, 3), Spec(*e, "lora2", 20, 6, 4), other});
  EXPECT_EQ(together[0].tokens, alone.tokens);
  ExpectSameLogprobs(together[0].prompt_logprobs, alone.prompt_logprobs, "chunked, with strangers");
  EXPECT_EQ(together[3].prompt_logprobs.size(), 12u);
  EXPECT_TRUE(together[1].prompt_logprobs.empty());
  // Finished, its prompt is in the prefix cache; asked again, it is computed and scored again.
  const auto again = Run(*e, {scored})[0];
  ExpectSameLogprobs(again.prompt_logprobs, alone.prompt_logprobs, "after caching the prefix");

  EngineOptions tight;
  tight.kv_page_size = 16;
  tight.kv_max_pages = 6;  // 96 tokens per attn instance: preemptions
  auto t = MakeEngine(tight);
  std::vector<RequestSpec> specs;
  for (int i = 0; i < 4; ++i) {
    RequestSpec sp = Spec(*t, "base", 8 + i, 40, i % 2 ? 11 + i : 0);
    sp.priority = i;
    sp.prompt_logprobs = 1;
    specs.push_back(sp);
  }
  const auto preempted = Run(*t, specs);
  EXPECT_GT(t->stats().preemptions, 0u);
  for (size_t i = 0; i < specs.size(); ++i) {
    auto fresh = MakeEngine();
    const Result one = Run(*fresh, {specs[i]})[0];
    EXPECT_EQ(preempted[i].tokens, one.tokens) << i;
    ExpectSameLogprobs(preempted[i].prompt_logprobs, one.prompt_logprobs,
                       "preempted " + std::to_string(i));
  }
}

TEST_F(EngineTest, LoraAdaptersOfDifferentRanksInOneBatchEqualAlone) {
  auto e = MakeEngine();
  const std::vector<RequestSpec> specs = {Spec(*e, "lora2", 5, 30), Spec(*e, "lora16", 5, 30),
                                          Spec(*e, "base", 5, 30), Spec(*e, "lora16", 9, 20, 7)};
  std::vector<Result> alone;
  for (const auto& s : specs) {
    auto fresh = MakeEngine();
    alone.push_back(Run(*fresh, {s})[0]);
  }
  const auto together = Run(*e, specs);
  for (size_t i = 0; i < specs.size(); ++i) EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
  EXPECT_NE(alone[0].tokens, alone[2].tokens);
  EXPECT_NE(alone[1].tokens, alone[2].tokens);
}

TEST_F(EngineTest, PreemptedRequestsFinishWithTheSameTokens) {
  EngineOptions tight;
  tight.kv_page_size = 16;
  tight.kv_max_pages = 6;  // 96 tokens per attn instance: four 40-token requests cannot all fit
  auto e = MakeEngine(tight);
  std::vector<RequestSpec> specs;
  for (int i = 0; i < 4; ++i) {
    RequestSpec s = Spec(*e, "base", 8 + i, 40, i % 2 ? 11 + i : 0);
    s.priority = i;
    specs.push_back(s);
  }
  std::vector<Result> alone;
  for (const auto& s : specs) {
    auto fresh = MakeEngine();
    alone.push_back(Run(*fresh, {s})[0]);
  }
  const auto together = Run(*e, specs);
  EXPECT_GT(e->stats().preemptions, 0u);
  for (size_t i = 0; i < specs.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
    EXPECT_EQ(together[i].finish, Finish::kLength);
  }
  for (size_t i = 0; i < e->num_instances(); ++i) EXPECT_EQ(e->InstancePages(i), 0);
}

// Loading inside the step that needs a block, or on loader threads while the engine serves
// what is resident (background_loads): the same tokens, within the same budget.
TEST_F(EngineTest, BlocksLoadOnFirstUseAndLruEvictionKeepsTheBudget) {
  for (bool background : {false, true}) {
    SCOPED_TRACE(LoadMode(background));
    runtime::BlockOptions bo;
    auto models = LoadEngineModels(*zoo_, AllModels(), bo, /*lazy=*/true);
    ASSERT_THAT(models, IsOk());
    const uint64_t base_bytes = 1177216;  // stories260K's 12 blocks
    EngineOptions opt;
    opt.threads = 2;
    opt.memory_budget = base_bytes + 4 * 200000;  // the base plus one fine-tune's own blocks
    opt.background_loads = background;
    Engine e(opt, std::move(*models));
    EXPECT_EQ(e.stats().resident_bytes, 0u);
    // One request per fine-tune, one after another in the queue; each needs its own layers 3-4.
    std::vector<RequestSpec> specs;
    for (int i = 1; i <= 7; ++i) specs.push_back(Spec(e, "ft" + std::to_string(i), 4, 12));
    const auto got = Run(e, specs);
    const EngineStats st = e.stats();
    EXPECT_GE(st.block_loads, 8u + 7 * 4);  // base layers 0-2, embed, head + each ft's own
    uint64_t evictions = 0;
    for (const auto& i : st.instances) evictions += i.evictions;
    EXPECT_GT(evictions, 0u);
    EXPECT_LE(st.peak_resident_bytes, opt.memory_budget);
    if (background) {
      EXPECT_EQ(st.load_s, 0.0);  // no step waited for a load
      EXPECT_GT(st.background_load_s, 0.0);
      EXPECT_EQ(st.loading, 0);
    }
    for (size_t i = 0; i < specs.size(); ++i) {
      auto fresh = MakeEngine();
      EXPECT_EQ(got[i].tokens, Run(*fresh, {specs[i]})[0].tokens) << i;
      EXPECT_EQ(got[i].finish, Finish::kLength) << i;
    }
  }
}

// With background loads a cold model's blocks load while the engine keeps generating for the
// models that are resident: here the fine-tune's own blocks are held back by a gate, and the
// base's request gets its tokens step after step meanwhile. Once the gate opens the fine-tune's
// request runs, and both give exactly the tokens they give alone.
TEST_F(EngineTest, AColdModelLoadsWhileTheOthersKeepGenerating) {
  auto models = LoadEngineModels(*zoo_, std::vector<std::string>{"base", "ft1"},
                                 runtime::BlockOptions{}, /*lazy=*/true);
  ASSERT_THAT(models, IsOk());
  std::promise<void> gate;
  std::shared_future<void> open = gate.get_future().share();
  std::atomic<int> gated{0};
  std::set<const BlockSlot*> base_slots;
  for (const auto& slot : (*models)[0].chain) base_slots.insert(slot.get());
  for (auto& slot : (*models)[1].chain) {
    if (base_slots.count(slot.get())) continue;
    auto inner = slot->load;
    slot->load = [inner, open, &gated] {
      ++gated;
      open.wait();
      return inner();
    };
  }
  EngineOptions opt;
  opt.threads = 2;
  opt.background_loads = true;
  Engine e(opt, std::move(*models));
  // Opens the gate on every way out: the engine's destructor waits for its loader threads.
  bool opened = false;
  auto open_gate = [&] {
    if (!opened) gate.set_value();
    opened = true;
  };
  absl::Cleanup release_loaders = open_gate;
  std::vector<Result> got(2);
  auto submit = [&](const RequestSpec& spec, Result& r) {
    ASSERT_THAT(e.Submit(spec,
                         [&r](const Event& ev) {
                           if (ev.token >= 0) r.tokens.push_back(ev.token);
                           if (ev.finish != Finish::kNone) r.finish = ev.finish;
                         }),
                IsOk());
  };
  submit(Spec(e, "base", 4, 40), got[0]);
  while (got[0].tokens.size() < 2) {
    ASSERT_THAT(e.Step(), IsOk());
    CheckKv(e);
  }
  submit(Spec(e, "ft1", 4, 12), got[1]);
  // The fine-tune's loads start (the step queues them) and stall at the gate ...
  ASSERT_THAT(e.Step(), IsOk());
  for (int ms = 0; ms < 20000 && gated.load() == 0; ++ms) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ASSERT_GT(gated.load(), 0);
  // ... and the base keeps going, a token every step.
  const size_t before = got[0].tokens.size();
  for (int step = 0; step < 20; ++step) {
    ASSERT_THAT(e.Step(), IsOk());
    CheckKv(e);
  }
  EXPECT_EQ(got[0].tokens.size(), before + 20);
  EXPECT_TRUE(got[1].tokens.empty());
  EXPECT_GT(e.stats().loading, 0);
  EXPECT_EQ(e.scheduler().num_waiting(), 1);
  // A request waiting for the load can be aborted meanwhile.
  Result aborted;
  auto id = e.Submit(Spec(e, "ft1", 6, 12), [&aborted](const Event& ev) {
    if (ev.token >= 0) aborted.tokens.push_back(ev.token);
    if (ev.finish != Finish::kNone) aborted.finish = ev.finish;
  });
  ASSERT_THAT(id, IsOk());
  ASSERT_THAT(e.Step(), IsOk());
  e.Abort(*id);
  ASSERT_THAT(e.Step(), IsOk());
  CheckKv(e);
  EXPECT_EQ(aborted.finish, Finish::kAbort);
  EXPECT_TRUE(aborted.tokens.empty());
  EXPECT_EQ(e.scheduler().num_waiting(), 1);
  open_gate();
  auto busy = [&] { return got[0].finish == Finish::kNone || got[1].finish == Finish::kNone; };
  for (int step = 0; step < 1000 && busy(); ++step) {
    ASSERT_THAT(e.Step(), IsOk());
    CheckKv(e);
  }
  auto plain = MakeEngine();
  const auto alone = Run(*plain, {Spec(*plain, "base", 4, 40), Spec(*plain, "ft1", 4, 12)});
  EXPECT_EQ(got[0].finish, Finish::kLength);
  EXPECT_EQ(got[1].finish, Finish::kLength);
  EXPECT_EQ(got[0].tokens, alone[0].tokens);
  EXPECT_EQ(got[1].tokens, alone[1].tokens);
  const EngineStats st = e.stats();
  EXPECT_EQ(st.load_s, 0.0);  // no step waited for a load
  EXPECT_EQ(st.loading, 0);
}

TEST_F(EngineTest, LoraAdaptersLoadAndEvictOnDemand) {
  auto eager = MakeEngine();
  const auto want16 = Run(*eager, {Spec(*eager, "lora16", 5, 12)});
  const auto want2 = Run(*eager, {Spec(*eager, "lora2", 5, 12)});
  for (bool background : {false, true}) {
    SCOPED_TRACE(LoadMode(background));
    runtime::BlockOptions bo;
    auto models = LoadEngineModels(*zoo_, {"base", "lora2", "lora16"}, bo, /*lazy=*/true);
    ASSERT_THAT(models, IsOk());
    // Room for the base blocks and the adapters of one LoRA model at a time (rank 16's are
    // ~8 KiB per projection here).
    EngineOptions opt;
    opt.threads = 2;
    opt.memory_budget = 1177216 + 160000;
    opt.background_loads = background;
    Engine e(opt, std::move(*models));
    const auto a = Run(e, {Spec(e, "lora16", 5, 12)});
    const auto b = Run(e, {Spec(e, "lora2", 5, 12)});
    const auto c = Run(e, {Spec(e, "lora16", 5, 12)});
    const EngineStats st = e.stats();
    EXPECT_GT(st.adapter_evictions, 0u);
    EXPECT_GE(st.adapter_loads, 3u * 5);  // lora16, lora2, lora16 again (5 attn/ffn blocks each)
    EXPECT_LE(st.peak_resident_bytes, opt.memory_budget);
    if (background) {
      EXPECT_EQ(st.load_s, 0.0);
    }
    EXPECT_EQ(a[0].tokens, want16[0].tokens);
    EXPECT_EQ(c[0].tokens, want16[0].tokens);
    EXPECT_EQ(b[0].tokens, want2[0].tokens);
  }
}

TEST_F(EngineTest, MaxBatchFromAMeasuredProfile) {
  EngineOptions opt;
  opt.profile_max_batch = true;
  auto e = MakeEngine(opt);
  for (const auto& st : e->stats().instances) {
    EXPECT_GE(st.max_batch, 1);
    EXPECT_LE(st.max_batch, 512);
  }
  // Requests still give the same tokens with the measured limits splitting calls.
  auto plain = MakeEngine();
  const RequestSpec s = Spec(*e, "ft1", 30, 10);
  EXPECT_EQ(Run(*e, {s, Spec(*e, "base", 30, 10)})[0].tokens, Run(*plain, {s})[0].tokens);
}

// In a lazy engine (the server's) each instance's limit is measured when it first loads.
TEST_F(EngineTest, MaxBatchIsMeasuredWhenALazyInstanceLoads) {
  for (bool background : {false, true}) {
    SCOPED_TRACE(LoadMode(background));
    auto models = LoadEngineModels(*zoo_, AllModels(), runtime::BlockOptions{}, /*lazy=*/true);
    ASSERT_THAT(models, IsOk());
    EngineOptions opt;
    opt.threads = 2;
    opt.max_batch_tokens = 100000;  // the configured limit, until measured
    opt.profile_max_batch = true;
    opt.background_loads = background;
    Engine e(opt, std::move(*models));
    EXPECT_EQ(e.stats().profile_s, 0.0);
    const RequestSpec s = Spec(e, "ft1", 30, 10);
    const auto got = Run(e, {s, Spec(e, "base", 30, 10)});
    const EngineStats st = e.stats();
    EXPECT_GT(st.profile_s, 0.0);
    int measured = 0;
    for (size_t i = 0; i < st.instances.size(); ++i) {
      const int limit = e.scheduler().instances()[i].max_batch_tokens;
      EXPECT_EQ(st.instances[i].max_batch, limit) << st.instances[i].name;
      if (st.instances[i].loads == 0) {
        EXPECT_EQ(limit, 100000) << st.instances[i].name;  // never loaded: not measured
        continue;
      }
      EXPECT_GE(limit, 1);
      EXPECT_LE(limit, 512);
      ++measured;
    }
    EXPECT_EQ(measured, 12 + 4);  // the base's blocks and ft1's own
    auto plain = MakeEngine();
    EXPECT_EQ(got[0].tokens, Run(*plain, {s})[0].tokens);
  }
}

TEST_F(EngineTest, KvBudgetIsSplitByHowManyModelsUseABlock) {
  EngineOptions opt;
  opt.kv_budget_bytes = 2 << 20;
  auto e = MakeEngine(opt);
  // attn of layer 0 is used by all 10 models; a fine-tune's own attn of layer 4 by one.
  const auto st = e->stats();
  int shared_cap = 0, own_cap = 1 << 30;
  for (const auto& i : st.instances) {
    if (i.kind != runtime::BlockKind::kAttn) continue;
    shared_cap = std::max(shared_cap, i.kv_pages_free);
    own_cap = std::min(own_cap, i.kv_pages_free);
  }
  EXPECT_EQ(shared_cap, 10 * 2 * 1024 * 1024 / (50 * 4096));  // 2 MiB * 10 / sum(users * 4 KiB)
  EXPECT_EQ(own_cap, 2 * 1024 * 1024 / (50 * 4096));
  std::vector<RequestSpec> specs;
  for (int i = 1; i <= 4; ++i) specs.push_back(Spec(*e, "ft" + std::to_string(i), 20, 30));
  const auto got = Run(*e, specs);
  for (size_t i = 0; i < specs.size(); ++i) {
    auto fresh = MakeEngine();
    EXPECT_EQ(got[i].tokens, Run(*fresh, {specs[i]})[0].tokens) << i;
  }
}

// A bf16 KV cache: half the bytes per page (the budget holds twice the pages), still batch
// invariant (a request with strangers gives what it gives alone), and close to f32 KV.
TEST_F(EngineTest, Bf16KvHalvesPagesKeepsBatchInvarianceAndTracksF32) {
  EngineOptions opt;
  opt.kv_dtype = runtime::DType::kBF16;
  opt.kv_budget_bytes = 2 << 20;
  auto e = MakeEngine(opt);
  int shared_cap = 0;
  for (const auto& i : e->stats().instances) {
    if (i.kind == runtime::BlockKind::kAttn) shared_cap = std::max(shared_cap, i.kv_pages_free);
  }
  EXPECT_EQ(shared_cap, 10 * 2 * 1024 * 1024 / (50 * 2048));  // pages of 2 KiB, not 4
  const std::vector<RequestSpec> specs = {Spec(*e, "base", 6, 40), Spec(*e, "ft3", 4, 30),
                                          Spec(*e, "lora16", 5, 30), Spec(*e, "base", 9, 30, 5)};
  EngineOptions bf16;
  bf16.kv_dtype = runtime::DType::kBF16;
  std::vector<Result> alone;
  for (const auto& s : specs) {
    auto fresh = MakeEngine(bf16);
    alone.push_back(Run(*fresh, {s})[0]);
  }
  const auto together = Run(*e, specs);
  for (size_t i = 0; i < specs.size(); ++i) EXPECT_EQ(together[i].tokens, alone[i].tokens) << i;
  // Against the exact (f32 KV) run of the same greedy request: K and V rounded to 8 bits of
  // mantissa move the logits a little; the greedy tokens agree at least at the start.
  auto f32 = MakeEngine();
  const auto exact = Run(*f32, {specs[0]})[0].tokens;
  ASSERT_EQ(exact.size(), alone[0].tokens.size());
  size_t same = 0;
  while (same < exact.size() && exact[same] == alone[0].tokens[same]) ++same;
  std::printf("bf16 KV: greedy tokens agree with f32 KV for %zu of %zu\n", same, exact.size());
  EXPECT_GE(same, 8u);
}

TEST_F(EngineTest, DedicatedCopiesShareNothing) {
  runtime::BlockOptions bo;
  auto models = LoadEngineModels(*zoo_, {"base", "ft1", "ft2"}, bo, /*lazy=*/true, /*share=*/false);
  ASSERT_THAT(models, IsOk());
  EngineOptions opt;
  opt.threads = 2;
  Engine e(opt, std::move(*models));
  EXPECT_EQ(e.num_instances(), 36u);
  const auto got = Run(e, {Spec(e, "base", 4, 10), Spec(e, "ft1", 4, 10)});
  auto shared = MakeEngine();
  EXPECT_EQ(got[0].tokens, Run(*shared, {Spec(*shared, "base", 4, 10)})[0].tokens);
}

TEST_F(EngineTest, EquivalentPolicyRunsOnTheSubstitutesInstances) {
  testing::TempDir tmp;
  auto z = blockzoo::Zoo::Open(tmp.path(), true);
  ASSERT_THAT(z, IsOk());
  blockzoo::Zoo& zoo = **z;
  for (const char* name : {"base", "base-copy"}) {  // the base's blocks have two users
    blockzoo::ImportOptions io;
    io.name = name;
    ASSERT_THAT(blockzoo::ImportModel(zoo, *models_dir_ + "/stories260K/stories260K.bin", io),
                IsOk());
  }
  blockzoo::DeriveOptions d;
  d.base = "base";
  d.name = "tiny";
  d.top_layers = 1;
  d.rel_norm = 1e-3;
  ASSERT_THAT(blockzoo::DeriveModel(zoo, d), IsOk());
  blockzoo::EquivOptions eo;
  eo.model = "tiny";
  eo.threads = 2;
  auto rec = blockzoo::EvaluateEquivalence(zoo, eo);
  ASSERT_THAT(rec, IsOk());
  {
    auto lock = zoo.LockForWrite();
    ASSERT_THAT(lock, IsOk());
    ASSERT_THAT(blockzoo::StoreEquivRecord(zoo, *lock, *rec), IsOk());
  }
  blockzoo::ResolvePolicy eq;
  eq.mode = blockzoo::ResolvePolicy::Mode::kEquivalent;
  eq.threshold = 0.99;
  auto models = LoadEngineModels(zoo, std::vector<ModelRef>{{"base", {}, "base"},
                                                            {"tiny", {}, "tiny"},
                                                            {"tiny", eq, "tiny~"}},
                                 {});
  ASSERT_THAT(models, IsOk());
  EngineOptions opt;
  opt.threads = 2;
  Engine e(opt, std::move(*models));
  EXPECT_EQ(e.num_instances(), 12u + 2);  // tiny's own layer 4 (exact); tiny~ reuses the base's
  const auto got = Run(e, {Spec(e, "base", 4, 20), Spec(e, "tiny", 4, 20), Spec(e, "tiny~", 4, 20)});
  EXPECT_EQ(got[2].tokens, got[0].tokens);  // tiny~ runs exactly the base's blocks
  int same = 0;
  for (size_t i = 0; i < 20; ++i) same += got[1].tokens[i] == got[2].tokens[i];
  EXPECT_GE(same, 18);  // and stays close to tiny itself
}

// A block file that cannot be loaded (damaged on disk after the engine started) fails the
// requests of the model that needs it — not the other tenants' requests planned in the same
// step, which then give exactly their tokens — and the engine keeps serving.
TEST_F(EngineTest, ABlockThatFailsToLoadFailsOnlyTheRequestsThatNeedIt) {
  testing::TempDir tmp;
  auto z = ZooWithBase(tmp);
  ASSERT_NE(z, nullptr);
  blockzoo::Zoo& zoo = *z;
  blockzoo::DeriveOptions d;
  d.base = "base";
  d.name = "ft";
  d.top_layers = 1;
  d.rel_norm = 0.1;
  ASSERT_THAT(blockzoo::DeriveModel(zoo, d), IsOk());
  // Truncate the fine-tune's own blocks (the ones the base does not use).
  auto base = zoo.GetManifest("base");
  auto ft = zoo.GetManifest("ft");
  ASSERT_THAT(base, IsOk());
  ASSERT_THAT(ft, IsOk());
  std::set<std::string> base_blocks;
  for (const auto& entry : base->chain) base_blocks.insert(entry.block);
  int damaged = 0;
  for (const auto& entry : ft->chain) {
    if (base_blocks.count(entry.block)) continue;
    std::filesystem::resize_file(zoo.BlockPath(entry.block), 16);
    ++damaged;
  }
  ASSERT_GT(damaged, 0);
  auto plain = MakeEngine();
  const auto alone = Run(*plain, {Spec(*plain, "base", 4, 12)});
  for (bool background : {false, true}) {
    SCOPED_TRACE(LoadMode(background));
    auto engine = LazyEngine(zoo, {"base", "ft"}, background);
    ASSERT_NE(engine, nullptr);
    Engine& e = *engine;
    const auto got =
        Run(e, {Spec(e, "ft", 4, 12), Spec(e, "base", 4, 12), Spec(e, "ft", 9, 12)});
    EXPECT_EQ(got[0].finish, Finish::kError);
    EXPECT_TRUE(got[0].tokens.empty());
    EXPECT_EQ(got[2].finish, Finish::kError);
    EXPECT_EQ(got[0].error, "model ft is unavailable: one of its blocks failed to load");
    EXPECT_EQ(got[1].finish, Finish::kLength);
    EXPECT_EQ(got[1].tokens, alone[0].tokens);
    // Still serving: the base again, and the fine-tune fails again (its files are still bad).
    const auto again = Run(e, {Spec(e, "base", 4, 12), Spec(e, "ft", 4, 12)});
    EXPECT_EQ(again[0].tokens, alone[0].tokens);
    EXPECT_EQ(again[1].finish, Finish::kError);
    for (const auto& st : e.stats().instances) EXPECT_EQ(st.kv_pages_used, 0) << st.name;
  }
}

// The same for a LoRA adapter: the LoRA model's requests fail, the base's — in the same calls
// of the shared blocks the adapter would attach to — give exactly their tokens.
TEST_F(EngineTest, AnAdapterThatFailsToLoadFailsOnlyItsModelsRequests) {
  testing::TempDir tmp;
  auto z = ZooWithBase(tmp);
  ASSERT_NE(z, nullptr);
  blockzoo::Zoo& zoo = *z;
  blockzoo::DeriveOptions d;
  d.base = "base";
  d.name = "lora";
  d.recipe = blockzoo::DeriveOptions::Recipe::kLora;
  d.lora_rank = 4;
  d.lora_targets = {"wq", "wv"};
  d.rel_norm = 0.2;
  ASSERT_THAT(blockzoo::DeriveModel(zoo, d), IsOk());
  auto lora = zoo.GetManifest("lora");
  ASSERT_THAT(lora, IsOk());
  int damaged = 0;
  for (const auto& entry : lora->chain) {
    if (entry.lora.empty()) continue;
    std::filesystem::resize_file(zoo.BlockPath(entry.lora), 16);
    ++damaged;
  }
  ASSERT_GT(damaged, 0);
  auto plain = MakeEngine();
  const auto alone = Run(*plain, {Spec(*plain, "base", 4, 12)});
  for (bool background : {false, true}) {
    SCOPED_TRACE(LoadMode(background));
    auto engine = LazyEngine(zoo, {"base", "lora"}, background);
    ASSERT_NE(engine, nullptr);
    Engine& e = *engine;
    const auto got = Run(e, {Spec(e, "lora", 4, 12), Spec(e, "base", 4, 12)});
    EXPECT_EQ(got[0].finish, Finish::kError);
    EXPECT_EQ(got[0].error, "model lora is unavailable: one of its blocks failed to load");
    EXPECT_EQ(got[1].tokens, alone[0].tokens);
    EXPECT_EQ(got[1].finish, Finish::kLength);
    EXPECT_EQ(e.stats().adapters_resident, 0);
  }
}

TEST_F(EngineTest, PrefixCacheGivesTheSameTokensAndFreesCleanly) {
  EngineOptions opt;
  opt.scheduler.prefix_cache = true;
  opt.kv_max_pages = 12;
  auto e = MakeEngine(opt);
  const RequestSpec s = Spec(*e, "ft2", 40, 24, 9);
  const auto first = Run(*e, {s});
  EXPECT_EQ(e->stats().prefix_entries, 1);
  const auto second = Run(*e, {s, Spec(*e, "ft2", 40, 10)});
  EXPECT_EQ(second[0].tokens, first[0].tokens);
  EXPECT_GE(e->stats().prefix_hits, 1u);
  auto plain = MakeEngine();
  EXPECT_EQ(Run(*plain, {s})[0].tokens, first[0].tokens);
  // Another model (another chain) never reuses it.
  const uint64_t hits = e->stats().prefix_hits;
  Run(*e, {Spec(*e, "ft3", 40, 4)});
  EXPECT_EQ(e->stats().prefix_hits, hits);
}

TEST_F(EngineTest, AbortFreesEveryPage) {
  auto e = MakeEngine();
  std::vector<Result> out(3);
  std::vector<RequestId> ids;
  for (int i = 0; i < 3; ++i) {
    auto id = e->Submit(Spec(*e, i == 0 ? "base" : "ft" + std::to_string(i), 10, 100),
                        [&out, i](const Event& ev) {
                          if (ev.token >= 0) out[i].tokens.push_back(ev.token);
        if (ev.logprobs) out[i].logprobs.push_back(*ev.logprobs);
        out[i].prompt_logprobs.insert(out[i].prompt_logprobs.end(), ev.prompt_logprobs.begin(),
                                      ev.prompt_logprobs.end());
                          if (ev.finish != Finish::kNone) out[i].finish = ev.finish;
                        });
    ASSERT_THAT(id, IsOk());
    ids.push_back(*id);
  }
  e->Abort(ids[2]);  // before it ever ran
  for (int step = 0; step < 5; ++step) {
    ASSERT_THAT(e->Step(), IsOk());
    CheckKv(*e);
  }
  e->Abort(ids[0]);  // mid-decode
  e->Abort(ids[1]);
  ASSERT_THAT(e->Step(), IsOk());
  ASSERT_THAT(e->Step(), IsOk());
  CheckKv(*e);
  for (size_t i = 0; i < e->num_instances(); ++i) EXPECT_EQ(e->InstancePages(i), 0) << i;
  for (const auto& r : out) EXPECT_EQ(r.finish, Finish::kAbort);
  EXPECT_TRUE(out[2].tokens.empty());
  EXPECT_FALSE(out[0].tokens.empty());
}

// Background loading under pressure: ten models (fine-tunes and LoRA) behind a budget that
// holds the base and one fine-tune's own blocks, requests arriving over many steps in a fixed
// pseudo-random order, some aborted while they wait or run. Every step: KV accounting equals the
// blocks' caches and resident weights (with what is loading) stay within the budget. At the end:
// every request finished, the ones not aborted with exactly their tokens alone, no page held.
TEST_F(EngineTest, LoadingUnderMemoryPressureStaysExactAndInBudget) {
  for (bool background : {false, true}) {
    SCOPED_TRACE(LoadMode(background));
    PressureRun(background);
  }
}

void EngineTest::PressureRun(bool background) {
  auto models = LoadEngineModels(*zoo_, AllModels(), runtime::BlockOptions{}, /*lazy=*/true);
  ASSERT_THAT(models, IsOk());
  EngineOptions opt;
  opt.threads = 2;
  opt.memory_budget = 1177216 + 4 * 200000;  // the base plus one fine-tune's own blocks
  opt.background_loads = background;
  Engine e(opt, std::move(*models));
  const std::vector<std::string> names = AllModels();
  std::mt19937 rng(7);
  constexpr int kRequests = 24;
  std::vector<RequestSpec> specs;
  for (int i = 0; i < kRequests; ++i) {
    specs.push_back(Spec(e, names[rng() % names.size()], 3 + static_cast<int>(rng() % 12),
                         4 + static_cast<int>(rng() % 10)));
  }
  std::vector<Result> got(kRequests);
  std::vector<RequestId> ids(kRequests, 0);
  std::set<int> aborted;
  int submitted = 0;
  for (int step = 0; step < 5000; ++step) {
    if (submitted < kRequests && step % 3 == 0) {  // one arrival every third step
      const int i = submitted++;
      auto id = e.Submit(specs[i], [&got, i](const Event& ev) {
        if (ev.token >= 0) got[i].tokens.push_back(ev.token);
        if (ev.finish != Finish::kNone) got[i].finish = ev.finish;
      });
      ASSERT_THAT(id, IsOk());
      ids[i] = *id;
    }
    if (step % 7 == 5 && submitted > 0) {  // now and then abort a recent one
      const int i = submitted - 1;
      if (got[i].finish == Finish::kNone && aborted.size() < 5) {
        e.Abort(ids[i]);
        aborted.insert(i);
      }
    }
    ASSERT_THAT(e.Step(), IsOk());
    CheckKv(e);
    const EngineStats st = e.stats();
    ASSERT_LE(st.peak_resident_bytes, opt.memory_budget) << "step " << step;
    bool all_done = submitted == kRequests;
    for (const Result& r : got) all_done &= r.finish != Finish::kNone;
    if (all_done) break;
  }
  const EngineStats st = e.stats();
  if (background) {
    EXPECT_EQ(st.load_s, 0.0);  // every load ran on the loader threads
  }
  EXPECT_GT(st.block_loads, 12u);
  EXPECT_EQ(st.loading, 0);
  for (size_t i = 0; i < e.num_instances(); ++i) EXPECT_EQ(e.InstancePages(i), 0) << i;
  auto plain = MakeEngine();
  int exact = 0;
  for (int i = 0; i < kRequests; ++i) {
    if (aborted.count(i)) {
      EXPECT_EQ(got[i].finish, Finish::kAbort) << i;
      continue;
    }
    EXPECT_EQ(got[i].finish, Finish::kLength) << i;
    EXPECT_EQ(got[i].tokens, Run(*plain, {specs[i]})[0].tokens) << i;
    ++exact;
  }
  EXPECT_GE(exact, kRequests - 5);
}

TEST_F(EngineTest, EngineThreadServesConcurrentSubmitters) {
  auto e = MakeEngine();
  e->Start();
  std::mutex mu;
  std::condition_variable cv;
  int done = 0;
  std::vector<Result> out(6);
  std::vector<std::thread> clients;
  for (int i = 0; i < 6; ++i) {
    clients.emplace_back([&, i] {
      auto id = e->Submit(Spec(*e, AllModels()[i], 4, 16), [&, i](const Event& ev) {
        std::lock_guard<std::mutex> lock(mu);
        if (ev.token >= 0) out[i].tokens.push_back(ev.token);
        if (ev.logprobs) out[i].logprobs.push_back(*ev.logprobs);
        out[i].prompt_logprobs.insert(out[i].prompt_logprobs.end(), ev.prompt_logprobs.begin(),
                                      ev.prompt_logprobs.end());
        if (ev.finish != Finish::kNone) {
          out[i].finish = ev.finish;
          ++done;
          cv.notify_all();
        }
      });
      EXPECT_THAT(id, IsOk());
    });
  }
  for (auto& t : clients) t.join();
  std::unique_lock<std::mutex> lock(mu);
  ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(60), [&] { return done == 6; }));
  lock.unlock();
  e->Stop();
  for (const auto& r : out) {
    EXPECT_EQ(r.finish, Finish::kLength);
    EXPECT_EQ(r.tokens.size(), 16u);
  }
}

}  // namespace
}  // namespace blockserve::scheduler
