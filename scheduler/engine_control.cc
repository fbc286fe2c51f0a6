// Engine, control: models loaded and unloaded on request (queued by any thread, run by the
// engine thread between steps) and the statistics, the residency's folded in.
#include "absl/strings/str_cat.h"
#include "scheduler/engine.h"

namespace blockserve::scheduler {

std::future<absl::StatusOr<int>> Engine::LoadModel(int model) { return QueueControl(model, true); }

std::future<absl::StatusOr<int>> Engine::UnloadModel(int model) {
  return QueueControl(model, false);
}

std::future<absl::StatusOr<int>> Engine::QueueControl(int model, bool load) {
  absl::MutexLock lock(&mu_);
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
  cv_.Signal();
  return f;
}

void Engine::RunControl() {
  std::deque<Control> todo;
  {
    absl::MutexLock lock(&mu_);
    todo.swap(control_);
  }
  for (Control& c : todo) {
    c.done.set_value(c.load ? residency_->Load(c.model, StepNumber()) : DoUnload(c.model));
  }
}

absl::StatusOr<int> Engine::DoUnload(int model) {
  std::vector<bool> keep(residency_->size(), false);
  {
    absl::MutexLock lock(&mu_);
    if (loaded_[model]) return 0;  // loaded again since
    for (size_t m = 0; m < models_.size(); ++m) {
      if (!loaded_[m]) continue;
      for (InstanceId i : scheduler_->models()[m].chain) keep[i] = true;
    }
  }
  return residency_->Unload(model, keep);
}

EngineStats Engine::stats() const {
  EngineStats out;
  {
    absl::MutexLock lock(&mu_);
    out = stats_;
  }
  const ResidencyStats r = residency_->stats();
  out.block_loads = r.block_loads;
  out.adapter_loads = r.adapter_loads;
  out.adapter_evictions = r.adapter_evictions;
  out.adapters_resident = r.adapters_resident;
  out.resident_bytes = r.resident_bytes;
  out.peak_resident_bytes = r.peak_resident_bytes;
  out.load_s = r.load_s;
  out.background_load_s = r.background_load_s;
  out.loading = r.loading;
  out.profile_s = r.profile_s;
  for (size_t i = 0; i < out.instances.size(); ++i) {
    InstanceStats& st = out.instances[i];
    st.loads = r.instances[i].loads;
    st.evictions = r.instances[i].evictions;
    st.resident = r.instances[i].resident;
    if (r.instances[i].max_batch > 0) st.max_batch = r.instances[i].max_batch;
  }
  return out;
}

int Engine::InstancePages(InstanceId i) const {
  const runtime::Block* b = residency_->instance(i);
  return b ? b->kv_pages_used() : 0;
}

}  // namespace blockserve::scheduler
