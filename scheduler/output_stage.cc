#include "scheduler/output_stage.h"

#include <algorithm>

namespace blockserve::scheduler {

OutputStage::OutputStage(int shards, size_t max_queued) : max_queued_(std::max<size_t>(1, max_queued)) {
  for (int i = 0; i < std::max(1, shards); ++i) shards_.push_back(std::make_unique<Shard>());
  for (auto& s : shards_) s->thread = std::thread([this, sh = s.get()] { Run(*sh); });
}

OutputStage::~OutputStage() {
  for (auto& s : shards_) {
    std::lock_guard<std::mutex> lock(s->mu);
    s->stop = true;
    s->cv.notify_all();
  }
  for (auto& s : shards_) s->thread.join();
}

void OutputStage::Push(std::vector<std::pair<SinkPtr, Event>> events) {
  const size_t n = shards_.size();
  std::vector<std::vector<std::pair<SinkPtr, Event>>> per(n);
  for (auto& e : events) {
    per[static_cast<uint64_t>(e.second.id) % n].push_back(std::move(e));
  }
  for (size_t i = 0; i < n; ++i) {
    if (per[i].empty()) continue;
    Shard& s = *shards_[i];
    std::unique_lock<std::mutex> lock(s.mu);
    s.cv.wait(lock, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) {
      return s.queue.size() < max_queued_;
    });
    for (auto& e : per[i]) s.queue.push_back(std::move(e));
    s.pushed += per[i].size();
    s.cv.notify_all();
  }
}

void OutputStage::Drain() {
  for (auto& sp : shards_) {
    Shard& s = *sp;
    std::unique_lock<std::mutex> lock(s.mu);
    const uint64_t target = s.pushed;
    s.cv.wait(lock, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) { return s.delivered >= target; });
  }
}

void OutputStage::Run(Shard& s) {
  std::unique_lock<std::mutex> lock(s.mu);
  while (true) {
    s.cv.wait(lock, [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu) { return s.stop || !s.queue.empty(); });
    if (s.queue.empty()) return;  // stopped, everything delivered
    std::deque<std::pair<SinkPtr, Event>> batch;
    batch.swap(s.queue);
    s.cv.notify_all();  // room for the engine
    lock.unlock();
    for (auto& [sink, event] : batch) (*sink)(event);
    batch.clear();  // sinks of finished requests go here, outside the lock
    lock.lock();
    s.delivered = s.pushed - s.queue.size();
    s.cv.notify_all();
  }
}

}  // namespace blockserve::scheduler
