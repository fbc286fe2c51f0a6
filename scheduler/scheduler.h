// The scheduler: owns every request's state and plans each engine step as a plain value (a
// StepPlan) that an executor runs. No threads, no I/O: plans are asserted step by step in tests.
//
// Each step:
//   1. releases what finished, was aborted or is preempted;
//   2. gives every running request its next work — one decode token, or the next prefill chunk
//      (chunked prefill mixes with decode) — within the step's token budget, highest priority
//      first; when an attn block instance has no KV page left for it, the lowest-priority
//      running request using that instance is preempted (pages freed, recomputed later with the
//      same result) until it fits;
//   3. admits waiting requests (queued or preempted) while the budget and the KV of every attn
//      instance along their chain allow, choosing the tenant with the least weighted service
//      so far (a tenant that floods the queue cannot starve others), then priority, then age;
//   4. groups the work per chain position and block instance: sequences of *any* model whose
//      chains use the same instance form one call, split at the instance's maximum batch.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "scheduler/request.h"

namespace blockserve::scheduler {

using InstanceId = int;

struct InstanceInfo {
  runtime::BlockKind kind = runtime::BlockKind::kAttn;
  int max_batch_tokens = 1 << 20;  // tokens per call at most (calls are split beyond)
  int kv_page_size = 16;           // attn only
  int kv_max_pages = 0;            // attn only; 0 = unbounded
  uint64_t bytes = 0;              // weight memory when resident
};

struct ModelInfo {
  std::string name;
  std::vector<InstanceId> chain;  // embed, attn/ffn ..., head
  int32_t adapter = 0;            // LoRA key its spans carry (0: none)
  int max_seq_len = 0;
  int vocab_size = 0;
  uint64_t adapter_bytes = 0;     // its adapters' weight memory over the chain (memory budget)
};

struct SchedulerConfig {
  int max_step_tokens = 512;  // token budget of one step (prefill chunks + decode tokens)
  int prefill_chunk = 256;    // tokens of one prompt per step at most
  int max_running = 256;      // sequences in flight at most
  std::map<std::string, double> tenant_weights;  // fairness weight (default 1)
  // Weight memory for resident block instances (0: unbounded). A request is admitted only when
  // its chain fits next to the instances running requests pin; the rest may be evicted.
  uint64_t memory_budget = 0;
  // Prefix caching: the KV of finished requests' full pages is kept (LRU, evicted when KV room
  // is needed) and a new request whose tokens start the same way on the same chain starts from
  // it. Keyed by the chain's block instances and the tokens; scoped to the tenant unless the
  // tenant is in `shared_prefix_tenants` (those share among themselves).
  bool prefix_cache = false;
  std::set<std::string> shared_prefix_tenants;
  // Tenants whose requests leave nothing in the prefix cache (their KV is freed at the end).
  std::set<std::string> uncached_tenants;
};

// One sequence's work this step.
struct PlannedSeq {
  RequestId id = 0;
  int model = 0;
  int pos = 0;
  int len = 0;
  bool sample = false;  // the span ends at the last known token: sample the next one
};

// One call of a block instance on some of the step's sequences (indices into StepPlan::seqs).
struct BlockCall {
  InstanceId instance = 0;
  std::vector<int> members;
};

struct Release {
  RequestId id = 0;
  int model = 0;
};

// Start sequence `dst` with the first `len` KV positions of sequence `src` (in every attn
// block of `model`'s chain), sharing the pages.
struct Fork {
  RequestId src = 0, dst = 0;
  int model = 0;
  int len = 0;
};

struct StepPlan {
  // First: prefix-cache entries made from requests this plan finished (Stop), forked from
  // their KV before it is released.
  std::vector<Fork> donate;
  std::vector<Release> release;  // free these sequences' KV in every block of their chain
  std::vector<Fork> forks;       // after the releases: requests starting from cached prefixes
  std::vector<RequestId> admitted, preempted, aborted;
  std::vector<RequestId> stopped;  // finished by Stop (kStop)
  std::vector<RequestId> unservable;  // can never fit the KV budget: finished (context_full)
  std::vector<InstanceId> pinned;     // instances the running requests need (must be resident)
  // Models not ready (SetReady) that waiting requests need, most deserving first: the executor
  // loads them in the background; the memory their chains need is reserved in this plan.
  std::vector<int> load;
  // Instances the running requests pin and the waiting ones were given room for (ready or
  // loading): loading a model ahead must not evict them.
  std::vector<InstanceId> reserved;
  std::vector<PlannedSeq> seqs;
  std::vector<std::vector<BlockCall>> rounds;  // rounds[r]: the calls at chain position r
  bool empty() const { return seqs.empty() && release.empty() && donate.empty(); }
  // Whether the plan finishes requests without running anything (events to deliver).
  bool finishes() const { return !aborted.empty() || !stopped.empty() || !unservable.empty(); }
};

// What the executor produced for one sampled sequence of the plan.
struct StepOutput {
  StepOutput() = default;
  StepOutput(RequestId id, int32_t token, std::optional<runtime::Logprobs> logprobs = {})
      : id(id), token(token), logprobs(std::move(logprobs)) {}
  RequestId id = 0;
  int32_t token = 0;
  std::optional<runtime::Logprobs> logprobs;  // when the request asked for them
  // With the first token of a request that asked for RequestSpec::prompt_logprobs: those of
  // prompt tokens 1, 2, ... in order.
  std::vector<runtime::Logprobs> prompt_logprobs;
};

struct Event {
  Event() = default;
  Event(RequestId id, int32_t token, Finish finish, std::string error = {},
        std::optional<runtime::Logprobs> logprobs = {})
      : id(id), token(token), finish(finish), error(std::move(error)), logprobs(std::move(logprobs)) {}
  RequestId id = 0;
  int32_t token = -1;           // a new token (or -1)
  Finish finish = Finish::kNone;  // set on the last event of a request
  std::string error;              // kError: what went wrong, when known (fit for the client)
  std::optional<runtime::Logprobs> logprobs;  // of `token`, when the request asked for them
  std::vector<runtime::Logprobs> prompt_logprobs;  // StepOutput::prompt_logprobs
};

class Scheduler {
 public:
  Scheduler(SchedulerConfig config, std::vector<InstanceInfo> instances,
            std::vector<ModelInfo> models);

