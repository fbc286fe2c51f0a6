// Engine, block residency: models loaded and unloaded on request (LoadModel/UnloadModel, run on
// the engine thread), blocks and LoRA adapters made resident for a step or loaded on loader
// threads, least-recently-used eviction within the memory budget, and KV release and forks.
// (The engine's other parts: engine.cc — submission, the step and the loop; engine_execute.cc.)
#include "scheduler/engine.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <set>
#include <string>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "scheduler/profile.h"
#include "spdlog/spdlog.h"

namespace blockserve::scheduler {

using runtime::Batch;
using runtime::BlockKind;

std::future<absl::StatusOr<int>> Engine::LoadModel(int model) {
  return QueueControl(model, true);
}

std::future<absl::StatusOr<int>> Engine::UnloadModel(int model) {
  return QueueControl(model, false);
}

std::future<absl::StatusOr<int>> Engine::QueueControl(int model, bool load) {
  std::lock_guard<std::mutex> lock(mu_);
  Control c;
  c.model = model;
  c.load = load;
  auto f = c.done.get_future();
  if (model < 0 || model >= static_cast<int>(models_.size())) {
    c.done.set_value(absl::NotFoundError(absl::StrCat("unknown model ", model)));
    return f;
  }
  loaded_[model] = load;  // refusal starts now; the residency work waits for the engine thread
  control_.push_back(std::move(c));
  cv_.notify_one();
  return f;
}

void Engine::RunControl() {
  std::deque<Control> todo;
  {
    std::lock_guard<std::mutex> lock(mu_);
    todo.swap(control_);
  }
  for (Control& c : todo) c.done.set_value(c.load ? DoLoad(c.model) : DoUnload(c.model));
}

absl::StatusOr<int> Engine::DoLoad(int model) {
  StepPlan plan;
  plan.pinned = scheduler_->models()[model].chain;
  PlannedSeq seq;  // only its model matters: the adapter to attach
  seq.model = model;
  plan.seqs.push_back(seq);
  uint64_t before;
  {
    std::lock_guard<std::mutex> lock(mu_);
    before = stats_.block_loads;
  }
  RETURN_IF_ERROR(MakeResident(plan));
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(stats_.block_loads - before);
}

absl::StatusOr<int> Engine::DoUnload(int model) {
  std::vector<bool> keep(slots_.size(), false);
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (loaded_[model]) return 0;  // loaded again since
    for (size_t m = 0; m < models_.size(); ++m) {
      if (!loaded_[m]) continue;
      for (InstanceId i : scheduler_->models()[m].chain) keep[i] = true;
    }
  }
  const int32_t key = models_[model].adapter;
  int freed = 0;
  for (InstanceId i : scheduler_->models()[model].chain) {
    BlockSlot& slot = *slots_[i];
    if (key != 0) {
      // Safe at any time between steps: a running sequence re-attaches it on demand.
      auto a = slot.adapters.find(key);
      if (a != slot.adapters.end() && a->second.adapter && a->second.load) EvictAdapter(slot, key);
    }
    if (keep[i] || !slot.block || !slot.load) continue;
    // Cached prefixes are no reason to keep a block of an unloaded model.
    for (const Release& r : scheduler_->DropPrefixes(i)) executor_->Release(r);
    if (slot.block->kv_pages_used() > 0) continue;  // requests still running on it
    EvictInstance(i);
    ++freed;
  }
  return freed;
}

void Engine::EvictAdapter(BlockSlot& slot, int32_t key) {
  residency_changed_ = true;
  AdapterSlot& a = slot.adapters.at(key);
  if (slot.block && a.attached) slot.block->DetachAdapter(key);
  a.adapter.reset();
  a.attached = false;
  std::lock_guard<std::mutex> lock(mu_);
  stats_.resident_bytes -= a.bytes;
  --stats_.adapters_resident;
  ++stats_.adapter_evictions;
}

void Engine::EvictInstance(size_t i) {
  residency_changed_ = true;
  BlockSlot& slot = *slots_[i];
  for (auto& [key, a] : slot.adapters) {
    if (a.adapter) EvictAdapter(slot, key);
  }
  slot.block.reset();
  std::lock_guard<std::mutex> lock(mu_);
  stats_.resident_bytes -= slot.bytes;
  ++stats_.instances[i].evictions;
  stats_.instances[i].resident = false;
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

int Engine::InstancePages(InstanceId i) const {
  return slots_[i]->block ? slots_[i]->block->kv_pages_used() : 0;
}

std::vector<bool> Engine::Needed(const StepPlan& plan) const {
  std::vector<bool> needed(slots_.size(), false);
  for (InstanceId i : plan.pinned) needed[i] = true;
  for (const auto& calls : plan.rounds) {
    for (const BlockCall& c : calls) needed[c.instance] = true;
  }
  return needed;
}

bool Engine::MakeRoom(uint64_t need, const std::vector<bool>& protect,
                      const std::vector<std::set<int32_t>>& keys) {
  auto over = [&] {
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
        if (!a.adapter || !a.load || keys[i].count(k)) continue;
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
      if (!slot.block || !slot.load || protect[i] || slot.block->kv_pages_used() > 0) continue;
      if (victim < 0 || last_used_[i] < last_used_[victim]) victim = static_cast<int>(i);
    }
    if (victim < 0) break;
    EvictInstance(victim);
  }
  return !over();
}

