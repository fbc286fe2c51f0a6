// The scheduler's plans, step by step, on a fake executor (no blocks run): who is batched at
// which block instance, chunked prefill, per-block batch limits, preemption order, fairness
// between tenants, aborts; KV accounting invariants after every step.
#include "scheduler/scheduler.h"

#include "tests/testing/test_util.h"

namespace blockserve::scheduler {
namespace {

using runtime::BlockKind;
using testing::IsOk;

// Instances: 0 embed, 1 attn (shared), 2 ffn (shared), 3 attn (model 1 only), 4 ffn, 5 head.
// Model 0: 0 1 2 5; model 1: 0 3 4 5 (its own layer); model 2: 0 1 2 5 (shares all with 0).
struct Fixture {
  // `bytes`: every instance's weight memory (for memory budgets).
  explicit Fixture(SchedulerConfig cfg = {}, int kv_pages = 0, int max_batch = 1 << 20,
                   uint64_t bytes = 0) {
    std::vector<InstanceInfo> inst = {{BlockKind::kEmbed, max_batch, 16, 0, bytes},
                                      {BlockKind::kAttn, max_batch, 16, kv_pages, bytes},
                                      {BlockKind::kFfn, max_batch, 16, 0, bytes},
                                      {BlockKind::kAttn, max_batch, 16, kv_pages, bytes},
                                      {BlockKind::kFfn, max_batch, 16, 0, bytes},
                                      {BlockKind::kHead, max_batch, 16, 0, bytes}};
    std::vector<ModelInfo> models = {{"m0", {0, 1, 2, 5}, 0, 1024, 100},
                                     {"m1", {0, 3, 4, 5}, 0, 1024, 100},
                                     {"m2", {0, 1, 2, 5}, 0, 1024, 100}};
    s = std::make_unique<Scheduler>(cfg, inst, models);
  }
  RequestId Submit(int model, int prompt_len, int max_tokens = 4, int priority = 0,
                   const std::string& tenant = "t") {
    RequestSpec spec;
    spec.model = model;
    spec.prompt.assign(prompt_len, 7);
    spec.max_tokens = max_tokens;
    spec.priority = priority;
    spec.tenant = tenant;
    auto id = s->Submit(spec);
    EXPECT_THAT(id, IsOk());
    return *id;
  }
  // Runs the plan with the fake executor: every sampled sequence gets token 5.
  std::vector<Event> Run(const StepPlan& plan) {
    std::vector<StepOutput> out;
    for (const PlannedSeq& p : plan.seqs) {
      if (p.sample) out.push_back({p.id, 5});
    }
    auto ev = s->Commit(plan, out);
    EXPECT_THAT(s->CheckInvariants(), IsOk());
    return ev;
  }
  std::unique_ptr<Scheduler> s;
};

std::vector<RequestId> Members(const StepPlan& p, int round, int call) {
  std::vector<RequestId> ids;
  for (int m : p.rounds[round][call].members) ids.push_back(p.seqs[m].id);
  return ids;
}

TEST(Scheduler, SequencesOfDifferentModelsShareCallsAtSharedInstances) {
  Fixture f;
  const RequestId a = f.Submit(0, 3), b = f.Submit(1, 2), c = f.Submit(2, 4);
  StepPlan p = f.s->Plan();
  ASSERT_EQ(p.seqs.size(), 3u);
  EXPECT_EQ(p.admitted, (std::vector<RequestId>{a, b, c}));
  ASSERT_EQ(p.rounds.size(), 4u);
  // Position 0: one embed call for all; position 1: attn 1 (models 0 and 2) and attn 3 (model 1).
  ASSERT_EQ(p.rounds[0].size(), 1u);
  EXPECT_EQ(Members(p, 0, 0), (std::vector<RequestId>{a, b, c}));
  ASSERT_EQ(p.rounds[1].size(), 2u);
  EXPECT_EQ(p.rounds[1][0].instance, 1);
  EXPECT_EQ(Members(p, 1, 0), (std::vector<RequestId>{a, c}));
  EXPECT_EQ(p.rounds[1][1].instance, 3);
  EXPECT_EQ(Members(p, 1, 1), (std::vector<RequestId>{b}));
  ASSERT_EQ(p.rounds[3].size(), 1u);
  EXPECT_EQ(Members(p, 3, 0), (std::vector<RequestId>{a, b, c}));
  EXPECT_EQ(f.s->pages_used(1), 2);  // a (3 tokens) and c (4 tokens): a page each
  f.Run(p);
  // Next step: three decode tokens, positions 3, 2, 4.
  p = f.s->Plan();
  ASSERT_EQ(p.seqs.size(), 3u);
  EXPECT_EQ(p.seqs[0].pos, 3);
  EXPECT_EQ(p.seqs[0].len, 1);
  EXPECT_TRUE(p.seqs[0].sample);
  f.Run(p);
}

TEST(Scheduler, ChunkedPrefillMixesWithDecodeAndRespectsTheBudget) {
  SchedulerConfig cfg;
  cfg.prefill_chunk = 256;
  cfg.max_step_tokens = 300;
  Fixture f(cfg);
  const RequestId small = f.Submit(0, 2, 8);
  StepPlan p = f.s->Plan();
  f.Run(p);
  const RequestId big = f.Submit(1, 600, 2);
  // Step: small decodes 1 token; big gets a 256-token chunk without logits (no head call).
  p = f.s->Plan();
  ASSERT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(p.seqs[0].id, small);
  EXPECT_EQ(p.seqs[1].id, big);
  EXPECT_EQ(p.seqs[1].len, 256);
  EXPECT_FALSE(p.seqs[1].sample);
  EXPECT_EQ(Members(p, 3, 0), (std::vector<RequestId>{small}));
  f.Run(p);
  p = f.s->Plan();
  EXPECT_EQ(p.seqs[1].pos, 256);
  EXPECT_EQ(p.seqs[1].len, 256);
  f.Run(p);
  p = f.s->Plan();  // the last 88 prompt tokens, then it samples
  EXPECT_EQ(p.seqs[1].len, 88);
  EXPECT_TRUE(p.seqs[1].sample);
  f.Run(p);
}

TEST(Scheduler, CallsSplitAtAnInstancesMaximumBatch) {
  Fixture f({}, 0, /*max_batch=*/8);
  for (int i = 0; i < 5; ++i) f.Submit(0, 3);
  StepPlan p = f.s->Plan();
  // 15 prompt tokens, 8 at most per call: 3 + 3 | 3 + 3 | 3.
  ASSERT_EQ(p.rounds[1].size(), 3u);
  EXPECT_EQ(p.rounds[1][0].members.size(), 2u);
  EXPECT_EQ(p.rounds[1][2].members.size(), 1u);
  f.Run(p);
}

TEST(Scheduler, KvExhaustionPreemptsTheLowestPriorityAndItResumes) {
  // 4 pages of 16 tokens at attn 1: two requests of 30-token prompts fit (2 pages each)...
  Fixture f({}, /*kv_pages=*/4);
  const RequestId low = f.Submit(0, 30, 10, /*priority=*/0);
  const RequestId high = f.Submit(2, 30, 10, /*priority=*/5);
  StepPlan p = f.s->Plan();
  EXPECT_EQ(p.seqs.size(), 2u);
  EXPECT_EQ(f.s->pages_used(1), 4);
  f.Run(p);
  // ...until both need a third page (position 32, two decode steps later): the low-priority
  // one is preempted.
  for (int i = 0; i < 2; ++i) {
    p = f.s->Plan();
    EXPECT_TRUE(p.preempted.empty());
    f.Run(p);
  }
  p = f.s->Plan();
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].pos, 32);
  EXPECT_EQ(p.preempted, (std::vector<RequestId>{low}));
  ASSERT_EQ(p.release.size(), 1u);
  EXPECT_EQ(p.release[0].id, low);
  EXPECT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].id, high);
  EXPECT_EQ(f.s->Find(low)->state, RequestState::kPreempted);
  f.Run(p);
  // It comes back (recomputing its prompt and tokens) once high finishes.
  int steps = 0;
  while (f.s->Find(low) != nullptr && steps++ < 100) f.Run(f.s->Plan());
  EXPECT_EQ(f.s->Find(low), nullptr);
  EXPECT_EQ(f.s->pages_used(1), 0);
}

