#include "scheduler/residency.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "scheduler/profile.h"
#include "spdlog/spdlog.h"

namespace blockserve::scheduler {

double Residency::SecondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

Residency::Residency(ResidencyOptions opt, std::vector<std::shared_ptr<BlockSlot>> slots,
                     std::vector<int> dims, std::function<void()> on_landed)
    : opt_(opt), slots_(std::move(slots)), dims_(std::move(dims)),
      on_landed_(std::move(on_landed)) {
  last_used_.assign(slots_.size(), 0);
  load_failed_.assign(slots_.size(), false);
  {
    absl::MutexLock lock(&mu_);
    stats_.instances.resize(slots_.size());
    for (size_t i = 0; i < slots_.size(); ++i) {
      stats_.instances[i].resident = slots_[i]->block != nullptr;
      if (slots_[i]->block) stats_.resident_bytes += slots_[i]->bytes;
    }
    stats_.peak_resident_bytes = stats_.resident_bytes;
  }
  // Resident instances were measured by the engine (their limits are in the scheduler).
  for (const auto& s : slots_) profiled_.push_back(s->block != nullptr && opt_.profile_max_batch);
  if (opt_.background_loads) {
    for (int t = 0; t < std::max(1, opt_.load_threads); ++t) {
      loaders_.emplace_back([this] { LoaderLoop(); });
    }
  }
}

Residency::~Residency() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    loader_cv_.SignalAll();
  }
  for (std::thread& t : loaders_) t.join();
}

bool Residency::landed() const {
  absl::MutexLock lock(&mu_);
  return !done_.empty();
}

ResidencyStats Residency::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

absl::StatusOr<int> Residency::Load(int model, uint64_t step) {
  StepPlan plan;
  plan.pinned = models()[model].chain;
  PlannedSeq seq;  // only its model matters: the adapter to attach
  seq.model = model;
  plan.seqs.push_back(seq);
  const uint64_t before = stats().block_loads;
  RETURN_IF_ERROR(MakeResident(plan, step));
  return static_cast<int>(stats().block_loads - before);
}

absl::StatusOr<int> Residency::Unload(int model, const std::vector<bool>& keep) {
  const int32_t key = models()[model].adapter;
  int freed = 0;
  for (InstanceId i : models()[model].chain) {
    BlockSlot& slot = *slots_[i];
    if (key != 0) {
      // Safe at any time between steps: a running sequence re-attaches it on demand.
      auto a = slot.adapters.find(key);
      if (a != slot.adapters.end() && a->second.adapter && a->second.ref) EvictAdapter(slot, key);
    }
    if (keep[i] || !slot.block || !slot.ref) continue;
    // Cached prefixes are no reason to keep a block of an unloaded model.
    for (const Release& r : scheduler_->DropPrefixes(i)) executor_->Release(r);
    if (slot.block->kv_pages_used() > 0) continue;  // requests still running on it
    EvictInstance(i);
    ++freed;
  }
  return freed;
}

void Residency::EvictAdapter(BlockSlot& slot, int32_t key) {
  residency_changed_ = true;
  AdapterSlot& a = slot.adapters.at(key);
  if (slot.block && a.attached) slot.block->DetachAdapter(key);
  a.adapter.reset();
  a.attached = false;
  absl::MutexLock lock(&mu_);
  stats_.resident_bytes -= a.bytes;
  --stats_.adapters_resident;
  ++stats_.adapter_evictions;
}

void Residency::EvictInstance(size_t i) {
  residency_changed_ = true;
  BlockSlot& slot = *slots_[i];
  for (auto& [key, a] : slot.adapters) {
    if (a.adapter) EvictAdapter(slot, key);
  }
  slot.block.reset();
  absl::MutexLock lock(&mu_);
  stats_.resident_bytes -= slot.bytes;
  ++stats_.instances[i].evictions;
  stats_.instances[i].resident = false;
}

std::vector<bool> Residency::Needed(const StepPlan& plan) const {
  std::vector<bool> needed(slots_.size(), false);
  for (InstanceId i : plan.pinned) needed[i] = true;
  for (const auto& calls : plan.rounds) {
    for (const BlockCall& c : calls) needed[c.instance] = true;
  }
  return needed;
}

