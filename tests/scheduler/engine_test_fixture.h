// The fixture of the engine tests (engine_test.cc, engine_loading_test.cc): stories260K and
// synthetic fine-tunes and LoRA models of it in one zoo, engines over them, a runner that steps
// an engine to the end checking KV accounting after every step, and the monolithic model's
// logits to check log-probabilities against.
#pragma once

#include "scheduler/engine.h"

#include <functional>
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
#include "scheduler/zoo_engine.h"
#include "tests/testing/counting_backend.h"
#include "tests/testing/test_workers.h"
#include "tests/testing/test_util.h"

namespace blockserve::scheduler {

using testing::IsOk;

// The two ways an engine loads blocks, for test traces (EngineOptions::background_loads).
inline const char* LoadMode(bool background) {
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
inline void ExpectSameLogprobs(const std::vector<runtime::Logprobs>& a,
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
    bo.backend = testing::TestBackend();
    auto models = LoadEngineModels(*zoo_, AllModels(), bo, /*lazy=*/false, /*share=*/true,
                                   testing::TestBlockSource(*zoo_));
    EXPECT_THAT(models, IsOk());
    if (opt.threads == 0) opt.threads = 2;
    opt.backend = bo.backend;
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
    runtime::BlockOptions bo;
    bo.backend = testing::TestBackend();
    auto models = LoadEngineModels(zoo, names, bo, /*lazy=*/true, /*share=*/true,
                                   testing::TestBlockSource(zoo));
    EXPECT_THAT(models, IsOk());
    if (!models.ok()) return nullptr;
    EngineOptions opt;
    opt.threads = 2;
    opt.backend = bo.backend;
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

  // In both load modes: a request of `model` (whose files are damaged) fails with the load error
  // and no tokens, and the base's request beside it gives exactly its tokens alone; `also` checks
  // more on each engine afterwards.
  void ExpectFailsBesideTheBase(const blockzoo::Zoo& zoo, const std::string& model,
                                const std::function<void(Engine&)>& also = nullptr) {
    auto plain = MakeEngine();
    const auto alone = Run(*plain, {Spec(*plain, "base", 4, 12)});
    for (bool background : {false, true}) {
      SCOPED_TRACE(LoadMode(background));
      auto engine = LazyEngine(zoo, {"base", model}, background);
      ASSERT_NE(engine, nullptr);
      Engine& e = *engine;
      const auto got = Run(e, {Spec(e, model, 4, 12), Spec(e, "base", 4, 12)});
      EXPECT_EQ(got[0].finish, Finish::kError);
      EXPECT_TRUE(got[0].tokens.empty());
      EXPECT_EQ(got[0].error, "model " + model + " is unavailable: one of its blocks failed to load");
      EXPECT_EQ(got[1].tokens, alone[0].tokens);
      EXPECT_EQ(got[1].finish, Finish::kLength);
      if (also) also(e);
    }
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

  // The monolithic model's logits at every position of `tokens` ([tokens][vocab]), its
  // vocabulary in `*vocab`: what the engine's log-probabilities are checked against.
  static std::vector<float> MonolithLogits(const std::vector<int32_t>& tokens, int* vocab) {
    auto loaded =
        blockzoo::LoadModelFile(*models_dir_ + "/stories260K/stories260K.bin", std::nullopt);
    EXPECT_THAT(loaded, IsOk());
    if (!loaded.ok()) return {};
    auto chain = runtime::BuildChain(loaded->weights);
    EXPECT_THAT(chain, IsOk());
    if (!chain.ok()) return {};
    runtime::CpuDevice cpu(2);
    runtime::ExecContext ctx(&cpu);
    runtime::Batch b;
    b.Add(1, 0, tokens.data(), static_cast<int>(tokens.size()), runtime::SeqSpan::Logits::kAll);
    EXPECT_THAT(chain->Forward(b, ctx), IsOk());
    *vocab = chain->config().vocab_size;
    return b.logits;
  }

  inline static std::string* models_dir_ = nullptr;
  inline static testing::TempDir* tmp_ = nullptr;
  inline static blockzoo::Zoo* zoo_ = nullptr;
};

}  // namespace blockserve::scheduler
