// The engine: one thread owns the scheduler and the block instances; clients submit requests
// (thread-safe) and receive tokens through a per-request sink. Each step the scheduler's plan
// runs position by position, one batched call per block instance shared by sequences of any
// model (LoRA adapters applied per slice).
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/device.h"
#include "runtime/model_config.h"
#include "runtime/sampler.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

// A model for the engine: its chain of block instances. Models that hold the same
// shared_ptr<Block> share that instance (one KV pool, one batch per step).
struct EngineModel {
  std::string name;
  runtime::ModelConfig config;
  std::vector<std::shared_ptr<runtime::Block>> chain;
  int32_t adapter = 0;  // LoRA key attached on its instances (0: none)
};

struct EngineOptions {
  SchedulerConfig scheduler;
  int threads = 0;               // compute threads (0: default)
  int max_batch_tokens = 1 << 20;  // per block instance call
  int kv_max_pages = 0;          // per attn instance (0: unbounded); must match the blocks'
  int kv_page_size = 16;
};

using Sink = std::function<void(const Event&)>;

struct EngineStats {
  uint64_t steps = 0, preemptions = 0, block_calls = 0, tokens = 0;
  int waiting = 0, running = 0;
};

class Engine {
 public:
  Engine(EngineOptions opt, std::vector<EngineModel> models);
  ~Engine();

  int FindModel(const std::string& name) const;
  // Thread-safe. The sink is called on the engine thread, last with a finish set.
  absl::StatusOr<RequestId> Submit(RequestSpec spec, Sink sink);
  void Abort(RequestId id);

  // Runs one step on the calling thread (tests; not while Start()ed). False when idle.
  absl::StatusOr<bool> Step();
  void Start();
  void Stop();

  const Scheduler& scheduler() const { return *scheduler_; }
  EngineStats stats() const;
  // KV pages the attn instance `i` really holds (for invariant checks).
  int InstancePages(InstanceId i) const;
  const std::vector<std::shared_ptr<runtime::Block>>& instances() const { return instances_; }

 private:
  absl::Status Execute(const StepPlan& plan, std::vector<StepOutput>* out);
  void Loop();

  EngineOptions opt_;
  std::vector<EngineModel> models_;
  std::vector<std::shared_ptr<runtime::Block>> instances_;
  std::unique_ptr<Scheduler> scheduler_;
  runtime::CpuDevice cpu_;
  runtime::ExecContext ctx_;
  std::map<RequestId, Sink> sinks_;
  std::map<RequestId, runtime::Sampler> samplers_;
  std::map<RequestId, std::vector<float>> hidden_;  // per sequence rows during a step

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::pair<RequestSpec, Sink>> inbox_;
  std::deque<RequestId> inbox_ids_;
  std::vector<RequestId> abort_inbox_;
  bool stop_ = false;
  std::thread thread_;
  EngineStats stats_;
  RequestId next_id_ = 1;
  std::map<RequestId, RequestId> external_;  // engine id -> scheduler id
};

}  // namespace blockserve::scheduler
