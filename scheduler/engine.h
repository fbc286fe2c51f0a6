// The engine: one thread owns the scheduler and the block instances; clients submit requests
// (thread-safe) and receive tokens through a per-request sink. Each step the scheduler's plan
// runs position by position, one batched call per block instance shared by sequences of any
// model (LoRA adapters applied per slice).
#pragma once

#include <array>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <set>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/device.h"
#include "runtime/lora.h"
#include "runtime/model_config.h"
#include "runtime/sampler.h"
#include "scheduler/executor.h"
#include "scheduler/output_stage.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

// A block instance: resident (block set) or loadable on first use (load set). Models holding
// the same slot share the instance (one KV pool, one batch per step).
// A LoRA adapter of one block instance, attached on demand under its model's key.
struct AdapterSlot {
  std::function<absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>>()> load;
  std::shared_ptr<const runtime::LoraAdapter> adapter;  // set while resident
  bool attached = false;
  bool failed = false;  // its last load (or attach) failed
  uint64_t bytes = 0;
  uint64_t last_used = 0;
};

struct BlockSlot {
  std::shared_ptr<runtime::Block> block;  // null while not resident
  std::function<absl::StatusOr<std::shared_ptr<runtime::Block>>()> load;  // null: never evicted
  uint64_t bytes = 0;                     // weight memory when resident
  runtime::BlockKind kind = runtime::BlockKind::kAttn;
  std::string name;                       // for stats ("attn 3 1a80d4f4")
  std::map<int32_t, AdapterSlot> adapters;  // by adapter key (lazy engines attach on demand)
};

// A model for the engine: its chain of block slots.
struct EngineModel {
  std::string name;
  runtime::ModelConfig config;
  std::vector<std::shared_ptr<BlockSlot>> chain;
  int32_t adapter = 0;  // LoRA key attached on its instances (0: none)
};

// Wraps resident blocks as slots (tests, monolithic use).
std::vector<std::shared_ptr<BlockSlot>> ResidentSlots(
    const std::vector<std::shared_ptr<runtime::Block>>& blocks);

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
  // the engine waits for it.
  int output_threads = 1;
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

class Engine : private InstanceTable {
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
  size_t num_instances() const { return slots_.size(); }

 private:
  // Runs the plan. Requests whose model has a block or adapter that fails to load are left
  // out of every call and put in `*failed` with a message for the client; the rest runs.
  absl::Status Execute(const StepPlan& plan, std::vector<StepOutput>* out,
                       std::map<RequestId, std::string>* failed);
  // The executor's input for `plan`: everything it needs from the scheduler, copied.
  ExecInput BuildInput(const StepPlan& plan);
  // `full` without the requests of models `broken` (indexed by model), which go to `*failed`.
  StepPlan WithoutBroken(const StepPlan& full, const std::vector<absl::Status>& broken,
                         std::map<RequestId, std::string>* failed) const;
  runtime::Block* instance(InstanceId i) const override { return slots_[i]->block.get(); }
  // Loads what `plan` needs (evicting LRU instances over the budget). A block or adapter that
  // fails to load breaks only the models that use it: with `broken` (indexed by model) their
  // errors go there and the rest is still loaded; without it the first error is returned.
  absl::Status MakeResident(const StepPlan& plan, std::vector<absl::Status>* broken = nullptr);
  // Instances `plan` runs or pins.
  std::vector<bool> Needed(const StepPlan& plan) const;
  // Evicts least recently used adapters, then instances, neither protected nor holding KV (nor
  // adapters in `keys` per instance), until `need` more bytes fit the budget next to what is
  // resident and loading. False when they still do not.
  bool MakeRoom(uint64_t need, const std::vector<bool>& protect,
                const std::vector<std::set<int32_t>>& keys);
  // Accounts a loaded block or adapter (the load's error is returned, and remembered).
  absl::Status InstallBlock(size_t i, absl::StatusOr<std::shared_ptr<runtime::Block>> b);
  absl::Status InstallAdapter(size_t i, int32_t key,
                              absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> a);
  // Background loading: queues the loads of the plan's `load` models (room made first, in
  // order, while it can be), installs the loads that landed, tells the scheduler which models
  // are ready.
  void StartLoads(const StepPlan& plan);
  void InstallLoads();
  void UpdateReady();
  void LoaderLoop();
  // Step without waiting for the output stage (the loop).
  absl::StatusOr<bool> StepOnce();
  void Loop();
  // Control operations queued by LoadModel / UnloadModel, run by the engine thread.
  void RunControl();
  absl::StatusOr<int> DoLoad(int model);
  absl::StatusOr<int> DoUnload(int model);
  void EvictInstance(size_t i);
  void EvictAdapter(BlockSlot& slot, int32_t key);
  std::future<absl::StatusOr<int>> QueueControl(int model, bool load);

  EngineOptions opt_;
  std::vector<EngineModel> models_;
  std::vector<std::shared_ptr<BlockSlot>> slots_;
  std::vector<uint64_t> last_used_;  // step of last use, per instance
  std::vector<int> kv_caps_;         // KV pages per instance (0: unbounded)
  std::unique_ptr<Scheduler> scheduler_;
  std::unique_ptr<Executor> executor_;
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

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<RequestSpec, Sink>> inbox_;
  std::deque<RequestId> inbox_ids_;
  std::vector<std::pair<RequestId, Finish>> abort_inbox_;  // Abort (kAbort), StopRequest (kStop)
  struct Control {
    int model = 0;
    bool load = true;
    std::promise<absl::StatusOr<int>> done;
  };
  std::deque<Control> control_;
  std::vector<bool> loaded_;  // per model, under mu_
  bool stop_ = false;
  std::thread thread_;
  // Background loading. Jobs and results under mu_; `loading_` (what is queued or being
  // loaded, with adapter key 0 for the block) and the failures are the engine thread's.
  struct LoadJob {
    size_t instance = 0;
    int32_t adapter = 0;  // 0: the block
    uint64_t bytes = 0;
    std::function<absl::StatusOr<std::shared_ptr<runtime::Block>>()> load_block;
    std::function<absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>>()> load_adapter;
  };
  struct LoadDone {
    LoadJob job;
    absl::StatusOr<std::shared_ptr<runtime::Block>> block;
    absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> adapter;
    double secs = 0;
  };
  std::deque<LoadJob> load_jobs_;
  std::vector<LoadDone> load_done_;
  std::condition_variable loader_cv_;
  bool loaders_stop_ = false;
  std::vector<std::thread> loaders_;
  std::set<std::pair<InstanceId, int32_t>> loading_;
  uint64_t loading_bytes_ = 0;  // engine thread (written under mu_ next to the stats)
  std::vector<bool> load_failed_;  // per instance: its last load failed
  bool residency_changed_ = true;  // since the last UpdateReady (engine thread)
  std::vector<int> dims_;          // per instance: its model's hidden size (profiling)
  std::vector<bool> profiled_;     // per instance: batch limit measured
  EngineStats stats_;
  RequestId next_id_ = 1;
  OutputStage output_;
};

}  // namespace blockserve::scheduler
