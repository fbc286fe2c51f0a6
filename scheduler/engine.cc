// The engine: construction (instances, KV split, executor, residency, scheduler), the
// submission queue, the step and the loop. (engine_control.cc: model loads and unloads, stats;
// engine_execute.cc: the executor's input.)
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


namespace {

// The instances of `models` (a slot held by several models is one instance), with what the
// scheduler needs to know about them and about each model's chain.
struct Instances {
  std::vector<std::shared_ptr<BlockSlot>> slots;
  std::vector<int> dims;  // per instance: its model's hidden width
  std::vector<InstanceInfo> infos;
  std::vector<ModelInfo> models;
};

Instances Enumerate(const std::vector<EngineModel>& models, const EngineOptions& opt) {
  Instances out;
  std::map<const BlockSlot*, InstanceId> ids;
  for (const EngineModel& m : models) {
    ModelInfo mi;
    mi.name = m.name;
    mi.adapter = m.adapter;
    mi.max_seq_len = m.config.max_seq_len;
    mi.vocab_size = m.config.vocab_size;
    std::set<const BlockSlot*> seen;
    for (const auto& slot : m.chain) {
      auto a = slot->adapters.find(m.adapter);
      if (m.adapter != 0 && a != slot->adapters.end() && seen.insert(slot.get()).second) {
        mi.adapter_bytes += a->second.bytes;
      }
      auto [it, inserted] = ids.emplace(slot.get(), static_cast<InstanceId>(out.slots.size()));
      if (inserted) {
        out.slots.push_back(slot);
        out.dims.push_back(m.config.dim);
        InstanceInfo info;
        info.kind = slot->kind;
        info.bytes = slot->bytes;
        info.max_batch_tokens = opt.max_batch_tokens;
        info.kv_page_size = opt.kv_page_size;
        info.kv_max_pages = opt.kv_max_pages;
        out.infos.push_back(info);
      }
      mi.chain.push_back(it->second);
    }
    out.models.push_back(std::move(mi));
  }
  return out;
}

// One KV budget split by users: each attn instance gets pages in proportion to the models that
// use it (users_i / sum_j(users_j * page_bytes_j) of the budget).
void SplitKvBudget(const std::vector<EngineModel>& models, const EngineOptions& opt,
                   Instances& in) {
  if (opt.kv_budget_bytes == 0) return;
  const size_t n = in.slots.size();
  std::vector<int> users(n, 0);
  std::vector<uint64_t> page_bytes(n, 0);
  for (size_t mi = 0; mi < in.models.size(); ++mi) {
    std::set<InstanceId> seen;
    for (InstanceId i : in.models[mi].chain) {
      if (in.infos[i].kind != BlockKind::kAttn || !seen.insert(i).second) continue;
      ++users[i];
      page_bytes[i] = uint64_t{2} * opt.kv_page_size * models[mi].config.kv_dim() *
                      runtime::DTypeSize(opt.kv_dtype);
    }
  }
  double total = 0;
  for (size_t i = 0; i < n; ++i) total += users[i] * static_cast<double>(page_bytes[i]);
  for (size_t i = 0; i < n; ++i) {
    if (users[i] == 0) continue;
    in.infos[i].kv_max_pages = std::max(1, static_cast<int>(opt.kv_budget_bytes * users[i] / total));
  }
}

int OutputThreads(const EngineOptions& opt) {
  if (opt.output_threads >= 0) return opt.output_threads;
  const int compute = opt.threads > 0 ? opt.threads : runtime::DefaultThreadCount();
  return static_cast<int>(std::thread::hardware_concurrency()) > compute ? 1 : 0;
}

}  // namespace

