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

StepPlan Scheduler::Plan() {
  StepPlan plan;
  for (const auto& [id, why] : ends_) {
    Request* r = Get(id);
    if (r == nullptr || r->state == RequestState::kFinished) continue;
    Finish(*r, why);
    (why == Finish::kStop ? plan.stopped : plan.aborted).push_back(id);
  }
  ends_.clear();
  // The entries just made from stopped requests: forked before their KV is released.
  plan.donate = TakeDonations();

  int budget = config_.max_step_tokens;
  auto plan_seq = [&](Request& r, int len) {
    const int from = r.computed;
    plan.seqs.push_back({r.id, r.spec.model, from, len, from + len == r.context_len()});
    auto it = reserved_.find(r.id);
    Account(r, it == reserved_.end() ? 0 : it->second, from + len);
    budget -= len;
    served_[r.spec.tenant] += len / Weight(r.spec.tenant);
  };
  auto next_len = [&](const Request& r) {
    const int remaining = r.context_len() - r.computed;
    return std::max(1, std::min({remaining, config_.prefill_chunk, budget}));
  };
  auto by_priority = [](const Request* a, const Request* b) {
    if (a->spec.priority != b->spec.priority) return a->spec.priority > b->spec.priority;
    return a->arrival < b->arrival;
  };

  // 1. Running requests, most important first.
  std::vector<Request*> running;
  for (auto& [id, r] : requests_) {
    if (r->state == RequestState::kRunning) running.push_back(r.get());
  }
  std::sort(running.begin(), running.end(), by_priority);
  for (Request* r : running) {
    if (r->state != RequestState::kRunning) continue;  // preempted below as a victim
    if (budget <= 0) break;
    const int len = next_len(*r);
    while (r->state == RequestState::kRunning && !Fits(*r, r->computed + len)) {
      if (EvictPrefix(-1, plan)) continue;  // cached prefixes go before running requests
      // Victim: the least important running request holding KV in an instance r needs.
      Request* victim = nullptr;
      for (auto& [id, other] : requests_) {
        if (other->state != RequestState::kRunning || !reserved_.count(other->id)) continue;
        bool shares = other.get() == r;
        for (InstanceId i : models_[other->spec.model].chain) {
          const auto& ch = models_[r->spec.model].chain;
          shares |= instances_[i].kind == BlockKind::kAttn &&
                    std::find(ch.begin(), ch.end(), i) != ch.end();
        }
        if (shares && (victim == nullptr || by_priority(victim, other.get()))) victim = other.get();
      }
      BS_CHECK(victim != nullptr);
      for (size_t s = 0; s < plan.seqs.size(); ++s) {
        if (plan.seqs[s].id == victim->id) {  // planned earlier this step: take it back
          budget += plan.seqs[s].len;
          served_[victim->spec.tenant] -= plan.seqs[s].len / Weight(victim->spec.tenant);
          plan.seqs.erase(plan.seqs.begin() + s);
          break;
        }
      }
      Preempt(*victim, plan);
    }
    if (r->state == RequestState::kRunning) plan_seq(*r, len);
  }

  // 2. Admission: least-served tenant first (weighted), then priority, then age.
  std::map<std::string, std::vector<Request*>> waiting;
  for (auto& [id, r] : requests_) {
    if (r->state != RequestState::kQueued && r->state != RequestState::kPreempted) continue;
    // A request that could not fit even alone would wait forever: finish it instead.
    if (!Servable(*r)) {
      Finish(*r, Finish::kContextFull);
      plan.unservable.push_back(r->id);
      continue;
    }
    waiting[r->spec.tenant].push_back(r.get());
  }
  for (auto& [t, list] : waiting) std::sort(list.begin(), list.end(), by_priority);
  int in_flight = num_running();
  std::set<std::string> blocked;
  // Instances the running requests pin, and their bytes.
  std::set<InstanceId> pinned;
  uint64_t pinned_bytes = 0;
  // Adapter keys pinned (a LoRA model's adapters on its chain are charged once).
  std::set<int32_t> pinned_adapters;
  auto pin = [&](const Request& r) {
    const ModelInfo& m = models_[r.spec.model];
    for (InstanceId i : m.chain) {
      if (pinned.insert(i).second) pinned_bytes += instances_[i].bytes;
    }
    if (m.adapter != 0 && pinned_adapters.insert(m.adapter).second) {
      pinned_bytes += m.adapter_bytes;
    }
  };
  auto extra_bytes = [&](const Request& r) {
    const ModelInfo& m = models_[r.spec.model];
    uint64_t b = m.adapter != 0 && !pinned_adapters.count(m.adapter) ? m.adapter_bytes : 0;
    std::set<InstanceId> seen;
    for (InstanceId i : m.chain) {
      if (!pinned.count(i) && seen.insert(i).second) b += instances_[i].bytes;
    }
    return b;
  };
  for (auto& [id, r] : requests_) {
    if (r->state == RequestState::kRunning) pin(*r);
  }
  // Models still loading: their requests wait, and the memory their chains need is reserved
  // (counted as pinned for the requests considered after them) while the engine loads them.
  auto want = [&](const Request& r) {
    if (std::find(plan.load.begin(), plan.load.end(), r.spec.model) == plan.load.end()) {
      plan.load.push_back(r.spec.model);
    }
    pin(r);
  };
  while (budget > 0 && in_flight < config_.max_running) {
    const std::string* tenant = nullptr;
    for (auto& [t, list] : waiting) {
      if (list.empty() || blocked.count(t)) continue;
      if (tenant == nullptr || service(t) < service(*tenant)) tenant = &t;
    }
    if (tenant == nullptr) break;
    auto& list = waiting[*tenant];
    // The tenant's most important request that can run now, skipping (not waiting behind)
    // requests whose blocks cannot be made resident now or are still loading: another model's
    // request may run meanwhile. A loading model's request that fits reserves its memory.
    size_t pick = 0;
    for (; pick < list.size(); ++pick) {
      const Request& c = *list[pick];
      if (config_.memory_budget > 0 && pinned_bytes + extra_bytes(c) > config_.memory_budget) {
        continue;
      }
      if (ready_[c.spec.model]) break;
      want(c);
    }
    if (pick == list.size()) {
      blocked.insert(*tenant);
      continue;
    }
    Request* r = list[pick];
    // The longest cached prefix of its tokens on its chain (at least one token left to run).
    const int ps = KvPageSize(r->spec.model);
    if (config_.prefix_cache && ps > 0 && r->computed == 0 && r->spec.prompt_logprobs < 0) {
      const std::vector<std::string> keys =
          PrefixKeys(*r, (r->context_len() - 1) / ps * ps, ps);
      for (int len = static_cast<int>(keys.size()) * ps; len > 0; len -= ps) {
        auto alias = prefix_alias_.find(keys[len / ps - 1]);
        if (alias == prefix_alias_.end()) continue;
        const std::string key = alias->second;
        auto it = prefix_.find(key);
        if (it == prefix_.end()) continue;
        bool same = true;
        for (int k = 0; k < len && same; ++k) same = it->second.tokens[k] == r->TokenAt(k);
        if (!same) continue;
        r->prefix_key = key;
        r->prefix_len = len;
        break;
      }
    }
    // Room for the whole context and the first new token along the chain, so that an admitted
    // request is not preempted at once (unused cached prefixes make room first).
    while (!Fits(*r, r->context_len() + 1) && EvictPrefix(-1, plan)) {
      if (!r->prefix_key.empty() && !prefix_.count(r->prefix_key)) {
        r->prefix_key.clear();
        r->prefix_len = 0;
      }
    }
    if (!r->prefix_key.empty() && !prefix_.count(r->prefix_key)) {
      r->prefix_key.clear();
      r->prefix_len = 0;
    }
    if (!Fits(*r, r->context_len() + 1) ||
        (config_.memory_budget > 0 && pinned_bytes + extra_bytes(*r) > config_.memory_budget)) {
      r->prefix_key.clear();
      r->prefix_len = 0;
      blocked.insert(*tenant);
      continue;
    }
    if (!r->prefix_key.empty()) {
      PrefixEntry& e = prefix_.at(r->prefix_key);
      ++e.users;
      e.last_used = ++clock_;
      plan.forks.push_back({e.seq, r->id, r->spec.model, r->prefix_len});
      reserved_[r->id] = r->prefix_len;  // charged nothing: the entry holds these pages
      r->computed = r->prefix_len;
      ++prefix_hits_;
      prefix_hit_tokens_ += r->prefix_len;
    }
    pin(*r);
    list.erase(list.begin() + pick);
    BS_CHECK(r->TransitionTo(RequestState::kRunning).ok());
    plan.admitted.push_back(r->id);
    plan_seq(*r, next_len(*r));
    ++in_flight;
  }

  // The requests still waiting, least-served tenant first, then priority: while their chains
  // fit next to what is pinned and reserved, their memory is reserved too — the models they
  // need that are not ready load ahead, and the ones that are stay resident for them.
  // (Only while some model is not ready: reservations matter to loads alone.)
  std::vector<const std::string*> tenants;
  if (std::find(ready_.begin(), ready_.end(), false) != ready_.end()) {
    for (auto& [t, list] : waiting) tenants.push_back(&t);
  }
  std::stable_sort(tenants.begin(), tenants.end(),
                   [&](const std::string* a, const std::string* b) {
                     return service(*a) < service(*b);
                   });
  for (const std::string* t : tenants) {
    for (const Request* r : waiting[*t]) {
      if (config_.memory_budget > 0 && pinned_bytes + extra_bytes(*r) > config_.memory_budget) {
        continue;
      }
      if (ready_[r->spec.model]) {
        pin(*r);
      } else {
        want(*r);
      }
    }
  }

  plan.release.insert(plan.release.end(), pending_release_.begin(), pending_release_.end());
  pending_release_.clear();
  plan.reserved.assign(pinned.begin(), pinned.end());
  // Only the running requests' instances must be resident (reservations are not).
  pinned.clear();
  for (auto& [id, r] : requests_) {
    if (r->state != RequestState::kRunning) continue;
    pinned.insert(models_[r->spec.model].chain.begin(), models_[r->spec.model].chain.end());
  }
  plan.pinned.assign(pinned.begin(), pinned.end());

  // 3. Per chain position, one call per block instance (split at its maximum batch).
  for (size_t s = 0; s < plan.seqs.size(); ++s) {
    const auto& chain = models_[plan.seqs[s].model].chain;
    if (plan.rounds.size() < chain.size()) plan.rounds.resize(chain.size());
    for (size_t pos = 0; pos < chain.size(); ++pos) {
      // The head only for sequences that sample (a prefill chunk mid-prompt needs no logits),
      // or that score their prompt (RequestSpec::prompt_logprobs).
      if (pos + 1 == chain.size() && !plan.seqs[s].sample &&
          Get(plan.seqs[s].id)->spec.prompt_logprobs < 0) {
        continue;
      }
      auto& calls = plan.rounds[pos];
      const InstanceId inst = chain[pos];
      BlockCall* call = nullptr;
      for (auto it = calls.rbegin(); it != calls.rend(); ++it) {
        if (it->instance == inst) {
          call = &*it;
          break;
        }
      }
      int tokens = 0;
      if (call != nullptr) {
        for (int m : call->members) tokens += plan.seqs[m].len;
      }
      if (call == nullptr ||
          (!call->members.empty() && tokens + plan.seqs[s].len > instances_[inst].max_batch_tokens)) {
        calls.push_back({inst, {}});
        call = &calls.back();
      }
      call->members.push_back(static_cast<int>(s));
    }
  }
  return plan;
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