TEST(Scheduler, AFloodingTenantDoesNotStarveOthers) {
  SchedulerConfig cfg;
  cfg.max_running = 2;
  Fixture f(cfg);
  for (int i = 0; i < 10; ++i) f.Submit(0, 4, 3, 0, "flood");
  const RequestId quiet = f.Submit(1, 4, 3, 0, "quiet");
  StepPlan p = f.s->Plan();
  // Two slots: the least-served tenants first — one flood request, then quiet.
  ASSERT_EQ(p.admitted.size(), 2u);
  EXPECT_EQ(p.admitted[1], quiet);
  f.Run(p);
}

TEST(Scheduler, WeightsShareTheBudget) {
  SchedulerConfig cfg;
  cfg.max_running = 1;
  cfg.tenant_weights = {{"gold", 3.0}, {"free", 1.0}};
  Fixture f(cfg);
  for (int i = 0; i < 8; ++i) {
    f.Submit(0, 4, 1, 0, "gold");
    f.Submit(0, 4, 1, 0, "free");
  }
  std::map<std::string, int> admitted;
  for (int step = 0; step < 8; ++step) {
    StepPlan p = f.s->Plan();
    for (RequestId id : p.admitted) admitted[f.s->Find(id)->spec.tenant]++;
    f.Run(p);
  }
  EXPECT_EQ(admitted["gold"], 6);
  EXPECT_EQ(admitted["free"], 2);
}