bool Residency::MakeRoom(uint64_t need, const std::vector<bool>& protect,
                         const std::vector<std::set<int32_t>>& keys) {
  auto over = [&] {
    absl::MutexLock lock(&mu_);
    return opt_.memory_budget > 0 &&
           stats_.resident_bytes + loading_bytes_ + need > opt_.memory_budget;
  };
  // Adapters first: the resident ones not protected, least recently used first.
  while (over()) {
    AdapterSlot* victim = nullptr;
    BlockSlot* owner = nullptr;
    int32_t vkey = 0;
    for (size_t i = 0; i < slots_.size(); ++i) {
      for (auto& [k, a] : slots_[i]->adapters) {
        if (!a.adapter || !a.ref || keys[i].count(k)) continue;
        if (victim == nullptr || a.last_used < victim->last_used) {
          victim = &a;
          owner = slots_[i].get();
          vkey = k;
        }
      }
    }
    if (victim == nullptr) break;
    EvictAdapter(*owner, vkey);
  }
  // Then blocks: the least recently used instances not in use (not protected, no KV held), so
  // that resident memory never exceeds the budget.
  while (over()) {
    int victim = -1;
    for (size_t i = 0; i < slots_.size(); ++i) {
      const BlockSlot& slot = *slots_[i];
      if (!slot.block || !slot.ref || protect[i] || slot.block->kv_pages_used() > 0) continue;
      if (victim < 0 || last_used_[i] < last_used_[victim]) victim = static_cast<int>(i);
    }
    if (victim < 0) break;
    EvictInstance(victim);
  }
  return !over();
}

absl::Status Residency::InstallBlock(size_t i, absl::StatusOr<std::shared_ptr<runtime::Block>> b) {
  residency_changed_ = true;
  if (!b.ok()) {
    load_failed_[i] = true;
    return b.status();
  }
  load_failed_[i] = false;
  BlockSlot& slot = *slots_[i];
  if (slot.block) return absl::OkStatus();  // loaded meanwhile (Load): keep that one
  slot.block = std::move(*b);
  int max_batch = 0;
  double profile_s = 0;
  if (opt_.profile_max_batch && !profiled_[i]) {
    const auto t0 = std::chrono::steady_clock::now();
    max_batch = MeasureMaxBatch(*slot.block, dims_[i], executor_->context());
    profile_s = SecondsSince(t0);
    profiled_[i] = true;
    scheduler_->SetMaxBatch(static_cast<InstanceId>(i), max_batch);
  }
  absl::MutexLock lock(&mu_);
  if (max_batch > 0) stats_.instances[i].max_batch = max_batch;
  stats_.profile_s += profile_s;
  ++stats_.block_loads;
  ++stats_.instances[i].loads;
  stats_.instances[i].resident = true;
  stats_.resident_bytes += slot.bytes;
  stats_.peak_resident_bytes =
      std::max(stats_.peak_resident_bytes, stats_.resident_bytes + loading_bytes_);
  return absl::OkStatus();
}

absl::Status Residency::InstallAdapter(
    size_t i, int32_t key, absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> a) {
  residency_changed_ = true;
  AdapterSlot& slot = slots_[i]->adapters.at(key);
  if (!a.ok()) {
    slot.failed = true;
    return a.status();
  }
  slot.failed = false;
  if (slot.adapter) return absl::OkStatus();
  slot.adapter = std::move(*a);
  absl::MutexLock lock(&mu_);
  ++stats_.adapter_loads;
  ++stats_.adapters_resident;
  stats_.resident_bytes += slot.bytes;
  stats_.peak_resident_bytes =
      std::max(stats_.peak_resident_bytes, stats_.resident_bytes + loading_bytes_);
  return absl::OkStatus();
}

void Residency::UpdateReady() {
  if (!residency_changed_) return;  // nothing loaded, failed or was evicted since last time
  residency_changed_ = false;
  for (size_t m = 0; m < models().size(); ++m) {
    bool ready = true;
    const int32_t key = models()[m].adapter;
    for (InstanceId i : models()[m].chain) {
      const BlockSlot& slot = *slots_[i];
      // A failed load counts as ready (and so does a missing loader): the step that runs the
      // request retries it and fails the request with the reason if it fails again.
      ready &= slot.block != nullptr || load_failed_[i] || !slot.ref;
      if (key == 0) continue;
      auto a = slot.adapters.find(key);
      if (a == slot.adapters.end()) continue;
      ready &= a->second.adapter != nullptr || a->second.failed || !a->second.ref;
    }
    scheduler_->SetReady(static_cast<int>(m), ready);
  }
}

}  // namespace blockserve::scheduler