absl::Status Engine::InstallBlock(size_t i, absl::StatusOr<std::shared_ptr<runtime::Block>> b) {
  residency_changed_ = true;
  if (!b.ok()) {
    load_failed_[i] = true;
    return b.status();
  }
  load_failed_[i] = false;
  BlockSlot& slot = *slots_[i];
  if (slot.block) return absl::OkStatus();  // loaded meanwhile (LoadModel): keep that one
  slot.block = std::move(*b);
  if (opt_.profile_max_batch && !profiled_[i]) {
    const auto t0 = std::chrono::steady_clock::now();
    const int max_batch = MeasureMaxBatch(*slot.block, dims_[i], executor_->context());
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    profiled_[i] = true;
    scheduler_->SetMaxBatch(static_cast<InstanceId>(i), max_batch);
    std::lock_guard<std::mutex> lock(mu_);
    stats_.instances[i].max_batch = max_batch;
    stats_.profile_s += secs;
  }
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.block_loads;
  ++stats_.instances[i].loads;
  stats_.instances[i].resident = true;
  stats_.resident_bytes += slot.bytes;
  stats_.peak_resident_bytes =
      std::max(stats_.peak_resident_bytes, stats_.resident_bytes + loading_bytes_);
  return absl::OkStatus();
}

absl::Status Engine::InstallAdapter(size_t i, int32_t key,
                                    absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> a) {
  residency_changed_ = true;
  AdapterSlot& slot = slots_[i]->adapters.at(key);
  if (!a.ok()) {
    slot.failed = true;
    return a.status();
  }
  slot.failed = false;
  if (slot.adapter) return absl::OkStatus();
  slot.adapter = std::move(*a);
  std::lock_guard<std::mutex> lock(mu_);
  ++stats_.adapter_loads;
  ++stats_.adapters_resident;
  stats_.resident_bytes += slot.bytes;
  stats_.peak_resident_bytes =
      std::max(stats_.peak_resident_bytes, stats_.resident_bytes + loading_bytes_);
  return absl::OkStatus();
}

void Engine::UpdateReady() {
  if (!residency_changed_) return;  // nothing loaded, failed or was evicted since last time
  residency_changed_ = false;
  const auto& infos = scheduler_->models();
  for (size_t m = 0; m < infos.size(); ++m) {
    bool ready = true;
    const int32_t key = models_[m].adapter;
    for (InstanceId i : infos[m].chain) {
      const BlockSlot& slot = *slots_[i];
      // A failed load counts as ready (and so does a missing loader): the step that runs the
      // request retries it and fails the request with the reason if it fails again.
      ready &= slot.block != nullptr || load_failed_[i] || !slot.load;
      if (key == 0) continue;
      auto a = slot.adapters.find(key);
      if (a == slot.adapters.end()) continue;
      ready &= a->second.adapter != nullptr || a->second.failed || !a->second.load;
    }
    scheduler_->SetReady(static_cast<int>(m), ready);
  }
}

void Engine::StartLoads(const StepPlan& plan) {
  if (plan.load.empty()) return;
  const uint64_t step = stats_.steps + 1;
  // What this step runs and the chains of every model to load stay: loading one model must
  // not evict another that is loading or about to run.
  std::vector<bool> protect = Needed(plan);
  for (InstanceId i : plan.reserved) protect[i] = true;
  std::vector<std::set<int32_t>> keys(slots_.size());
  for (const PlannedSeq& s : plan.seqs) {
    if (models_[s.model].adapter == 0) continue;
    for (InstanceId i : scheduler_->models()[s.model].chain) {
      keys[i].insert(models_[s.model].adapter);
    }
  }
  for (int m : plan.load) {
    for (InstanceId i : scheduler_->models()[m].chain) {
      protect[i] = true;
      last_used_[i] = step;
      if (models_[m].adapter == 0) continue;
      keys[i].insert(models_[m].adapter);
      auto a = slots_[i]->adapters.find(models_[m].adapter);
      if (a != slots_[i]->adapters.end()) a->second.last_used = step;
    }
  }
  for (int m : plan.load) {
    std::vector<LoadJob> jobs;
    uint64_t need = 0;
    const int32_t key = models_[m].adapter;
    for (InstanceId i : scheduler_->models()[m].chain) {
      BlockSlot& slot = *slots_[i];
      const bool dup = std::any_of(jobs.begin(), jobs.end(),
                                   [&](const LoadJob& j) { return j.instance == size_t(i); });
      if (dup) continue;
      if (!slot.block && slot.load && !load_failed_[i] && !loading_.count({i, 0})) {
        jobs.push_back({static_cast<size_t>(i), 0, slot.bytes, slot.load, nullptr});
        need += slot.bytes;
      }
      auto a = key == 0 ? slot.adapters.end() : slot.adapters.find(key);
      if (a != slot.adapters.end() && !a->second.adapter && a->second.load && !a->second.failed &&
          !loading_.count({i, key})) {
        jobs.push_back({static_cast<size_t>(i), key, a->second.bytes, nullptr, a->second.load});
        need += a->second.bytes;
      }
    }
    if (jobs.empty()) continue;
    // Over the budget with loads still landing: wait for them (they may be what makes the
    // room). With none landing the loads start anyway, as a load inside a step would.
    if (!MakeRoom(need, protect, keys) && loading_bytes_ > 0) break;
    std::lock_guard<std::mutex> lock(mu_);
    for (LoadJob& j : jobs) {
      loading_.insert({static_cast<InstanceId>(j.instance), j.adapter});
      loading_bytes_ += j.bytes;
      load_jobs_.push_back(std::move(j));
    }
    stats_.loading = static_cast<int>(loading_.size());
    stats_.peak_resident_bytes =
        std::max(stats_.peak_resident_bytes, stats_.resident_bytes + loading_bytes_);
    loader_cv_.notify_all();
  }
}

