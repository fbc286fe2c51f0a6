// Block residency: which block instances and LoRA adapters are in memory. Models loaded and
// unloaded on request; what a step needs made resident before it runs (loaded side by side on
// the pool) or loaded on loader threads while other models keep generating; least recently
// used instances and adapters not in use evicted within the weight memory budget. Loads are
// addressed by id (BlockSlot::ref) and come from each instance's BlockSource.
//
// Threads: every method but stats() and landed() is the engine thread's. Loader threads take
// jobs and hand back results under mu_, then call `on_landed` (which wakes the engine); stats()
// and landed() may be called from any thread.
#pragma once

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"
#include "scheduler/engine_types.h"
#include "scheduler/executor.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

// What residency reports (folded into EngineStats).
struct ResidencyStats {
  uint64_t block_loads = 0, adapter_loads = 0, adapter_evictions = 0;
  int adapters_resident = 0;
  uint64_t resident_bytes = 0, peak_resident_bytes = 0;
  double load_s = 0;             // time steps spent loading (every request waited)
  double background_load_s = 0;  // time loader threads spent loading
  int loading = 0;               // blocks and adapters being loaded in the background
  double profile_s = 0;          // time spent measuring batch limits of loaded instances
  struct Instance {
    uint64_t loads = 0, evictions = 0;
    bool resident = false;
    int max_batch = 0;  // measured on load (0: not measured)
  };
  std::vector<Instance> instances;
};

struct ResidencyOptions {
  uint64_t memory_budget = 0;  // weight memory (0: unbounded)
  bool background_loads = false;
  int load_threads = 2;
  bool profile_max_batch = false;
};

class Residency final : public InstanceTable {
 public:
  // `dims`: per instance, its model's hidden width (profiling). The scheduler and executor are
  // the engine's; they are used from the engine thread only.
  Residency(ResidencyOptions opt, std::vector<std::shared_ptr<BlockSlot>> slots,
            std::vector<int> dims, std::function<void()> on_landed);
  // Before the first step: the engine's scheduler and executor (built after the residency,
  // whose instances they need).
  void Bind(Scheduler* scheduler, Executor* executor) {
    scheduler_ = scheduler;
    executor_ = executor;
  }
  ~Residency() override;  // loads not started are dropped; running ones finish first

  runtime::Block* instance(InstanceId i) const override { return slots_[i]->block.get(); }
  const BlockSlot& slot(InstanceId i) const { return *slots_[i]; }
  size_t size() const { return slots_.size(); }

  // Loads what `plan` needs (evicting LRU instances over the budget). A block or adapter that
  // fails to load breaks only the models that use it: with `broken` (indexed by model) their
  // errors go there and the rest is still loaded; without it the first error is returned.
  absl::Status MakeResident(const StepPlan& plan, uint64_t step,
                            std::vector<absl::Status>* broken = nullptr);
  // Background loading: queues the loads of the plan's `load` models (room made first, in
  // order, while it can be).
  void StartLoads(const StepPlan& plan, uint64_t step);
  // Installs the loads that landed and tells the scheduler which models are ready.
  void InstallLoads();
  bool loading() const { return !loading_.empty(); }
  bool landed() const;
  // A model's chain (and adapter) made resident; the instances it loaded.
  absl::StatusOr<int> Load(int model, uint64_t step);
  // Frees the model's instances (and adapter) that no model in `keep` uses and that hold no
  // KV; the instances freed.
  absl::StatusOr<int> Unload(int model, const std::vector<bool>& keep);
  ResidencyStats stats() const;

 private:
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
  // The adapters `keys` names attached on the resident instances; failures per (instance, key).
  absl::Status AttachAdapters(const std::vector<std::set<int32_t>>& keys,
                              std::map<std::pair<InstanceId, int32_t>, absl::Status>* failed);
  void UpdateReady();
  void LoaderLoop();
  static double SecondsSince(std::chrono::steady_clock::time_point t0);
  void EvictInstance(size_t i);
  void EvictAdapter(BlockSlot& slot, int32_t key);
  const std::vector<ModelInfo>& models() const { return scheduler_->models(); }

  const ResidencyOptions opt_;
  std::vector<std::shared_ptr<BlockSlot>> slots_;
  const std::vector<int> dims_;
  Scheduler* scheduler_ = nullptr;
  Executor* executor_ = nullptr;
  const std::function<void()> on_landed_;
  // Engine thread only.
  std::vector<uint64_t> last_used_;  // step of last use, per instance
  std::vector<bool> load_failed_;    // per instance: its last load failed
  std::vector<bool> profiled_;       // per instance: batch limit measured
  std::set<std::pair<InstanceId, int32_t>> loading_;  // queued or loading (adapter 0: the block)
  bool residency_changed_ = true;    // since the last UpdateReady

  struct LoadJob {
    size_t instance = 0;
    int32_t adapter = 0;  // 0: the block
    uint64_t bytes = 0;
    BlockRef ref;         // what to load, and from where
    std::shared_ptr<const BlockSource> source;
  };
  struct LoadDone {
    LoadJob job;
    absl::StatusOr<std::shared_ptr<runtime::Block>> block;
    absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> adapter;
    double secs = 0;
  };
  mutable absl::Mutex mu_;
  absl::CondVar loader_cv_;
  std::deque<LoadJob> jobs_ ABSL_GUARDED_BY(mu_);
  std::vector<LoadDone> done_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t loading_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  ResidencyStats stats_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> loaders_;
};

}  // namespace blockserve::scheduler
