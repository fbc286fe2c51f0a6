#include "scheduler/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/check.h"
#include "runtime/status_macros.h"

namespace blockserve::scheduler {

using runtime::BlockKind;

Scheduler::Scheduler(SchedulerConfig config, std::vector<InstanceInfo> instances,
                     std::vector<ModelInfo> models)
    : config_(std::move(config)), instances_(std::move(instances)), models_(std::move(models)),
      pages_used_(instances_.size(), 0), ready_(models_.size(), true) {
  for (const ModelInfo& m : models_) {
    uint64_t bytes = m.adapter_bytes;
    std::set<InstanceId> seen;
    for (InstanceId i : m.chain) {
      if (seen.insert(i).second) bytes += instances_[i].bytes;
    }
    alone_bytes_.push_back(bytes);
  }
}

absl::StatusOr<RequestId> Scheduler::Submit(RequestSpec spec, RequestId id) {
  RETURN_IF_ERROR(Validate(spec));
  if (id == 0) id = next_id_;
  if (requests_.count(id)) return absl::AlreadyExistsError(absl::StrCat("request id ", id));
  next_id_ = std::max(next_id_, id + 1);
  auto r = std::make_unique<Request>();
  r->id = id;
  r->spec = std::move(spec);
  r->arrival = arrivals_++;
  requests_[id] = std::move(r);
  return id;
}

absl::Status Scheduler::Validate(const RequestSpec& spec) const {
  if (spec.model < 0 || spec.model >= static_cast<int>(models_.size())) {
    return absl::NotFoundError(absl::StrCat("unknown model ", spec.model));
  }
  const ModelInfo& m = models_[spec.model];
  if (spec.prompt.empty()) return absl::InvalidArgumentError("empty prompt");
  if (static_cast<int>(spec.prompt.size()) >= m.max_seq_len) {
    return absl::OutOfRangeError(absl::StrCat("prompt of ", spec.prompt.size(),
                                              " tokens leaves no room in the context of ",
                                              m.max_seq_len, " of model ", m.name));
  }
  if (spec.max_tokens < 1) return absl::InvalidArgumentError("max_tokens must be at least 1");
  if (spec.prompt_logprobs < -1 || spec.prompt_logprobs > runtime::kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat("prompt_logprobs must be in [0, ",
                                                   runtime::kMaxLogprobs, "]"));
  }
  for (int32_t t : spec.prompt) {
    if (t < 0 || t >= m.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token id ", t, " outside the vocabulary of ",
                                                     m.vocab_size));
    }
  }
  return spec.sampling.Validate();
}

void Scheduler::Abort(RequestId id) { ends_[id] = Finish::kAbort; }

void Scheduler::Stop(RequestId id) { ends_.try_emplace(id, Finish::kStop); }

