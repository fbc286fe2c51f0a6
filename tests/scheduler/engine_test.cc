// The engine on real blocks: stories260K and synthetic fine-tunes of it in one zoo, loaded as
// shared block instances. A request gives the same tokens alone, batched with requests of 7
// other models, with LoRA adapters of other ranks in the batch, after being preempted, and as
// the monolithic model; log-probabilities are the monolith's; abort frees every page. KV
// accounting is checked against the blocks' real caches after every step. Loading, eviction
// and load failures: engine_loading_test.cc.
#include <atomic>
#include <future>
#include <thread>

#include "tests/scheduler/engine_test_fixture.h"

namespace blockserve::scheduler {
namespace {

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
  const RequestSpec s = Spec(*e, "base", 6, 40);
  // The monolithic model, greedy, by the plainest loop: the whole sequence through the chain
  // each time (no KV carried between steps, no engine).
  std::vector<int32_t> seq = s.prompt, mono;
  const int vocab = chain->config().vocab_size;
  while (mono.size() < 40) {
    runtime::Batch b;
    b.Add(1, 0, seq.data(), static_cast<int>(seq.size()));
    ASSERT_THAT(chain->Forward(b, ctx), IsOk());
    chain->ReleaseSequence(1);
    const int32_t next = static_cast<int32_t>(
        std::max_element(b.logits.begin(), b.logits.begin() + vocab) - b.logits.begin());
    mono.push_back(next);
    seq.push_back(next);
  }
  // Batched with other models' requests in the same engine.
  const auto got = Run(*e, {s, Spec(*e, "ft3", 4, 10), Spec(*e, "lora2", 5, 30)});
  EXPECT_EQ(got[0].tokens, mono);
}

// Log-probabilities of generated tokens: those of the monolithic model's logits at each
// position (a whole-sequence forward pass), and bit-for-bit the same batched with strangers
// (other models, LoRA, sampled) as alone.
TEST_F(EngineTest, LogprobsMatchTheMonolithicModelAndAreBatchInvariant) {
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
  int vocab = 0;
  const std::vector<float> mono = MonolithLogits(seq, &vocab);
  ASSERT_EQ(mono.size(), seq.size() * vocab);
  const size_t p = specs[0].prompt.size();
  for (size_t t = 0; t < together[0].tokens.size(); ++t) {
    const float* logits = mono.data() + (p - 1 + t) * vocab;
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
  auto probe = MakeEngine();
  RequestSpec scored = Spec(*probe, "base", 30, 6);
  scored.prompt_logprobs = 3;
  const int n = static_cast<int>(scored.prompt.size());
  int vocab = 0;
  const std::vector<float> mono = MonolithLogits(scored.prompt, &vocab);
  ASSERT_EQ(mono.size(), static_cast<size_t>(n) * vocab);

  const Result alone = Run(*probe, {scored})[0];
  ASSERT_EQ(alone.prompt_logprobs.size(), static_cast<size_t>(n - 1));
  for (int p = 0; p + 1 < n; ++p) {
    const runtime::Logprobs want =
        runtime::ComputeLogprobs(mono.data() + p * vocab, vocab, scored.prompt[p + 1], 3);
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

// A request stopped from outside (a stop string the server found in its text) finishes as a
// stop, not an abort: the stats count a stop and its KV feeds the prefix cache, which the same
// prompt then starts from.
TEST_F(EngineTest, AStopFinishFeedsThePrefixCache) {
  EngineOptions opt;
  opt.scheduler.prefix_cache = true;
  auto e = MakeEngine(opt);
  const RequestSpec s = Spec(*e, "ft2", 40, 100);
  Result got;
  RequestId id = 0;
  auto submitted = e->Submit(s, [&](const Event& ev) {
    if (ev.token >= 0) got.tokens.push_back(ev.token);
    if (ev.finish != Finish::kNone) got.finish = ev.finish;
    if (got.tokens.size() == 5 && ev.finish == Finish::kNone) e->StopRequest(id);
  });
  ASSERT_THAT(submitted, IsOk());
  id = *submitted;  // the sink runs in Step, after this
  for (int step = 0; step < 1000; ++step) {
    auto worked = e->Step();
    ASSERT_THAT(worked, IsOk());
    CheckKv(*e);
    if (!*worked) break;
  }
  EXPECT_EQ(got.finish, Finish::kStop);
  EXPECT_EQ(got.tokens.size(), 5u);
  const EngineStats st = e->stats();
  EXPECT_EQ(st.finished[static_cast<int>(Finish::kStop)], 1u);
  EXPECT_EQ(st.finished[static_cast<int>(Finish::kAbort)], 0u);
  EXPECT_EQ(st.prefix_entries, 1);
  const auto again = Run(*e, {Spec(*e, "ft2", 40, 8)});
  EXPECT_GE(e->stats().prefix_hits, 1u);
  auto plain = MakeEngine();
  EXPECT_EQ(again[0].tokens, Run(*plain, {Spec(*plain, "ft2", 40, 8)})[0].tokens);
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