Engine::Engine(EngineOptions opt, std::vector<EngineModel> models)
    : opt_(std::move(opt)), models_(std::move(models)),
      output_(OutputThreads(opt_), opt_.output_queue) {
  opt_.scheduler.memory_budget = opt_.memory_budget;
  Instances in = Enumerate(models_, opt_);
  SplitKvBudget(models_, opt_, in);
  ResidencyOptions ro{opt_.memory_budget, opt_.background_loads, opt_.load_threads,
                      opt_.profile_max_batch};
  residency_ = std::make_unique<Residency>(ro, in.slots, in.dims, [this] {
    absl::MutexLock lock(&mu_);
    cv_.SignalAll();
  });
  std::vector<std::vector<InstanceId>> chains;
  for (const ModelInfo& mi : in.models) chains.push_back(mi.chain);
  executor_ = std::make_unique<Executor>(
      ExecutorOptions{opt_.threads, opt_.concurrent_call_tokens}, opt_.backend, residency_.get(),
      std::move(chains));
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < in.slots.size(); ++i) {
    const BlockSlot& slot = *in.slots[i];
    if (opt_.profile_max_batch && slot.block) {  // the others are measured when they load
      in.infos[i].max_batch_tokens = MeasureMaxBatch(*slot.block, in.dims[i], executor_->context());
    }
    InstanceStats st;
    st.name = slot.name;
    st.kind = slot.kind;
    st.max_batch = in.infos[i].max_batch_tokens;
    st.bytes = slot.bytes;
    st.adapters = static_cast<int>(slot.adapters.size());
    const int cap = in.infos[i].kv_max_pages;
    if (st.kind == BlockKind::kAttn && cap > 0) st.kv_pages_free = cap;
    kv_caps_.push_back(cap);
    stats_.instances.push_back(st);
  }
  loaded_.assign(models_.size(), true);
  scheduler_ = std::make_unique<Scheduler>(opt_.scheduler, std::move(in.infos), std::move(in.models));
  residency_->Bind(scheduler_.get(), executor_.get());
}

Engine::~Engine() {
  Stop();
  residency_.reset();  // its loader threads wake the engine through mu_: gone before mu_ is
}

