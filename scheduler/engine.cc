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

std::vector<std::shared_ptr<BlockSlot>> ResidentSlots(
    const std::vector<std::shared_ptr<runtime::Block>>& blocks) {
  std::map<const runtime::Block*, std::shared_ptr<BlockSlot>> made;
  std::vector<std::shared_ptr<BlockSlot>> out;
  for (const auto& b : blocks) {
    auto& slot = made[b.get()];
    if (!slot) {
      slot = std::make_shared<BlockSlot>();
      slot->block = b;
      slot->bytes = b->weight_bytes();
      slot->kind = b->kind();
      slot->name = runtime::BlockKindName(b->kind());
    }
    out.push_back(slot);
  }
  return out;
}


Engine::Engine(EngineOptions opt, std::vector<EngineModel> models)
    : opt_(std::move(opt)), models_(std::move(models)),
      cpu_(opt_.threads > 0 ? opt_.threads : runtime::DefaultThreadCount()), ctx_(&cpu_) {
  opt_.scheduler.memory_budget = opt_.memory_budget;
  std::map<const BlockSlot*, InstanceId> ids;
  std::vector<InstanceInfo> infos;
  std::vector<ModelInfo> minfo;
  for (const EngineModel& m : models_) {
    ModelInfo mi;
    mi.name = m.name;
    mi.adapter = m.adapter;
    if (m.adapter != 0) {
      std::set<const BlockSlot*> seen;
      for (const auto& slot : m.chain) {
        auto a = slot->adapters.find(m.adapter);
        if (a != slot->adapters.end() && seen.insert(slot.get()).second) {
          mi.adapter_bytes += a->second.bytes;
        }
      }
    }
    mi.max_seq_len = m.config.max_seq_len;
    mi.vocab_size = m.config.vocab_size;
    for (size_t pos = 0; pos < m.chain.size(); ++pos) {
      const auto& slot = m.chain[pos];
      auto [it, inserted] = ids.emplace(slot.get(), static_cast<InstanceId>(slots_.size()));
      if (inserted) {
        slots_.push_back(slot);
        InstanceInfo info;
        info.kind = slot->kind;
        info.bytes = slot->bytes;
        info.max_batch_tokens = opt_.max_batch_tokens;
        if (opt_.profile_max_batch && slot->block) {
          info.max_batch_tokens = MeasureMaxBatch(*slot->block, m.config.dim, ctx_);
        }
        dims_.push_back(m.config.dim);
        profiled_.push_back(slot->block != nullptr && opt_.profile_max_batch);
        InstanceStats st;
        st.name = slot->name;
        st.kind = info.kind;
        st.max_batch = info.max_batch_tokens;
        st.resident = slot->block != nullptr;
        st.bytes = slot->bytes;
        st.adapters = static_cast<int>(slot->adapters.size());
        stats_.instances.push_back(st);
        if (slot->block) stats_.resident_bytes += slot->bytes;
        info.kv_page_size = opt_.kv_page_size;
        info.kv_max_pages = opt_.kv_max_pages;
        infos.push_back(info);
      }
      mi.chain.push_back(it->second);
    }
    minfo.push_back(std::move(mi));
  }
  if (opt_.kv_budget_bytes > 0) {
    // Split the KV budget by users: models per attn instance.
    std::vector<int> users(slots_.size(), 0);
    std::vector<uint64_t> page_bytes(slots_.size(), 0);
    for (size_t mi = 0; mi < minfo.size(); ++mi) {
      std::set<InstanceId> seen;
      for (InstanceId i : minfo[mi].chain) {
        if (infos[i].kind != BlockKind::kAttn || !seen.insert(i).second) continue;
        ++users[i];
        page_bytes[i] = uint64_t{2} * opt_.kv_page_size * models_[mi].config.kv_dim() *
                        runtime::DTypeSize(opt_.kv_dtype);
      }
    }
    double total = 0;
    for (size_t i = 0; i < slots_.size(); ++i) total += users[i] * static_cast<double>(page_bytes[i]);
    for (size_t i = 0; i < slots_.size(); ++i) {
      if (users[i] == 0) continue;
      // users_i / sum_j(users_j * bytes_j) of the budget in pages of instance i.
      infos[i].kv_max_pages = std::max(1, static_cast<int>(opt_.kv_budget_bytes * users[i] / total));
    }
  }
  stats_.peak_resident_bytes = stats_.resident_bytes;
  loaded_.assign(models_.size(), true);
  last_used_.assign(slots_.size(), 0);
  kv_caps_.clear();
  for (size_t i = 0; i < infos.size(); ++i) {
    kv_caps_.push_back(infos[i].kv_max_pages);
    if (infos[i].kind == BlockKind::kAttn && infos[i].kv_max_pages > 0) {
      stats_.instances[i].kv_pages_free = infos[i].kv_max_pages;
    }
  }
  scheduler_ = std::make_unique<Scheduler>(opt_.scheduler, std::move(infos), std::move(minfo));
  load_failed_.assign(slots_.size(), false);
  if (opt_.background_loads) {
    for (int t = 0; t < std::max(1, opt_.load_threads); ++t) {
      loaders_.emplace_back([this] { LoaderLoop(); });
    }
  }
}