  // Whether a model's blocks (and adapter) are resident, as the executor reports. Requests of
  // a model that is not ready wait (others are admitted meanwhile) and the model is listed in
  // the plan's `load`. Models start ready: an executor that loads on demand during the step
  // never calls this.
  void SetReady(int model, bool ready);
  // An instance's batch limit, measured once it is loaded (EngineOptions::profile_max_batch).
  void SetMaxBatch(InstanceId instance, int tokens) {
    instances_.at(instance).max_batch_tokens = tokens;
  }
  bool ready(int model) const { return ready_.at(model); }

  // Checks a request against the (immutable) models; safe from any thread.
  absl::Status Validate(const RequestSpec& spec) const;
  // Validates and queues a request under `id` (0: the next free id). Errors: unknown model,
  // empty or too long prompt, bad sampling parameters, ...
  absl::StatusOr<RequestId> Submit(RequestSpec spec, RequestId id = 0);
  // Aborts at any point; the request finishes with kAbort at the next step (its KV released).
  void Abort(RequestId id);
  // Finishes a request with kStop at the next step, as a stop token would (a stop string the
  // output stage found): its KV feeds the prefix cache like every other finish.
  void Stop(RequestId id);

  StepPlan Plan();
  // Applies the executor's sampled tokens; returns the events (tokens, finishes) to deliver.
  // `failed`: the step failed — every request in the plan finishes with kError.
  // `errored`: requests of the plan that did not run (a block or adapter they need failed to
  // load) — they finish with kError, the rest of the step stands.
  std::vector<Event> Commit(const StepPlan& plan, const std::vector<StepOutput>& outputs,
                            bool failed = false, const std::set<RequestId>& errored = {});

