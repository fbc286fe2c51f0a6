// Residency, loading: what a step needs loaded before it runs (side by side on the pool), and
// loads for waiting requests queued to loader threads while other models keep generating.
#include <algorithm>
#include <chrono>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "scheduler/residency.h"
#include "spdlog/spdlog.h"

namespace blockserve::scheduler {

void Residency::StartLoads(const StepPlan& plan, uint64_t step) {
  if (plan.load.empty()) return;
  // What this step runs and the chains of every model to load stay: loading one model must
  // not evict another that is loading or about to run.
  std::vector<bool> protect = Needed(plan);
  for (InstanceId i : plan.reserved) protect[i] = true;
  std::vector<std::set<int32_t>> keys(slots_.size());
  for (const PlannedSeq& s : plan.seqs) {
    if (models()[s.model].adapter == 0) continue;
    for (InstanceId i : models()[s.model].chain) keys[i].insert(models()[s.model].adapter);
  }
  for (int m : plan.load) {
    for (InstanceId i : models()[m].chain) {
      protect[i] = true;
      last_used_[i] = step;
      if (models()[m].adapter == 0) continue;
      keys[i].insert(models()[m].adapter);
      auto a = slots_[i]->adapters.find(models()[m].adapter);
      if (a != slots_[i]->adapters.end()) a->second.last_used = step;
    }
  }
  for (int m : plan.load) {
    std::vector<LoadJob> jobs;
    uint64_t need = 0;
    const int32_t key = models()[m].adapter;
    for (InstanceId i : models()[m].chain) {
      BlockSlot& slot = *slots_[i];
      const bool dup = std::any_of(jobs.begin(), jobs.end(),
                                   [&](const LoadJob& j) { return j.instance == size_t(i); });
      if (dup) continue;
      if (!slot.block && slot.ref && !load_failed_[i] && !loading_.count({i, 0})) {
        jobs.push_back({static_cast<size_t>(i), 0, slot.bytes, *slot.ref, slot.source});
        need += slot.bytes;
      }
      auto a = key == 0 ? slot.adapters.end() : slot.adapters.find(key);
      if (a != slot.adapters.end() && !a->second.adapter && a->second.ref && !a->second.failed &&
          !loading_.count({i, key})) {
        jobs.push_back({static_cast<size_t>(i), key, a->second.bytes, *a->second.ref, slot.source});
        need += a->second.bytes;
      }
    }
    if (jobs.empty()) continue;
    // Over the budget with loads still landing: wait for them (they may be what makes the
    // room). With none landing the loads start anyway, as a load inside a step would.
    if (!MakeRoom(need, protect, keys) && !loading_.empty()) break;
    for (const LoadJob& j : jobs) loading_.insert({static_cast<InstanceId>(j.instance), j.adapter});
    absl::MutexLock lock(&mu_);
    for (LoadJob& j : jobs) {
      loading_bytes_ += j.bytes;
      jobs_.push_back(std::move(j));
    }
    stats_.loading = static_cast<int>(loading_.size());
    stats_.peak_resident_bytes =
        std::max(stats_.peak_resident_bytes, stats_.resident_bytes + loading_bytes_);
    loader_cv_.SignalAll();
  }
}

void Residency::InstallLoads() {
  std::vector<LoadDone> done;
  {
    absl::MutexLock lock(&mu_);
    done.swap(done_);
  }
  for (LoadDone& d : done) {
    loading_.erase({static_cast<InstanceId>(d.job.instance), d.job.adapter});
    {
      absl::MutexLock lock(&mu_);
      loading_bytes_ -= d.job.bytes;
      stats_.loading = static_cast<int>(loading_.size());
      stats_.background_load_s += d.secs;
    }
    const BlockSlot& slot = *slots_[d.job.instance];
    const absl::Status st =
        d.job.adapter == 0 ? InstallBlock(d.job.instance, std::move(d.block))
                           : InstallAdapter(d.job.instance, d.job.adapter, std::move(d.adapter));
    if (!st.ok()) {
      spdlog::error("loading {}{} failed: {}", slot.name,
                    d.job.adapter == 0 ? "" : absl::StrCat(" adapter ", d.job.adapter),
                    std::string(st.message()));
    }
  }
  UpdateReady();
}

void Residency::LoaderLoop() {
  while (true) {
    LoadDone d;
    {
      absl::MutexLock lock(&mu_);
      while (!stop_ && jobs_.empty()) loader_cv_.Wait(&mu_);
      if (stop_) return;
      d.job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    const auto t0 = std::chrono::steady_clock::now();
    if (d.job.adapter == 0) {
      d.block = d.job.source->LoadBlock(d.job.ref);
    } else {
      d.adapter = d.job.source->LoadAdapter(d.job.ref);
    }
    d.secs = SecondsSince(t0);
    {
      absl::MutexLock lock(&mu_);
      done_.push_back(std::move(d));
    }
    on_landed_();
  }
}

absl::Status Residency::MakeResident(const StepPlan& plan, uint64_t step,
                                     std::vector<absl::Status>* broken) {
  const std::vector<bool> needed = Needed(plan);
  uint64_t to_load = 0;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!needed[i]) continue;
    last_used_[i] = step;
    if (!slots_[i]->block) to_load += slots_[i]->bytes;
  }
  // Adapters this step's sequences use, per instance; resident ones not needed go first.
  std::vector<std::set<int32_t>> keys(slots_.size());
  for (const PlannedSeq& s : plan.seqs) {
    const int32_t k = models()[s.model].adapter;
    if (k == 0) continue;
    for (InstanceId i : models()[s.model].chain) {
      auto a = slots_[i]->adapters.find(k);
      if (a == slots_[i]->adapters.end() || !keys[i].insert(k).second) continue;
      a->second.last_used = step;
      if (!a->second.adapter) to_load += a->second.bytes;
    }
  }
  MakeRoom(to_load, needed, keys);
  // The missing blocks load side by side, one per pool thread (each load reads and packs its
  // own files; a cold model is a dozen blocks or more), and are then accounted in order.
  std::vector<size_t> missing;
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!needed[i] || slots_[i]->block) continue;
    if (!slots_[i]->ref) return absl::InternalError("block instance has neither block nor loader");
    missing.push_back(i);
  }
  std::map<InstanceId, absl::Status> failed_blocks;
  if (!missing.empty()) {
    std::vector<absl::StatusOr<std::shared_ptr<runtime::Block>>> loaded(missing.size());
    const auto t0 = std::chrono::steady_clock::now();
    executor_->context().pool().Run(static_cast<int>(missing.size()), [&](int j) {
      const BlockSlot& s = *slots_[missing[j]];
      loaded[j] = s.source->LoadBlock(*s.ref);
    });
    {
      absl::MutexLock lock(&mu_);
      stats_.load_s += SecondsSince(t0);
    }
    for (size_t j = 0; j < missing.size(); ++j) {
      if (absl::Status st = InstallBlock(missing[j], std::move(loaded[j])); !st.ok()) {
        failed_blocks.emplace(static_cast<InstanceId>(missing[j]), std::move(st));
      }
    }
  }
  std::map<std::pair<InstanceId, int32_t>, absl::Status> failed_adapters;
  RETURN_IF_ERROR(AttachAdapters(keys, &failed_adapters));
  if (failed_blocks.empty() && failed_adapters.empty()) return absl::OkStatus();
  if (broken == nullptr) {
    return !failed_blocks.empty() ? failed_blocks.begin()->second
                                  : failed_adapters.begin()->second;
  }
  broken->assign(models().size(), absl::OkStatus());
  for (size_t m = 0; m < models().size(); ++m) {
    for (InstanceId i : models()[m].chain) {
      auto b = failed_blocks.find(i);
      auto a = failed_adapters.find({i, models()[m].adapter});
      const bool block = b != failed_blocks.end();
      if (!block && a == failed_adapters.end()) continue;
      const absl::Status& st = block ? b->second : a->second;
      const char* what = block ? ": block " : ": adapter on block ";
      (*broken)[m] = absl::Status(st.code(), absl::StrCat("model ", models()[m].name, what,
                                                          slots_[i]->name, ": ", st.message()));
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status Residency::AttachAdapters(
    const std::vector<std::set<int32_t>>& keys,
    std::map<std::pair<InstanceId, int32_t>, absl::Status>* failed) {
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i]->block) continue;  // failed to load
    for (int32_t k : keys[i]) {
      AdapterSlot& a = slots_[i]->adapters.at(k);
      if (a.attached) continue;
      absl::Status st;
      if (a.adapter == nullptr) {
        if (!a.ref) return absl::InternalError("adapter has neither weights nor loader");
        const auto t0 = std::chrono::steady_clock::now();
        auto adapter = slots_[i]->source->LoadAdapter(*a.ref);
        {
          absl::MutexLock lock(&mu_);
          stats_.load_s += SecondsSince(t0);
        }
        st = InstallAdapter(i, k, std::move(adapter));
      }
      if (st.ok()) {
        st = slots_[i]->block->AttachAdapter(k, a.adapter);
        if (!st.ok()) {  // it does not fit this block: not worth its memory
          EvictAdapter(*slots_[i], k);
          a.failed = true;
        }
      }
      if (!st.ok()) {
        failed->emplace(std::make_pair(static_cast<InstanceId>(i), k), st);
        continue;
      }
      a.attached = true;
    }
  }
  return absl::OkStatus();
}

}  // namespace blockserve::scheduler
