// The engine: one thread owns the scheduler and the block instances; clients submit requests
// (thread-safe) and receive tokens through a per-request sink. Each step the scheduler's plan
// runs position by position, one batched call per block instance shared by sequences of any
// model (LoRA adapters applied per slice).
#pragma once

#include <array>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <optional>
#include <thread>
#include <set>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/device.h"
#include "runtime/lora.h"
#include "runtime/model_config.h"
#include "runtime/sampler.h"
#include "scheduler/engine_types.h"
#include "scheduler/executor.h"
#include "scheduler/output_stage.h"
#include "scheduler/residency.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

struct EngineOptions {
  SchedulerConfig scheduler;
  int threads = 0;               // compute threads (0: default)
  // Where blocks compute and activations live (null: the CPU). The blocks must be built on it.
  runtime::Backend* backend = nullptr;
  int max_batch_tokens = 1 << 20;  // per block instance call
  // Block calls of one chain position with at most this many tokens per instance run side by
  // side, one thread each (0: never); bigger ones use every thread, one after another.
  int concurrent_call_tokens = 48;
  // Derive each instance's maximum batch from a measured profile (MeasureMaxBatch) instead of
  // max_batch_tokens: resident instances at construction, the others when they first load
  // (on the engine thread, once per instance; `EngineStats::profile_s`).
  bool profile_max_batch = false;
  int kv_max_pages = 0;          // per attn instance (0: unbounded); must match the blocks'
  int kv_page_size = 16;
  runtime::DType kv_dtype = runtime::DType::kF32;  // KV element type; must match the blocks'
  // One KV memory budget (bytes) split across the attn instances in proportion to how many
  // models use each (a block shared by 8 models serves ~8x the sequences); overrides
  // kv_max_pages. The blocks' own caches must be unbounded or at least this large.
  uint64_t kv_budget_bytes = 0;
  // Weight memory for resident instances (0: unbounded): instances load on first use and the
  // least recently used ones not in use (no KV, not needed this step) are evicted beyond it.
  uint64_t memory_budget = 0;
  // Load blocks and adapters on loader threads instead of inside the step that needs them: a
  // request whose model is not resident waits (its memory reserved) while the engine keeps
  // running the others, and is admitted once its chain has landed. Off: a step loads what it
  // needs before computing, and every request of that step waits for it.
  bool background_loads = false;
  int load_threads = 2;  // loader threads (background_loads)
  // Threads that run the requests' sinks (OutputStage), and the events each lets wait before
  // the engine waits for it. -1: one when a core is left over beside the compute threads, else
  // none — the engine thread hands each step's events to the stage, which runs them right there,
  // outside the engine's lock (on a machine without a spare core a stage thread preempts the
  // compute threads mid fork-join, and waking it costs more than the sinks: serve_load's
  // 16-stream ITL went 24 -> 29 ms on 2 cores, batch-1 decode lost up to 20 %).
  int output_threads = -1;
  size_t output_queue = 1 << 16;
};

struct InstanceStats {
  std::string name;
  runtime::BlockKind kind = runtime::BlockKind::kAttn;
  uint64_t calls = 0, tokens = 0;  // tokens / calls = mean batch size
  int last_batch = 0;              // tokens of the last call
  int max_batch = 0;               // its batch limit (configured or measured)
  double busy_s = 0;               // time in Forward
  uint64_t loads = 0, evictions = 0;
  bool resident = false;
  int kv_pages_used = 0, kv_pages_free = -1;  // -1: unbounded
  int queued = 0;  // waiting requests whose chain uses it
  uint64_t bytes = 0;  // weight memory when resident
  int adapters = 0;    // LoRA adapters known on it
};

struct EngineStats {
  // Requests finished, by Finish (indexed by its value).
  std::array<uint64_t, static_cast<int>(Finish::kContextFull) + 1> finished{};
  uint64_t steps = 0, preemptions = 0, block_calls = 0, tokens = 0, block_loads = 0;
  uint64_t prefix_hits = 0, prefix_hit_tokens = 0;
  uint64_t adapter_loads = 0, adapter_evictions = 0;
  int adapters_resident = 0;
  int prefix_entries = 0;
  int waiting = 0, running = 0;
  uint64_t resident_bytes = 0, peak_resident_bytes = 0;
  double busy_s = 0;
  double load_s = 0;             // time steps spent loading (every request waited)
  double background_load_s = 0;  // time loader threads spent loading (background_loads)
  int loading = 0;               // blocks and adapters being loaded in the background
  double profile_s = 0;          // time spent measuring batch limits of loaded instances
  std::vector<InstanceStats> instances;
};

// Threads: Submit, Abort, StopRequest, LoadModel, UnloadModel, loaded and stats are called from
// any thread and take mu_; the engine thread (Start) or the caller of Step owns the scheduler,
// the residency's engine-side state and the executor; sinks run on the output stage's threads.
class Engine {
 public:
  Engine(EngineOptions opt, std::vector<EngineModel> models);
  ~Engine();

