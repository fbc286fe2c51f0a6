// The output stage: requests' events reach their sinks here, off the engine thread and never
// under the engine's lock. What a sink does (detokenizing, stop strings, log-probability text,
// metrics, stream writes, even aborting its own request) cannot slow a step or deadlock it.
//
// Threads: the engine thread pushes; `shards` stage threads run the sinks, a request always on
// the same one (its events stay in order; requests of different shards run side by side); any
// thread may Drain.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

// Receives a request's events in order, the last with a finish set.
using Sink = std::function<void(const Event&)>;
using SinkPtr = std::shared_ptr<Sink>;

class OutputStage {
 public:
  // `max_queued`: events waiting per shard beyond which Push blocks (the engine waits for a slow
  // consumer rather than buffering without bound). `shards` 0: no threads — Push runs the sinks
  // on the caller, in order, before it returns.
  explicit OutputStage(int shards = 1, size_t max_queued = 1 << 16);
  bool inline_delivery() const { return shards_.empty(); }
  // Delivers everything queued, then stops the threads.
  ~OutputStage();
  OutputStage(const OutputStage&) = delete;
  OutputStage& operator=(const OutputStage&) = delete;

  // Queues the events of one step, each for its sink.
  void Push(std::vector<std::pair<SinkPtr, Event>> events);
  // Returns once every event pushed before the call has been delivered.
  void Drain();

 private:
  struct Shard {
    absl::Mutex mu;
    absl::CondVar cv;  // work queued, room made, events delivered, stop
    std::deque<std::pair<SinkPtr, Event>> queue ABSL_GUARDED_BY(mu);
    uint64_t pushed ABSL_GUARDED_BY(mu) = 0;
    uint64_t delivered ABSL_GUARDED_BY(mu) = 0;
    bool stop ABSL_GUARDED_BY(mu) = false;
    std::thread thread;
  };
  void Run(Shard& s);

  const size_t max_queued_;
  std::vector<std::unique_ptr<Shard>> shards_;
};

}  // namespace blockserve::scheduler
