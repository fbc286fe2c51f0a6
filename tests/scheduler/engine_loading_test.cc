// Block residency on real blocks: blocks and LoRA adapters load on first use (inside the step
// or on loader threads) and are evicted under a memory budget, batch limits are measured as
// instances load, and a block or adapter that fails to load fails only its model's requests —
// every other request exact, the budget and KV accounting held at every step.
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "absl/cleanup/cleanup.h"
#include "tests/scheduler/engine_test_fixture.h"

namespace blockserve::scheduler {
namespace {

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
  // The fine-tune's own blocks come from a source that waits at the gate.
  class GatedSource final : public BlockSource {
   public:
    GatedSource(std::shared_ptr<const BlockSource> inner, std::shared_future<void> open,
                std::atomic<int>* gated)
        : inner_(std::move(inner)), open_(std::move(open)), gated_(gated) {}
    absl::StatusOr<std::shared_ptr<runtime::Block>> LoadBlock(const BlockRef& ref) const override {
      ++*gated_;
      open_.wait();
      return inner_->LoadBlock(ref);
    }
    absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> LoadAdapter(
        const BlockRef& ref) const override {
      return inner_->LoadAdapter(ref);
    }

   private:
    std::shared_ptr<const BlockSource> inner_;
    std::shared_future<void> open_;
    std::atomic<int>* gated_;
  };
  for (auto& slot : (*models)[1].chain) {
    if (base_slots.count(slot.get())) continue;
    slot->source = std::make_shared<GatedSource>(slot->source, open, &gated);
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

// A block file that cannot be loaded (damaged on disk after the engine started) fails the
// requests of the model that needs it — not the other tenants' requests planned in the same
// step, which then give exactly their tokens — and the engine keeps serving.
// Derives "ft" from "base" in `zoo` (its top layer its own); the paths of ft's own block files
// (the ones the base does not use).
std::vector<std::string> DeriveFtOwnBlocks(blockzoo::Zoo& zoo) {
  blockzoo::DeriveOptions d;
  d.base = "base";
  d.name = "ft";
  d.top_layers = 1;
  d.rel_norm = 0.1;
  EXPECT_THAT(blockzoo::DeriveModel(zoo, d), IsOk());
  auto base = zoo.GetManifest("base");
  auto ft = zoo.GetManifest("ft");
  if (!base.ok() || !ft.ok()) return {};
  std::set<std::string> base_blocks;
  for (const auto& entry : base->chain) base_blocks.insert(entry.block);
  std::vector<std::string> own;
  for (const auto& entry : ft->chain) {
    if (!base_blocks.count(entry.block)) own.push_back(zoo.BlockPath(entry.block));
  }
  return own;
}

TEST_F(EngineTest, ABlockThatFailsToLoadFailsOnlyTheRequestsThatNeedIt) {
  testing::TempDir tmp;
  auto z = ZooWithBase(tmp);
  ASSERT_NE(z, nullptr);
  blockzoo::Zoo& zoo = *z;
  // Truncate the fine-tune's own blocks.
  const std::vector<std::string> own = DeriveFtOwnBlocks(zoo);
  ASSERT_FALSE(own.empty());
  for (const std::string& path : own) std::filesystem::resize_file(path, 16);
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

// One flipped bit in a tensor of a block file (its size and header intact): the load checks
// the block's content hash, so the model's requests fail with a clear error instead of being
// answered from corrupt weights; the other model's requests are untouched.
TEST_F(EngineTest, AFlippedBitInABlockFailsItsModelsRequests) {
  testing::TempDir tmp;
  auto z = ZooWithBase(tmp);
  ASSERT_NE(z, nullptr);
  blockzoo::Zoo& zoo = *z;
  const std::vector<std::string> own = DeriveFtOwnBlocks(zoo);
  ASSERT_FALSE(own.empty());
  {
    std::fstream f(own.back(), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-3, std::ios::end);
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(-3, std::ios::end);
    f.write(&c, 1);
  }
  ExpectFailsBesideTheBase(zoo, "ft");
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
  ExpectFailsBesideTheBase(zoo, "lora", [](Engine& e) { EXPECT_EQ(e.stats().adapters_resident, 0); });
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


}  // namespace

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

}  // namespace blockserve::scheduler

namespace blockserve::scheduler {
namespace {

// The same weights imported twice with different declared contexts (llama2.c: 512, the GGUF:
// 2048) share their block instances; the shared instances are sized for the longest user, so
// the 2048-context model runs past 512 tokens (it failed there when the instances took the
// context of whichever model came first).
TEST_F(EngineTest, SharedInstancesServeTheLongestContextOfTheirModels) {
  testing::TempDir tmp;
  auto z = blockzoo::Zoo::Open(tmp.path(), true);
  ASSERT_THAT(z, IsOk());
  blockzoo::ImportOptions a, b;
  a.name = "a-llama2c";
  b.name = "b-gguf";
  ASSERT_THAT(blockzoo::ImportModel(**z, *models_dir_ + "/stories260K/stories260K.bin", a), IsOk());
  ASSERT_THAT(blockzoo::ImportModel(**z, *models_dir_ + "/stories260K-gguf/stories260K.gguf", b), IsOk());
  auto models = LoadEngineModels(**z, std::vector<std::string>{"a-llama2c", "b-gguf"},
                                 runtime::BlockOptions{}, /*lazy=*/true);
  ASSERT_THAT(models, IsOk());
  ASSERT_EQ((*models)[0].config.max_seq_len, 512);
  ASSERT_EQ((*models)[1].config.max_seq_len, 2048);
  int shared = 0;
  for (size_t i = 0; i < (*models)[0].chain.size(); ++i) shared += (*models)[0].chain[i] == (*models)[1].chain[i];
  ASSERT_GT(shared, 0) << "the two imports should share blocks";
  EngineOptions opt;
  opt.threads = 2;
  Engine e(opt, std::move(*models));
  const auto got = Run(e, {Spec(e, "b-gguf", 4, 700)});
  EXPECT_EQ(got[0].finish, Finish::kLength) << got[0].error;
  EXPECT_EQ(got[0].tokens.size(), 700u);
  // The 512-context model still stops at its own context.
  const auto short_ctx = Run(e, {Spec(e, "a-llama2c", 4, 700)});
  EXPECT_LE(short_ctx[0].tokens.size(), 512u);
}

}  // namespace
}  // namespace blockserve::scheduler