Engine::~Engine() {
  Stop();
  {
    std::lock_guard<std::mutex> lock(mu_);
    loaders_stop_ = true;  // loads not started are dropped; running ones finish first
    loader_cv_.notify_all();
  }
  for (std::thread& t : loaders_) t.join();
}

int Engine::FindModel(const std::string& name) const {
  for (size_t i = 0; i < models_.size(); ++i) {
    if (models_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

absl::StatusOr<RequestId> Engine::Submit(RequestSpec spec, Sink sink) {
  RETURN_IF_ERROR(scheduler_->Validate(spec));
  std::lock_guard<std::mutex> lock(mu_);
  if (!loaded_[spec.model]) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", models_[spec.model].name, " is unloaded"));
  }
  const RequestId id = next_id_++;
  inbox_.emplace_back(std::move(spec), std::move(sink));
  inbox_ids_.push_back(id);
  cv_.notify_one();
  return id;
}

void Engine::Abort(RequestId id) {
  std::lock_guard<std::mutex> lock(mu_);
  abort_inbox_.push_back(id);
  cv_.notify_one();
}

bool Engine::loaded(int model) const {
  std::lock_guard<std::mutex> lock(mu_);
  return model >= 0 && model < static_cast<int>(loaded_.size()) && loaded_[model];
}

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
    for (const Release& r : scheduler_->DropPrefixes(i)) ReleaseKv(r);
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

void Engine::ReleaseKv(const Release& r) {
  for (const auto& slot : models_[r.model].chain) {
    if (slot->block) slot->block->ReleaseSequence(r.id);
  }
}

absl::Status Engine::ForkKv(const Fork& f) {
  for (const auto& slot : models_[f.model].chain) {
    if (!slot->block) return absl::InternalError("KV fork on a block that is not resident");
    RETURN_IF_ERROR(slot->block->ForkSequence(f.src, f.dst, f.len));
  }
  return absl::OkStatus();
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
    const int max_batch = MeasureMaxBatch(*slot.block, dims_[i], ctx_);
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
    ctx_.pool().Run(static_cast<int>(missing.size()),
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

bool Engine::PromptRowsWanted(const PlannedSeq& s, int* begin, int* end) const {
  auto it = prompt_lps_.find(s.id);
  if (it == prompt_lps_.end() || it->second.delivered) return false;
  const int prompt = static_cast<int>(scheduler_->Find(s.id)->spec.prompt.size());
  // Position p's logits give prompt token p + 1's log-probability; those already gathered (a
  // recomputation after preemption) are not wanted again.
  *begin = std::max(s.pos, static_cast<int>(it->second.got.size()));
  *end = std::min(s.pos + s.len, prompt - 1);
  return *begin < *end;
}

// One block call: gathers its members' rows into a batch, runs the block, scatters the rows
// back (or samples, at the head). Calls of one round touch disjoint members and, when run
// concurrently, distinct instances, so they share nothing they write.
absl::Status Engine::RunCall(const StepPlan& plan, const BlockCall& call, runtime::ExecContext& ctx,
                             const std::vector<std::vector<int32_t>>& tokens,
                             std::vector<std::vector<float>>& hidden, CallResult& result) {
  runtime::Block& block = *slots_[call.instance]->block;
  const bool head = block.kind() == BlockKind::kHead;
  Batch b;
  std::vector<int> sampled;         // members that sample, in order
  std::vector<size_t> sample_rows;  // their logit rows
  struct Scored {
    int member, begin, end;  // prompt positions [begin, end) to score
    size_t first_row;        // the logit row of the span's first token
  };
  std::vector<Scored> scored;
  size_t rows = 0;
  for (int m : call.members) {
    const PlannedSeq& s = plan.seqs[m];
    int begin = 0, end = 0;
    auto logits = runtime::SeqSpan::Logits::kNone;
    if (head && PromptRowsWanted(s, &begin, &end)) {  // every row: the prompt is scored
      logits = runtime::SeqSpan::Logits::kAll;
      scored.push_back({m, begin, end, rows});
      if (s.sample) {
        sampled.push_back(m);
        sample_rows.push_back(rows + s.len - 1);
      }
      rows += s.len;
    } else if (head && s.sample) {
      logits = runtime::SeqSpan::Logits::kLast;
      sampled.push_back(m);
      sample_rows.push_back(rows++);
    }
    b.Add(s.id, s.pos, tokens[m].data(), s.len, logits, models_[s.model].adapter);
    b.hidden.insert(b.hidden.end(), hidden[m].begin(), hidden[m].end());
  }
  const auto t0 = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(block.Forward(b, ctx));
  result.calls.push_back(
      {call.instance, b.num_tokens(),
       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()});
  if (head) {
    const size_t vocab = b.logits.size() / std::max<size_t>(1, rows);
    // Scored prompt rows: a pass over the vocabulary each, split across the pool.
    std::vector<std::pair<const Scored*, int>> jobs;  // (span, position)
    for (const Scored& sc : scored) {
      for (int p = sc.begin; p < sc.end; ++p) jobs.push_back({&sc, p});
    }
    const size_t first_row = result.prompt.size();
    result.prompt.resize(first_row + jobs.size());
    ctx.pool().ParallelFor(
        static_cast<int64_t>(jobs.size()),
        [&](int64_t j0, int64_t j1) {
          for (int64_t j = j0; j < j1; ++j) {
            const auto [sc, p] = jobs[j];
            const PlannedSeq& s = plan.seqs[sc->member];
            const RequestSpec& spec = scheduler_->Find(s.id)->spec;
            const float* row = b.logits.data() + (sc->first_row + (p - s.pos)) * vocab;
            result.prompt[first_row + j] = {
                s.id, p,
                runtime::ComputeLogprobs(row, static_cast<int>(vocab), spec.prompt[p + 1],
                                         spec.prompt_logprobs)};
          }
        },
        /*min_per_part=*/4);
    // Every sequence has its own sampler (its own RNG): sampling splits across the pool.
    const size_t first = result.out.size();
    result.out.resize(first + sampled.size());
    std::vector<runtime::Sampler*> samplers(sampled.size());
    for (size_t i = 0; i < sampled.size(); ++i) {
      samplers[i] = &samplers_.at(plan.seqs[sampled[i]].id);
    }
    ctx.pool().ParallelFor(
        static_cast<int64_t>(sampled.size()),
        [&](int64_t i0, int64_t i1) {
          for (int64_t i = i0; i < i1; ++i) {
            runtime::Logprobs lp;
            const int token = samplers[i]->Sample(b.logits.data() + sample_rows[i] * vocab,
                                                  static_cast<int>(vocab), &lp);
            result.out[first + i] = {plan.seqs[sampled[i]].id, token};
            if (samplers[i]->wants_logprobs()) result.out[first + i].logprobs = std::move(lp);
          }
        },
        /*min_per_part=*/8);
    return absl::OkStatus();
  }
  // Scatter the rows back to their sequences.
  const size_t dim = b.hidden.size() / std::max(1, b.num_tokens());
  size_t row = 0;
  for (int m : call.members) {
    const int len = plan.seqs[m].len;
    hidden[m].assign(b.hidden.begin() + row * dim, b.hidden.begin() + (row + len) * dim);
    row += len;
  }
  return absl::OkStatus();
}

absl::Status Engine::Execute(const StepPlan& full, std::vector<StepOutput>* out,
                             std::map<RequestId, std::string>* failed) {
  for (const Release& r : full.release) ReleaseKv(r);
  std::vector<absl::Status> broken;
  RETURN_IF_ERROR(MakeResident(full, &broken));
  // Loads for requests still waiting land while this step computes.
  StartLoads(full);
  // Requests of models with a block that failed to load leave every call (the calls at that
  // block had only them) and fail; the other tenants' requests run as planned.
  StepPlan filtered;
  if (!broken.empty()) {
    filtered = full;
    filtered.forks.clear();
    for (const Fork& f : full.forks) {
      if (broken[f.model].ok()) filtered.forks.push_back(f);
    }
    for (const PlannedSeq& s : full.seqs) {
      if (broken[s.model].ok() || failed->count(s.id)) continue;
      // The log gets the file and the reason; the client a message without server paths.
      spdlog::error("request {} fails: {}", s.id, std::string(broken[s.model].message()));
      (*failed)[s.id] = absl::StrCat("model ", scheduler_->models()[s.model].name,
                                     " is unavailable: one of its blocks failed to load");
    }
    for (auto& calls : filtered.rounds) {
      for (BlockCall& c : calls) {
        std::erase_if(c.members, [&](int m) { return !broken[full.seqs[m].model].ok(); });
      }
      std::erase_if(calls, [](const BlockCall& c) { return c.members.empty(); });
    }
  }
  const StepPlan& plan = broken.empty() ? full : filtered;
  for (const Fork& f : plan.forks) RETURN_IF_ERROR(ForkKv(f));
  // Per planned sequence: its tokens (the embed reads them; every batch carries them) and its
  // hidden rows between blocks. Gathered once per step, not per block call.
  std::vector<std::vector<int32_t>> tokens(plan.seqs.size());
  std::vector<std::vector<float>> hidden(plan.seqs.size());
  for (size_t m = 0; m < plan.seqs.size(); ++m) {
    const PlannedSeq& s = plan.seqs[m];
    const Request* r = scheduler_->Find(s.id);
    tokens[m].resize(s.len);
    for (int i = 0; i < s.len; ++i) tokens[m][i] = r->TokenAt(s.pos + i);
  }
  const int threads = ctx_.pool().size();
  std::vector<CallResult> results;
  for (const auto& calls : plan.rounds) {
    // The calls of an instance form a group. A group of few tokens runs on one thread, next to
    // the other small groups of the round (the per-model blocks of fine-tunes: many calls of a
    // few rows each, where splitting every matmul across threads costs more in fork-joins than
    // it gains); big groups use the whole pool, one after another. Results are the same either
    // way: no kernel's output depends on its thread split.
    std::vector<std::vector<const BlockCall*>> small, big;
    {
      std::map<InstanceId, int> index;  // instance -> its group
      std::vector<std::pair<std::vector<const BlockCall*>, int>> groups;  // calls, tokens
      for (const BlockCall& call : calls) {
        auto [it, fresh] = index.try_emplace(call.instance, static_cast<int>(groups.size()));
        if (fresh) groups.emplace_back();
        auto& [group, tokens] = groups[it->second];
        group.push_back(&call);
        for (int m : call.members) tokens += plan.seqs[m].len;
      }
      for (auto& [group, tokens] : groups) {
        (threads > 1 && tokens <= opt_.concurrent_call_tokens ? small : big)
            .push_back(std::move(group));
      }
      if (small.size() == 1) {  // nothing to run beside it
        big.push_back(std::move(small.back()));
        small.clear();
      }
    }
    for (const auto& g : big) {
      for (const BlockCall* call : g) {
        results.emplace_back();
        RETURN_IF_ERROR(RunCall(plan, *call, ctx_, tokens, hidden, results.back()));
      }
    }
    if (small.empty()) continue;
    while (serial_ctx_.size() < small.size()) {
      serial_cpu_.push_back(std::make_unique<runtime::CpuDevice>(1));
      serial_ctx_.push_back(std::make_unique<runtime::ExecContext>(serial_cpu_.back().get()));
    }
    const size_t first = results.size();
    results.resize(first + small.size());
    std::vector<absl::Status> status(small.size());
    ctx_.pool().Run(static_cast<int>(small.size()), [&](int i) {
      for (const BlockCall* call : small[i]) {
        status[i] = RunCall(plan, *call, *serial_ctx_[i], tokens, hidden, results[first + i]);
        if (!status[i].ok()) return;
      }
    });
    for (const absl::Status& st : status) RETURN_IF_ERROR(st);
  }
  for (CallResult& r : results) {  // a call's rows come in order of position
    for (PromptRow& row : r.prompt) {
      auto it = prompt_lps_.find(row.id);
      if (it != prompt_lps_.end() && !it->second.delivered &&
          row.pos == static_cast<int>(it->second.got.size())) {
        it->second.got.push_back(std::move(row.logprobs));
      }
    }
  }
  for (CallResult& r : results) {
    for (StepOutput& o : r.out) {
      auto it = prompt_lps_.find(o.id);
      if (it != prompt_lps_.end() && !it->second.delivered) {
        o.prompt_logprobs = std::move(it->second.got);
        it->second.delivered = true;
      }
      out->push_back(std::move(o));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  for (const CallResult& r : results) {
    for (const CallStats& c : r.calls) {
      ++stats_.block_calls;
      stats_.busy_s += c.secs;
      InstanceStats& st = stats_.instances[c.instance];
      ++st.calls;
      st.tokens += c.tokens;
      st.last_batch = c.tokens;
      st.busy_s += c.secs;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Engine::Step() {
  RunControl();
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!inbox_.empty()) {
      auto [spec, sink] = std::move(inbox_.front());
      const RequestId id = inbox_ids_.front();
      inbox_.pop_front();
      inbox_ids_.pop_front();
      runtime::SamplingParams sampling = spec.sampling;
      if (sampling.min_tokens > 0) sampling.min_tokens_stops = spec.stop_tokens;
      runtime::Sampler sampler(sampling);
      sampler.SetPrompt(spec.prompt);
      const bool prompt_logprobs = spec.prompt_logprobs >= 0;
      auto s = scheduler_->Submit(std::move(spec), id);
      if (!s.ok()) {
        sink({id, -1, Finish::kError, {}});
        continue;
      }
      sinks_[id] = std::move(sink);
      samplers_.emplace(id, std::move(sampler));
      if (prompt_logprobs) prompt_lps_.emplace(id, PromptLogprobs{});
    }
    for (RequestId id : abort_inbox_) scheduler_->Abort(id);
    abort_inbox_.clear();
  }
  if (opt_.background_loads) {
    InstallLoads();
    UpdateReady();
  }
  StepPlan plan = scheduler_->Plan();
  if (plan.empty() && plan.aborted.empty() && plan.unservable.empty()) {
    StartLoads(plan);
    if (loading_.empty()) return false;
    // Nothing runs until a load lands (or a request, abort or control arrives).
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] {
      return stop_ || !load_done_.empty() || !inbox_.empty() || !abort_inbox_.empty() ||
             !control_.empty();
    });
    return !stop_;
  }
  std::vector<StepOutput> out;
  std::map<RequestId, std::string> failed;  // requests whose model failed to load, and why
  const absl::Status status = Execute(plan, &out, &failed);
  std::set<RequestId> failed_ids;
  for (const auto& [id, why] : failed) failed_ids.insert(id);
  std::vector<Event> events = scheduler_->Commit(plan, out, !status.ok(), failed_ids);
  if (!failed.empty()) {
    for (Event& e : events) {
      auto f = failed.find(e.id);
      if (f != failed.end() && e.finish == Finish::kError) e.error = f->second;
    }
  }
  // Finished requests' full pages become prefix-cache entries (shared, not copied), then the
  // requests let go of their own.
  for (const Fork& f : scheduler_->TakeDonations()) {
    if (auto s = ForkKv(f); !s.ok()) return s;
  }
  for (const Release& r : scheduler_->TakeReleases()) ReleaseKv(r);
  for (const Event& e : events) {
    auto it = sinks_.find(e.id);
    if (it == sinks_.end()) continue;
    it->second(e);
    if (e.finish != Finish::kNone) {
      sinks_.erase(it);
      samplers_.erase(e.id);
      prompt_lps_.erase(e.id);
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
    stats_.preemptions += plan.preempted.size();
    for (const auto& s : plan.seqs) stats_.tokens += s.len;
    stats_.prefix_hits = scheduler_->prefix_hits();
    stats_.prefix_hit_tokens = scheduler_->prefix_hit_tokens();
    stats_.prefix_entries = scheduler_->prefix_entries();
    stats_.waiting = scheduler_->num_waiting();
    stats_.running = scheduler_->num_running();
    for (InstanceStats& st : stats_.instances) st.queued = 0;
    const std::vector<int> waiting = scheduler_->WaitingByModel();
    for (size_t m = 0; m < waiting.size(); ++m) {
      if (waiting[m] == 0) continue;
      for (InstanceId i : scheduler_->models()[m].chain) stats_.instances[i].queued += waiting[m];
    }
    for (size_t i = 0; i < slots_.size(); ++i) {
      InstanceStats& st = stats_.instances[i];
      st.kv_pages_used = scheduler_->pages_used(static_cast<int>(i));
      st.kv_pages_free = kv_caps_[i] > 0 && st.kind == BlockKind::kAttn
                             ? kv_caps_[i] - st.kv_pages_used
                             : -1;
    }
  }
  if (!status.ok()) return status;
  return true;
}

void Engine::Loop() {
  while (true) {
    auto worked = Step();
    if (worked.ok() && *worked) continue;
    std::unique_lock<std::mutex> lock(mu_);
    if (stop_) return;
    if (inbox_.empty() && abort_inbox_.empty() && control_.empty() &&
        scheduler_->num_running() == 0 &&
        scheduler_->num_waiting() == 0) {
      cv_.wait(lock, [&] {
        return stop_ || !inbox_.empty() || !abort_inbox_.empty() || !control_.empty() ||
               !load_done_.empty();
      });
    }
    if (stop_) return;
  }
}

void Engine::Start() {
  if (thread_.joinable()) return;
  stop_ = false;
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
  std::lock_guard<std::mutex> lock(mu_);
  for (Control& c : control_) c.done.set_value(absl::CancelledError("engine stopped"));
  control_.clear();
}

}  // namespace blockserve::scheduler