Request* Scheduler::Get(RequestId id) {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

const Request* Scheduler::Find(RequestId id) const {
  auto it = requests_.find(id);
  return it == requests_.end() ? nullptr : it->second.get();
}

int Scheduler::num_waiting() const {
  int n = 0;
  for (const auto& [id, r] : requests_) {
    n += r->state == RequestState::kQueued || r->state == RequestState::kPreempted;
  }
  return n;
}

std::vector<int> Scheduler::WaitingByModel() const {
  std::vector<int> n(models_.size(), 0);
  for (const auto& [id, r] : requests_) {
    if (r->state == RequestState::kQueued || r->state == RequestState::kPreempted) {
      ++n[r->spec.model];
    }
  }
  return n;
}

int Scheduler::num_running() const {
  int n = 0;
  for (const auto& [id, r] : requests_) n += r->state == RequestState::kRunning;
  return n;
}

double Scheduler::Weight(const std::string& tenant) const {
  auto it = config_.tenant_weights.find(tenant);
  return it == config_.tenant_weights.end() || it->second <= 0 ? 1.0 : it->second;
}

double Scheduler::service(const std::string& tenant) const {
  auto it = served_.find(tenant);
  return it == served_.end() ? 0.0 : it->second;
}

bool Scheduler::Servable(const Request& r) const {
  bool servable = true;
  if (config_.memory_budget > 0) servable &= alone_bytes_[r.spec.model] <= config_.memory_budget;
  for (InstanceId i : models_[r.spec.model].chain) {
    const InstanceInfo& info = instances_[i];
    servable &= info.kind != BlockKind::kAttn || info.kv_max_pages == 0 ||
                Pages(i, r.context_len() + 1) <= info.kv_max_pages;
  }
  return servable;
}

void Scheduler::SetReady(int model, bool ready) { ready_.at(model) = ready; }

void Scheduler::Finish(Request& r, ::blockserve::scheduler::Finish f) {
  if (f == Finish::kStop || f == Finish::kLength || f == Finish::kContextFull) Donate(r);
  auto it = reserved_.find(r.id);
  if (it != reserved_.end()) {
    Account(r, it->second, 0);
    pending_release_.push_back({r.id, r.spec.model});
  }
  Unuse(r);
  r.finish = f;
  BS_CHECK(r.TransitionTo(RequestState::kFinished).ok());
}

std::vector<Event> Scheduler::CommitDecided(const StepPlan& plan) {
  std::vector<Event> events;
  for (RequestId id : plan.aborted) {
    events.push_back({id, -1, Finish::kAbort, {}});
    requests_.erase(id);
  }
  for (RequestId id : plan.stopped) {
    events.push_back({id, -1, Finish::kStop, {}});
    requests_.erase(id);
  }
  for (RequestId id : plan.unservable) {
    events.push_back({id, -1, Finish::kContextFull, {}});
    requests_.erase(id);
  }
  return events;
}

void Scheduler::FailPlanned(const PlannedSeq& s, std::vector<Event>& events) {
  Request* r = Get(s.id);
  if (r == nullptr || r->state != RequestState::kRunning) return;
  Finish(*r, Finish::kError);
  events.push_back({r->id, -1, Finish::kError, {}});
  requests_.erase(s.id);
}

std::vector<Event> Scheduler::Commit(const StepPlan& plan, const std::vector<StepOutput>& outputs,
                                     bool failed, const std::set<RequestId>& errored) {
  std::vector<Event> events = CommitDecided(plan);
  for (const PlannedSeq& s : plan.seqs) {
    if (failed || errored.count(s.id)) {
      FailPlanned(s, events);
      continue;
    }
    Request* r = Get(s.id);
    if (r == nullptr || r->state != RequestState::kRunning) continue;
    r->computed = s.pos + s.len;
  }
  if (failed) return events;
  for (const StepOutput& o : outputs) {
    Request* r = Get(o.id);
    if (r == nullptr || r->state != RequestState::kRunning) continue;
    const auto& stops = r->spec.stop_tokens;
    ::blockserve::scheduler::Finish f = Finish::kNone;
    if (std::find(stops.begin(), stops.end(), o.token) != stops.end()) {
      f = Finish::kStop;
      events.push_back({r->id, -1, f, {}});
    } else {
      r->generated.push_back(o.token);
      if (static_cast<int>(r->generated.size()) >= r->spec.max_tokens) {
        f = Finish::kLength;
      } else if (r->context_len() >= models_[r->spec.model].max_seq_len) {
        f = Finish::kContextFull;
      }
      events.push_back({r->id, o.token, f, {}, o.logprobs});
    }
    events.back().prompt_logprobs = o.prompt_logprobs;
    if (f != Finish::kNone) {
      Finish(*r, f);
      requests_.erase(o.id);
    }
  }
  return events;
}

std::vector<Release> Scheduler::TakeReleases() {
  std::vector<Release> out = std::move(pending_release_);
  pending_release_.clear();
  return out;
}

}  // namespace blockserve::scheduler