  // Sequences finished by Commit whose KV the executor should free now (otherwise they come
  // with the next plan's `release`).
  std::vector<Release> TakeReleases();
  // Prefix-cache entries made by Commit from finished requests: fork these *before* releasing.
  std::vector<Fork> TakeDonations();
  // Drops the unused prefix-cache entries holding pages at `instance`; returns the pages'
  // pseudo sequences for the executor to release (a block about to be unloaded).
  std::vector<Release> DropPrefixes(InstanceId instance);
  uint64_t prefix_hits() const { return prefix_hits_; }
  uint64_t prefix_hit_tokens() const { return prefix_hit_tokens_; }
  int prefix_entries() const { return static_cast<int>(prefix_.size()); }

  const Request* Find(RequestId id) const;
  int num_waiting() const;
  // Waiting (queued or preempted) requests per model.
  std::vector<int> WaitingByModel() const;
  int num_running() const;
  // KV pages the scheduler accounts to `instance` (what the attn block's cache holds).
  int pages_used(InstanceId instance) const { return pages_used_.at(instance); }
  const std::vector<InstanceInfo>& instances() const { return instances_; }
  const std::vector<ModelInfo>& models() const { return models_; }
  // Tokens planned so far per tenant, divided by its weight (the fairness clock).
  double service(const std::string& tenant) const;
  // Internal consistency: page accounting equals the sum over sequences; states agree.
  absl::Status CheckInvariants() const;

 private:
  class Planner;  // one step's planning (scheduler_plan.cc)
  int Pages(InstanceId i, int len) const;
  // Whether `r` can ever run: its chain fits the memory budget and its context the KV of each
  // attn instance.
  bool Servable(const Request& r) const;
  // Pages `r` itself is charged at `i` for `len` positions (its cached prefix is the entry's).
  int Charged(const Request& r, InstanceId i, int len) const;
  // Cache keys of r's first ps, 2 ps, ... positions up to `len` (one pass over the tokens).
  std::vector<std::string> PrefixKeys(const Request& r, int len, int ps) const;
  void Donate(Request& r);
  void Unuse(Request& r);
  // Evicts the least recently used unused entry holding pages at `instance` (-1: any).
  bool EvictPrefix(InstanceId instance, StepPlan& plan);
  int KvPageSize(int model) const;  // 0 when the chain's attn blocks disagree (no caching)
  // Pages `r` needs at each attn instance of its chain to hold `len` tokens in all.
  bool Fits(const Request& r, int len) const;
  void Account(const Request& r, int from_len, int to_len);
  void Preempt(Request& r, StepPlan& plan);
  void Finish(Request& r, ::blockserve::scheduler::Finish f);
  // Commit's parts: the plan's own decisions (aborted, unservable) as events, and one planned
  // request finished with kError.
  std::vector<Event> CommitDecided(const StepPlan& plan);
  void FailPlanned(const PlannedSeq& s, std::vector<Event>& events);
  Request* Get(RequestId id);
  double Weight(const std::string& tenant) const;

  SchedulerConfig config_;
  std::vector<InstanceInfo> instances_;
  std::vector<ModelInfo> models_;
  std::map<RequestId, std::unique_ptr<Request>> requests_;  // not yet finished and delivered
  std::map<RequestId, int> reserved_;  // tokens of KV accounted per request (computed + planned)
  std::vector<int> pages_used_;
  std::vector<bool> ready_;  // per model
  std::vector<uint64_t> alone_bytes_;  // per model: its chain and adapter, each instance once
  std::map<RequestId, ::blockserve::scheduler::Finish> ends_;  // Abort / Stop, for the next plan
  std::vector<Release> pending_release_;
  std::map<std::string, double> served_;
  RequestId next_id_ = 1;
  uint64_t arrivals_ = 0;
  struct PrefixEntry {
    RequestId seq = 0;  // pseudo sequence id holding the pages (negative)
    int model = 0;      // a model with this chain
    std::vector<int32_t> tokens;
    int users = 0;
    uint64_t last_used = 0;
  };
  std::map<std::string, PrefixEntry> prefix_;
  // Every page boundary of an entry, keyed like a lookup of that length, -> the entry's key.
  std::map<std::string, std::string> prefix_alias_;
  std::vector<Fork> pending_donations_;
  RequestId next_prefix_seq_ = -1;
  uint64_t clock_ = 0, prefix_hits_ = 0, prefix_hit_tokens_ = 0;
};

}  // namespace blockserve::scheduler