TEST(Scheduler, AbortAtAnyPointFreesEverything) {
  Fixture f({}, 8);
  const RequestId a = f.Submit(0, 20), b = f.Submit(1, 20);
  f.s->Abort(a);  // while queued
  StepPlan p = f.s->Plan();
  EXPECT_EQ(p.aborted, (std::vector<RequestId>{a}));
  auto ev = f.Run(p);
  ASSERT_FALSE(ev.empty());
  EXPECT_EQ(ev[0].finish, Finish::kAbort);
  f.s->Abort(b);  // while running
  p = f.s->Plan();
  ASSERT_EQ(p.release.size(), 1u);
  EXPECT_EQ(p.release[0].id, b);
  f.Run(p);
  EXPECT_EQ(f.s->pages_used(3), 0);
  EXPECT_EQ(f.s->num_running() + f.s->num_waiting(), 0);
}

TEST(Scheduler, RequestsThatCanNeverFitFinishInsteadOfWaitingForever) {
  Fixture f({}, 2);  // 32 tokens of KV at most
  const RequestId big = f.Submit(0, 40);
  StepPlan p = f.s->Plan();
  EXPECT_EQ(p.unservable, (std::vector<RequestId>{big}));
  auto ev = f.Run(p);
  ASSERT_EQ(ev.size(), 1u);
  EXPECT_EQ(ev[0].finish, Finish::kContextFull);
}

// A model whose blocks are still loading (the executor loads them in the background) does not
// hold up the others: its requests wait, the model is listed in the plan's `load`, and they are
// admitted once it is ready.
TEST(Scheduler, RequestsOfAModelStillLoadingWaitWhileOthersRun) {
  Fixture f;
  f.s->SetReady(1, false);
  const RequestId a = f.Submit(1, 3), b = f.Submit(0, 2);
  StepPlan p = f.s->Plan();
  EXPECT_EQ(p.admitted, std::vector<RequestId>{b});
  EXPECT_EQ(p.load, std::vector<int>{1});
  EXPECT_EQ(p.pinned, (std::vector<InstanceId>{0, 1, 2, 5}));  // reservations are not pinned
  f.Run(p);
  p = f.s->Plan();
  EXPECT_TRUE(p.admitted.empty());
  EXPECT_EQ(p.load, std::vector<int>{1});
  f.Run(p);
  f.s->SetReady(1, true);
  p = f.s->Plan();
  EXPECT_EQ(p.admitted, std::vector<RequestId>{a});
  EXPECT_TRUE(p.load.empty());
  f.Run(p);
}

// Under a memory budget the loading model's chain is reserved: a request considered after it
// that would take that memory waits, so the model that is loading gets the room it loads into.
TEST(Scheduler, ALoadingModelsMemoryIsReserved) {
  for (uint64_t budget_units : {6, 5}) {
    SCOPED_TRACE(budget_units);
    SchedulerConfig cfg;
    cfg.memory_budget = budget_units * 100;
    Fixture f(cfg, 0, 1 << 20, /*bytes=*/100);
    f.s->SetReady(1, false);
    // Tenant x (served first) wants model 1: instances 0 3 4 5. Model 0 adds 1 and 2.
    const RequestId a = f.Submit(1, 3, 4, 0, "x"), b = f.Submit(0, 2, 4, 0, "y");
    StepPlan p = f.s->Plan();
    EXPECT_EQ(p.load, std::vector<int>{1});
    if (budget_units == 6) {
      EXPECT_EQ(p.admitted, std::vector<RequestId>{b});  // both fit
    } else {
      EXPECT_TRUE(p.admitted.empty());  // model 0 would take the room model 1 loads into
    }
    f.Run(p);
    f.s->SetReady(1, true);
    p = f.s->Plan();
    EXPECT_EQ(p.admitted, std::vector<RequestId>{a});
    f.Run(p);
  }
}

TEST(Scheduler, BadRequestsAreRejected) {
  Fixture f;
  RequestSpec spec;
  spec.model = 9;
  spec.prompt = {1};
  EXPECT_THAT(f.s->Submit(spec).status(), testing::StatusIs(absl::StatusCode::kNotFound, ""));
  spec.model = 0;
  spec.prompt = {};
  EXPECT_FALSE(f.s->Submit(spec).ok());
  spec.prompt = {100};
  EXPECT_FALSE(f.s->Submit(spec).ok());  // outside the vocabulary
  spec.prompt.assign(1024, 1);
  EXPECT_THAT(f.s->Submit(spec).status(), testing::StatusIs(absl::StatusCode::kOutOfRange, ""));
  spec.prompt = {1};
  spec.max_tokens = 0;
  EXPECT_FALSE(f.s->Submit(spec).ok());
}