  int FindModel(const std::string& name) const;
  const EngineModel& model(int i) const { return models_[i]; }
  size_t num_models() const { return models_.size(); }
  // Thread-safe. The sink is called on an output stage thread (never the engine's), last with a
  // finish set. A model that is unloaded refuses new requests (FAILED_PRECONDITION).
  absl::StatusOr<RequestId> Submit(RequestSpec spec, Sink sink);
  void Abort(RequestId id);
  // Finishes a request as kStop at the next step (a stop string found in its text): its KV
  // feeds the prefix cache as any other finish does.
  void StopRequest(RequestId id);

  // Serving state of a model (thread-safe). Models start loaded.
  bool loaded(int model) const;
  // Marks the model loaded and makes its chain (and adapter) resident on the engine thread,
  // between steps; the future gives the instances it loaded. Under a memory budget, least
  // recently used instances not in use are evicted to make room.
  std::future<absl::StatusOr<int>> LoadModel(int model);
  // Refuses new requests for the model; on the engine thread, frees its instances (and its
  // adapter) that no loaded model uses and that hold no KV. The future gives the instances freed.
  std::future<absl::StatusOr<int>> UnloadModel(int model);

  // Runs one step on the calling thread (tests; not while Start()ed) and returns once its
  // events were delivered. False when idle. When nothing can run until a background load
  // lands, waits for one (or for a request, abort or control call) instead.
  absl::StatusOr<bool> Step();
  void Start();
  void Stop();

  const Scheduler& scheduler() const { return *scheduler_; }
  EngineStats stats() const;
  // KV pages the attn instance `i` really holds (for invariant checks).
  int InstancePages(InstanceId i) const;
  size_t num_instances() const { return residency_->size(); }

 private:
  // Step without waiting for the output stage (the loop).
  absl::StatusOr<bool> StepOnce();
  // Moves submitted requests into the scheduler (refused ones into `*deliver`) and aborts.
  void TakeInbox(std::vector<std::pair<SinkPtr, Event>>* deliver);
  // The number of the step about to run (LRU clock of the residency).
  uint64_t StepNumber() const;
  // Statistics of the step just run.
  void RecordStep(const StepPlan& plan, const std::vector<Event>& events);
  void Loop();
  // Runs the plan. Requests whose model has a block or adapter that fails to load are left
  // out of every call and put in `*failed` with a message for the client; the rest runs.
  absl::Status Execute(const StepPlan& plan, std::vector<StepOutput>* out,
                       std::map<RequestId, std::string>* failed);
  // The executor's input for `plan`: everything it needs from the scheduler, copied (but for
  // the plan's donations and releases, which Execute runs before loading).
  ExecInput BuildInput(const StepPlan& plan);
  // `full` without the requests of models `broken` (indexed by model), which go to `*failed`.
  StepPlan WithoutBroken(const StepPlan& full, const std::vector<absl::Status>& broken,
                         std::map<RequestId, std::string>* failed) const;
  // Control operations queued by LoadModel / UnloadModel, run by the engine thread.
  void RunControl();
  absl::StatusOr<int> DoUnload(int model);
  std::future<absl::StatusOr<int>> QueueControl(int model, bool load);

  EngineOptions opt_;
  std::vector<EngineModel> models_;
  std::vector<int> kv_caps_;         // KV pages per instance (0: unbounded)
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Residency> residency_;
  // Samplers to start and end with the next step's input (the executor keeps them).
  std::vector<SamplerStart> pending_start_;
  std::vector<RequestId> pending_end_;
  std::map<RequestId, SinkPtr> sinks_;
  // Prompt log-probabilities gathered so far, for the requests that asked: entry i is prompt
  // token i + 1's; `delivered` once they went out with the first generated token (a preempted
  // request recomputing its prompt does not send them again).
  struct PromptLogprobs {
    std::vector<runtime::Logprobs> got;
    bool delivered = false;
  };
  std::map<RequestId, PromptLogprobs> prompt_lps_;

  mutable absl::Mutex mu_;
  absl::CondVar cv_;  // requests, aborts, control calls, landed loads, stop
  std::deque<std::pair<RequestSpec, Sink>> inbox_ ABSL_GUARDED_BY(mu_);
  std::deque<RequestId> inbox_ids_ ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<RequestId, Finish>> abort_inbox_ ABSL_GUARDED_BY(mu_);  // Abort, StopRequest
  struct Control {
    int model = 0;
    bool load = true;
    std::promise<absl::StatusOr<int>> done;
  };
  std::deque<Control> control_ ABSL_GUARDED_BY(mu_);
  std::vector<bool> loaded_ ABSL_GUARDED_BY(mu_);  // per model
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
  EngineStats stats_ ABSL_GUARDED_BY(mu_);  // the residency's part is folded in by stats()
  RequestId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  OutputStage output_;
};

}  // namespace blockserve::scheduler