void Engine::InstallLoads() {
  std::vector<LoadDone> done;
  {
    std::lock_guard<std::mutex> lock(mu_);
    done.swap(load_done_);
  }
  for (LoadDone& d : done) {
    loading_.erase({static_cast<InstanceId>(d.job.instance), d.job.adapter});
    {
      std::lock_guard<std::mutex> lock(mu_);
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
}

void Engine::LoaderLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (true) {
    loader_cv_.wait(lock, [&] { return loaders_stop_ || !load_jobs_.empty(); });
    if (loaders_stop_) return;
    LoadDone d;
    d.job = std::move(load_jobs_.front());
    load_jobs_.pop_front();
    lock.unlock();
    const auto t0 = std::chrono::steady_clock::now();
    if (d.job.adapter == 0) {
      d.block = d.job.load_block();
    } else {
      d.adapter = d.job.load_adapter();
    }
    d.secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    lock.lock();
    load_done_.push_back(std::move(d));
    cv_.notify_all();
  }
}

absl::Status Engine::MakeResident(const StepPlan& plan, std::vector<absl::Status>* broken) {
  std::map<InstanceId, absl::Status> failed_blocks;
  std::map<std::pair<InstanceId, int32_t>, absl::Status> failed_adapters;
  const uint64_t step = stats_.steps + 1;
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
    const int32_t k = models_[s.model].adapter;
    if (k == 0) continue;
    for (InstanceId i : scheduler_->models()[s.model].chain) {
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
    if (!slots_[i]->load) return absl::InternalError("block instance has neither block nor loader");
    missing.push_back(i);
  }
  if (!missing.empty()) {
    std::vector<absl::StatusOr<std::shared_ptr<runtime::Block>>> loaded(missing.size());
    const auto t0 = std::chrono::steady_clock::now();
    executor_->context().pool().Run(static_cast<int>(missing.size()),
                    [&](int j) { loaded[j] = slots_[missing[j]]->load(); });
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    {
      std::lock_guard<std::mutex> lock(mu_);
      stats_.load_s += secs;
    }
    for (size_t j = 0; j < missing.size(); ++j) {
      if (absl::Status st = InstallBlock(missing[j], std::move(loaded[j])); !st.ok()) {
        failed_blocks.emplace(static_cast<InstanceId>(missing[j]), std::move(st));
      }
    }
  }
  for (size_t i = 0; i < slots_.size(); ++i) {
    if (!slots_[i]->block) continue;  // failed to load (above)
    for (int32_t k : keys[i]) {
      AdapterSlot& a = slots_[i]->adapters.at(k);
      if (a.attached) continue;
      absl::Status st;
      if (a.adapter == nullptr) {
        if (!a.load) return absl::InternalError("adapter has neither weights nor loader");
        const auto t0 = std::chrono::steady_clock::now();
        auto adapter = a.load();
        const double secs =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        {
          std::lock_guard<std::mutex> lock(mu_);
          stats_.load_s += secs;
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
        failed_adapters.emplace(std::make_pair(static_cast<InstanceId>(i), k), st);
        continue;
      }
      a.attached = true;
    }
  }
  if (failed_blocks.empty() && failed_adapters.empty()) return absl::OkStatus();
  if (broken == nullptr) {
    return !failed_blocks.empty() ? failed_blocks.begin()->second
                                  : failed_adapters.begin()->second;
  }
  broken->assign(models_.size(), absl::OkStatus());
  const auto& infos = scheduler_->models();
  for (size_t m = 0; m < infos.size(); ++m) {
    for (InstanceId i : infos[m].chain) {
      auto b = failed_blocks.find(i);
      auto a = failed_adapters.find({i, models_[m].adapter});
      const bool block = b != failed_blocks.end();
      if (!block && a == failed_adapters.end()) continue;
      const absl::Status& st = block ? b->second : a->second;
      const char* what = block ? ": block " : ": adapter on block ";
      (*broken)[m] = absl::Status(st.code(), absl::StrCat("model ", infos[m].name, what,
                                                          slots_[i]->name, ": ", st.message()));
      break;
    }
  }
  return absl::OkStatus();
}

}  // namespace blockserve::scheduler