int Engine::FindModel(const std::string& name) const {
  for (size_t i = 0; i < models_.size(); ++i) {
    if (models_[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

absl::StatusOr<RequestId> Engine::Submit(RequestSpec spec, Sink sink) {
  RETURN_IF_ERROR(scheduler_->Validate(spec));
  absl::MutexLock lock(&mu_);
  if (!loaded_[spec.model]) {
    return absl::FailedPreconditionError(
        absl::StrCat("model ", models_[spec.model].name, " is unloaded"));
  }
  const RequestId id = next_id_++;
  inbox_.emplace_back(std::move(spec), std::move(sink));
  inbox_ids_.push_back(id);
  cv_.Signal();
  return id;
}

void Engine::Abort(RequestId id) {
  absl::MutexLock lock(&mu_);
  abort_inbox_.push_back({id, Finish::kAbort});
  cv_.Signal();
}

void Engine::StopRequest(RequestId id) {
  absl::MutexLock lock(&mu_);
  abort_inbox_.push_back({id, Finish::kStop});
  cv_.Signal();
}

bool Engine::loaded(int model) const {
  absl::MutexLock lock(&mu_);
  return model >= 0 && model < static_cast<int>(loaded_.size()) && loaded_[model];
}

absl::StatusOr<bool> Engine::Step() {
  auto worked = StepOnce();
  output_.Drain();
  return worked;
}

void Engine::TakeInbox(std::vector<std::pair<SinkPtr, Event>>* deliver) {
  absl::MutexLock lock(&mu_);
  while (!inbox_.empty()) {
    auto [spec, sink] = std::move(inbox_.front());
    const RequestId id = inbox_ids_.front();
    inbox_.pop_front();
    inbox_ids_.pop_front();
    SamplerStart start{id, spec.sampling, spec.prompt};
    if (start.params.min_tokens > 0) start.params.min_tokens_stops = spec.stop_tokens;
    const bool prompt_logprobs = spec.prompt_logprobs >= 0;
    auto s = scheduler_->Submit(std::move(spec), id);
    if (!s.ok()) {
      deliver->push_back({std::make_shared<Sink>(std::move(sink)), Event{id, -1, Finish::kError}});
      continue;
    }
    sinks_[id] = std::make_shared<Sink>(std::move(sink));
    pending_start_.push_back(std::move(start));
    if (prompt_logprobs) prompt_lps_.emplace(id, PromptLogprobs{});
  }
  for (const auto& [id, why] : abort_inbox_) {
    if (why == Finish::kStop) {
      scheduler_->Stop(id);
    } else {
      scheduler_->Abort(id);
    }
  }
  abort_inbox_.clear();
}

absl::StatusOr<bool> Engine::StepOnce() {
  RunControl();
  std::vector<std::pair<SinkPtr, Event>> deliver;
  TakeInbox(&deliver);
  if (!deliver.empty()) {  // refused requests (outside the lock: Push may wait for room)
    output_.Push(std::move(deliver));
    deliver.clear();
  }
  if (opt_.background_loads) residency_->InstallLoads();
  StepPlan plan = scheduler_->Plan();
  if (plan.empty() && !plan.finishes()) {
    residency_->StartLoads(plan, StepNumber());
    if (!residency_->loading()) return false;
    // Nothing runs until a load lands (or a request, abort or control arrives).
    absl::MutexLock lock(&mu_);
    while (!stop_ && !residency_->landed() && inbox_.empty() && abort_inbox_.empty() &&
           control_.empty()) {
      cv_.Wait(&mu_);
    }
    return !stop_;
  }
  std::vector<StepOutput> out;
  std::map<RequestId, std::string> failed;  // requests whose model failed to load, and why
  const absl::Status status = Execute(plan, &out, &failed);
  std::set<RequestId> failed_ids;
  for (const auto& [id, why] : failed) failed_ids.insert(id);
  std::vector<Event> events = scheduler_->Commit(plan, out, !status.ok(), failed_ids);
  for (Event& e : events) {
    auto f = failed.find(e.id);
    if (f != failed.end() && e.finish == Finish::kError) e.error = f->second;
  }
  // Finished requests' full pages become prefix-cache entries (shared, not copied), then the
  // requests let go of their own.
  for (const Fork& f : scheduler_->TakeDonations()) {
    if (auto s = executor_->Fork(f); !s.ok()) return s;
  }
  for (const Release& r : scheduler_->TakeReleases()) executor_->Release(r);
  RecordStep(plan, events);
  for (Event& e : events) {
    auto it = sinks_.find(e.id);
    if (it == sinks_.end()) continue;
    const bool last = e.finish != Finish::kNone;
    deliver.push_back({it->second, std::move(e)});
    if (last) {
      sinks_.erase(it);
      pending_end_.push_back(deliver.back().second.id);
      prompt_lps_.erase(deliver.back().second.id);
    }
  }
  output_.Push(std::move(deliver));
  if (!status.ok()) return status;
  return true;
}

uint64_t Engine::StepNumber() const {
  absl::MutexLock lock(&mu_);
  return stats_.steps + 1;
}

void Engine::RecordStep(const StepPlan& plan, const std::vector<Event>& events) {
  absl::MutexLock lock(&mu_);
  ++stats_.steps;
  for (const Event& e : events) {
    if (e.finish != Finish::kNone) ++stats_.finished[static_cast<int>(e.finish)];
  }
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
  for (size_t i = 0; i < stats_.instances.size(); ++i) {
    InstanceStats& st = stats_.instances[i];
    st.kv_pages_used = scheduler_->pages_used(static_cast<int>(i));
    st.kv_pages_free =
        kv_caps_[i] > 0 && st.kind == BlockKind::kAttn ? kv_caps_[i] - st.kv_pages_used : -1;
  }
}

void Engine::Loop() {
  while (true) {
    auto worked = StepOnce();
    if (worked.ok() && *worked) continue;
    absl::MutexLock lock(&mu_);
    if (stop_) return;
    if (scheduler_->num_running() == 0 && scheduler_->num_waiting() == 0) {
      while (!stop_ && inbox_.empty() && abort_inbox_.empty() && control_.empty() &&
             !residency_->landed()) {
        cv_.Wait(&mu_);
      }
    }
    if (stop_) return;
  }
}

void Engine::Start() {
  if (thread_.joinable()) return;
  {
    absl::MutexLock lock(&mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] { Loop(); });
}

void Engine::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  absl::MutexLock lock(&mu_);
  for (Control& c : control_) c.done.set_value(absl::CancelledError("engine stopped"));
  control_.clear();
}

}  // namespace blockserve::scheduler
