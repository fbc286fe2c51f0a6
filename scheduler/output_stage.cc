#include "scheduler/output_stage.h"

#include <algorithm>

namespace blockserve::scheduler {

OutputStage::OutputStage(int shards, size_t max_queued) : max_queued_(std::max<size_t>(1, max_queued)) {
  for (int i = 0; i < shards; ++i) shards_.push_back(std::make_unique<Shard>());
  for (auto& s : shards_) s->thread = std::thread([this, sh = s.get()] { Run(*sh); });
}

OutputStage::~OutputStage() {
  for (auto& s : shards_) {
    absl::MutexLock lock(&s->mu);
    s->stop = true;
    s->cv.SignalAll();
  }
  for (auto& s : shards_) s->thread.join();
}

void OutputStage::Push(std::vector<std::pair<SinkPtr, Event>> events) {
  if (shards_.empty()) {  // inline: on the caller, in order (outside any lock of its)
    for (auto& [sink, event] : events) (*sink)(event);
    return;
  }
  const size_t n = shards_.size();
  std::vector<std::vector<std::pair<SinkPtr, Event>>> per(n);
  for (auto& e : events) {
    per[static_cast<uint64_t>(e.second.id) % n].push_back(std::move(e));
  }
  for (size_t i = 0; i < n; ++i) {
    if (per[i].empty()) continue;
    Shard& s = *shards_[i];
    absl::MutexLock lock(&s.mu);
    while (s.queue.size() >= max_queued_) s.cv.Wait(&s.mu);
    for (auto& e : per[i]) s.queue.push_back(std::move(e));
    s.pushed += per[i].size();
    s.cv.SignalAll();
  }
}

void OutputStage::Drain() {
  for (auto& sp : shards_) {
    Shard& s = *sp;
    absl::MutexLock lock(&s.mu);
    const uint64_t target = s.pushed;
    while (s.delivered < target) s.cv.Wait(&s.mu);
  }
}

void OutputStage::Run(Shard& s) {
  while (true) {
    std::deque<std::pair<SinkPtr, Event>> batch;
    {
      absl::MutexLock lock(&s.mu);
      while (!s.stop && s.queue.empty()) s.cv.Wait(&s.mu);
      if (s.queue.empty()) return;  // stopped, everything delivered
      batch.swap(s.queue);
      s.cv.SignalAll();  // room for the engine
    }
    const size_t n = batch.size();
    for (auto& [sink, event] : batch) (*sink)(event);
    batch.clear();  // sinks of finished requests go here, outside the lock
    absl::MutexLock lock(&s.mu);
    s.delivered += n;
    s.cv.SignalAll();
  }
}

}  // namespace blockserve::scheduler