TEST(Scheduler, PrefixCacheReusesFullPagesPerChainAndTenant) {
  SchedulerConfig cfg;
  cfg.prefix_cache = true;
  Fixture f(cfg, /*kv_pages=*/6);
  auto submit = [&](int model, const std::string& tenant) {
    RequestSpec spec;
    spec.model = model;
    for (int i = 0; i < 40; ++i) spec.prompt.push_back(i % 90);
    spec.max_tokens = 2;
    spec.tenant = tenant;
    auto id = f.s->Submit(spec);
    EXPECT_THAT(id, IsOk());
    return *id;
  };
  const RequestId a = submit(0, "t");
  while (f.s->Find(a) != nullptr) f.Run(f.s->Plan());
  // a computed 41 positions: its 2 full pages stay cached on attn 1.
  EXPECT_EQ(f.s->prefix_entries(), 1);
  EXPECT_EQ(f.s->pages_used(1), 2);
  const RequestId b = submit(0, "t");
  StepPlan p = f.s->Plan();
  ASSERT_EQ(p.forks.size(), 1u);
  EXPECT_EQ(p.forks[0].dst, b);
  EXPECT_EQ(p.forks[0].len, 32);
  ASSERT_EQ(p.seqs.size(), 1u);
  EXPECT_EQ(p.seqs[0].pos, 32);
  EXPECT_EQ(p.seqs[0].len, 8);
  EXPECT_EQ(f.s->pages_used(1), 3);  // the entry's 2 + b's own third page
  f.Run(p);
  // Same tokens, other tenant: not shared. Model 2 shares model 0's chain: shared.
  const RequestId c = submit(0, "other");
  p = f.s->Plan();
  EXPECT_TRUE(p.forks.empty());
  f.Run(p);
  while (f.s->Find(b) != nullptr || f.s->Find(c) != nullptr) f.Run(f.s->Plan());
  const RequestId d = submit(2, "t");
  p = f.s->Plan();
  ASSERT_EQ(p.forks.size(), 1u);
  EXPECT_EQ(p.forks[0].dst, d);
  f.Run(p);
  while (f.s->Find(d) != nullptr) f.Run(f.s->Plan());
  // KV pressure evicts unused entries (LRU) before anything waits: 6 pages, a 90-token prompt.
  RequestSpec big;
  big.model = 0;
  big.prompt.assign(90, 3);
  big.max_tokens = 1;
  ASSERT_THAT(f.s->Submit(big), IsOk());
  p = f.s->Plan();
  EXPECT_FALSE(p.release.empty());
  EXPECT_EQ(p.seqs.size(), 1u);
  f.Run(p);
}

TEST(Scheduler, UncachedTenantLeavesNoPrefix) {
  SchedulerConfig cfg;
  cfg.prefix_cache = true;
  cfg.uncached_tenants = {"private"};
  Fixture f(cfg, /*kv_pages=*/6);
  RequestSpec spec;
  spec.model = 0;
  for (int i = 0; i < 40; ++i) spec.prompt.push_back(i % 90);
  spec.max_tokens = 2;
  spec.tenant = "private";
  auto a = f.s->Submit(spec);
  ASSERT_THAT(a, IsOk());
  while (f.s->Find(*a) != nullptr) f.Run(f.s->Plan());
  EXPECT_EQ(f.s->prefix_entries(), 0);
  EXPECT_EQ(f.s->pages_used(1), 0);
  spec.tenant = "t";
  auto b = f.s->Submit(spec);
  ASSERT_THAT(b, IsOk());
  while (f.s->Find(*b) != nullptr) f.Run(f.s->Plan());
  EXPECT_EQ(f.s->prefix_entries(), 1);
}

TEST(Request, TransitionsAreChecked) {
  Request r;
  EXPECT_FALSE(r.TransitionTo(RequestState::kPreempted).ok());
  EXPECT_THAT(r.TransitionTo(RequestState::kRunning), IsOk());
  EXPECT_THAT(r.TransitionTo(RequestState::kPreempted), IsOk());
  EXPECT_THAT(r.TransitionTo(RequestState::kRunning), IsOk());
  EXPECT_THAT(r.TransitionTo(RequestState::kFinished), IsOk());
  EXPECT_FALSE(r.TransitionTo(RequestState::kRunning).ok());
  EXPECT_FALSE(r.TransitionTo(RequestState::kFinished).ok());
}

}  // namespace
}  // namespace blockserve::scheduler
