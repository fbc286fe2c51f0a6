// Scheduler, planning: one step's plan made in phases by a Planner (the step's planning state)
// — requests ended from outside, the running requests' next work (preempting the least
// important when KV runs out), admission of waiting requests (fair across tenants, from cached
// prefixes), memory reserved for the requests still waiting, and the calls per chain position.
#include <algorithm>

#include "runtime/check.h"
#include "scheduler/scheduler.h"

namespace blockserve::scheduler {

using runtime::BlockKind;

class Scheduler::Planner {
 public:
  explicit Planner(Scheduler& s) : s_(s), budget_(s.config_.max_step_tokens) {}

  StepPlan Run() {
    EndRequested();
    PlanRunning();
    CollectWaiting();
    for (auto& [id, r] : s_.requests_) {
      if (r->state == RequestState::kRunning) Pin(*r);
    }
    Admit();
    Reserve();
    plan_.release.insert(plan_.release.end(), s_.pending_release_.begin(),
                         s_.pending_release_.end());
    s_.pending_release_.clear();
    plan_.reserved.assign(pinned_.begin(), pinned_.end());
    // Only the running requests' instances must be resident (reservations are not).
    std::set<InstanceId> pinned;
    for (auto& [id, r] : s_.requests_) {
      if (r->state != RequestState::kRunning) continue;
      const auto& chain = s_.models_[r->spec.model].chain;
      pinned.insert(chain.begin(), chain.end());
    }
    plan_.pinned.assign(pinned.begin(), pinned.end());
    Group();
    return std::move(plan_);
  }

 private:
  static bool ByPriority(const Request* a, const Request* b) {
    if (a->spec.priority != b->spec.priority) return a->spec.priority > b->spec.priority;
    return a->arrival < b->arrival;
  }

  void PlanSeq(Request& r, int len) {
    const int from = r.computed;
    plan_.seqs.push_back({r.id, r.spec.model, from, len, from + len == r.context_len()});
    auto it = s_.reserved_.find(r.id);
    s_.Account(r, it == s_.reserved_.end() ? 0 : it->second, from + len);
    budget_ -= len;
    s_.served_[r.spec.tenant] += len / s_.Weight(r.spec.tenant);
  }

  int NextLen(const Request& r) const {
    const int remaining = r.context_len() - r.computed;
    return std::max(1, std::min({remaining, s_.config_.prefill_chunk, budget_}));
  }

  // Aborts and stops asked for since the last plan.
  void EndRequested() {
    for (const auto& [id, why] : s_.ends_) {
      Request* r = s_.Get(id);
      if (r == nullptr || r->state == RequestState::kFinished) continue;
      s_.Finish(*r, why);
      (why == Finish::kStop ? plan_.stopped : plan_.aborted).push_back(id);
    }
    s_.ends_.clear();
    // The entries just made from stopped requests: forked before their KV is released.
    plan_.donate = s_.TakeDonations();
  }

  // 1. Running requests, most important first.
  void PlanRunning() {
    std::vector<Request*> running;
    for (auto& [id, r] : s_.requests_) {
      if (r->state == RequestState::kRunning) running.push_back(r.get());
    }
    std::sort(running.begin(), running.end(), ByPriority);
    for (Request* r : running) {
      if (r->state != RequestState::kRunning) continue;  // preempted below as a victim
      if (budget_ <= 0) break;
      const int len = NextLen(*r);
      while (r->state == RequestState::kRunning && !s_.Fits(*r, r->computed + len)) {
        if (s_.EvictPrefix(-1, plan_)) continue;  // cached prefixes go before running requests
        PreemptFor(*r);
      }
      if (r->state == RequestState::kRunning) PlanSeq(*r, len);
    }
  }

  // Preempts the least important running request holding KV in an attn instance `r` needs.
  void PreemptFor(const Request& r) {
    const auto& ch = s_.models_[r.spec.model].chain;
    Request* victim = nullptr;
    for (auto& [id, other] : s_.requests_) {
      if (other->state != RequestState::kRunning || !s_.reserved_.count(other->id)) continue;
      bool shares = other.get() == &r;
      for (InstanceId i : s_.models_[other->spec.model].chain) {
        shares |= s_.instances_[i].kind == BlockKind::kAttn &&
                  std::find(ch.begin(), ch.end(), i) != ch.end();
      }
      if (shares && (victim == nullptr || ByPriority(victim, other.get()))) victim = other.get();
    }
    BS_CHECK(victim != nullptr);
    for (size_t s = 0; s < plan_.seqs.size(); ++s) {
      if (plan_.seqs[s].id == victim->id) {  // planned earlier this step: take it back
        budget_ += plan_.seqs[s].len;
        s_.served_[victim->spec.tenant] -= plan_.seqs[s].len / s_.Weight(victim->spec.tenant);
        plan_.seqs.erase(plan_.seqs.begin() + s);
        break;
      }
    }
    s_.Preempt(*victim, plan_);
  }

  // Waiting requests per tenant, most important first; one that could not fit even alone
  // would wait forever: it finishes instead.
  void CollectWaiting() {
    for (auto& [id, r] : s_.requests_) {
      if (r->state != RequestState::kQueued && r->state != RequestState::kPreempted) continue;
      if (!s_.Servable(*r)) {
        s_.Finish(*r, Finish::kContextFull);
        plan_.unservable.push_back(r->id);
        continue;
      }
      waiting_[r->spec.tenant].push_back(r.get());
    }
    for (auto& [t, list] : waiting_) std::sort(list.begin(), list.end(), ByPriority);
  }

  // Instances (and adapters) `r` needs counted as pinned.
  void Pin(const Request& r) {
    const ModelInfo& m = s_.models_[r.spec.model];
    for (InstanceId i : m.chain) {
      if (pinned_.insert(i).second) pinned_bytes_ += s_.instances_[i].bytes;
    }
    if (m.adapter != 0 && pinned_adapters_.insert(m.adapter).second) {
      pinned_bytes_ += m.adapter_bytes;
    }
  }

  uint64_t ExtraBytes(const Request& r) const {
    const ModelInfo& m = s_.models_[r.spec.model];
    uint64_t b = m.adapter != 0 && !pinned_adapters_.count(m.adapter) ? m.adapter_bytes : 0;
    std::set<InstanceId> seen;
    for (InstanceId i : m.chain) {
      if (!pinned_.count(i) && seen.insert(i).second) b += s_.instances_[i].bytes;
    }
    return b;
  }

  bool OverMemory(const Request& r) const {
    return s_.config_.memory_budget > 0 && pinned_bytes_ + ExtraBytes(r) > s_.config_.memory_budget;
  }

  // A model still loading: its requests wait, and the memory its chain needs is reserved
  // (counted as pinned for the requests considered after them) while the engine loads it.
  void Want(const Request& r) {
    if (std::find(plan_.load.begin(), plan_.load.end(), r.spec.model) == plan_.load.end()) {
      plan_.load.push_back(r.spec.model);
    }
    Pin(r);
  }

  // 2. Admission: least-served tenant first (weighted), then priority, then age.
  void Admit() {
    int in_flight = s_.num_running();
    std::set<std::string> blocked;
    while (budget_ > 0 && in_flight < s_.config_.max_running) {
      const std::string* tenant = nullptr;
      for (auto& [t, list] : waiting_) {
        if (list.empty() || blocked.count(t)) continue;
        if (tenant == nullptr || s_.service(t) < s_.service(*tenant)) tenant = &t;
      }
      if (tenant == nullptr) break;
      if (AdmitOne(waiting_[*tenant])) {
        ++in_flight;
      } else {
        blocked.insert(*tenant);
      }
    }
  }

  // The tenant's most important request that can run now, skipping (not waiting behind)
  // requests whose blocks cannot be made resident now or are still loading: another model's
  // request may run meanwhile. A loading model's request that fits reserves its memory.
  bool AdmitOne(std::vector<Request*>& list) {
    size_t pick = 0;
    for (; pick < list.size(); ++pick) {
      const Request& c = *list[pick];
      if (OverMemory(c)) continue;
      if (s_.ready_[c.spec.model]) break;
      Want(c);
    }
    if (pick == list.size()) return false;
    Request* r = list[pick];
    FindPrefix(*r);
    // Room for the whole context and the first new token along the chain, so that an admitted
    // request is not preempted at once (unused cached prefixes make room first).
    auto drop_lost_prefix = [&] {
      if (!r->prefix_key.empty() && !s_.prefix_.count(r->prefix_key)) {
        r->prefix_key.clear();
        r->prefix_len = 0;
      }
    };
    while (!s_.Fits(*r, r->context_len() + 1) && s_.EvictPrefix(-1, plan_)) drop_lost_prefix();
    drop_lost_prefix();
    if (!s_.Fits(*r, r->context_len() + 1) || OverMemory(*r)) {
      r->prefix_key.clear();
      r->prefix_len = 0;
      return false;
    }
    if (!r->prefix_key.empty()) {
      PrefixEntry& e = s_.prefix_.at(r->prefix_key);
      ++e.users;
      e.last_used = ++s_.clock_;
      plan_.forks.push_back({e.seq, r->id, r->spec.model, r->prefix_len});
      s_.reserved_[r->id] = r->prefix_len;  // charged nothing: the entry holds these pages
      r->computed = r->prefix_len;
      ++s_.prefix_hits_;
      s_.prefix_hit_tokens_ += r->prefix_len;
    }
    Pin(*r);
    list.erase(list.begin() + pick);
    BS_CHECK(r->TransitionTo(RequestState::kRunning).ok());
    plan_.admitted.push_back(r->id);
    PlanSeq(*r, NextLen(*r));
    return true;
  }

  // The longest cached prefix of r's tokens on its chain (at least one token left to run).
  void FindPrefix(Request& r) const {
    const int ps = s_.KvPageSize(r.spec.model);
    if (!s_.config_.prefix_cache || ps <= 0 || r.computed != 0 || r.spec.prompt_logprobs >= 0) {
      return;
    }
    const std::vector<std::string> keys = s_.PrefixKeys(r, (r.context_len() - 1) / ps * ps, ps);
    for (int len = static_cast<int>(keys.size()) * ps; len > 0; len -= ps) {
      auto alias = s_.prefix_alias_.find(keys[len / ps - 1]);
      if (alias == s_.prefix_alias_.end()) continue;
      const std::string key = alias->second;
      auto it = s_.prefix_.find(key);
      if (it == s_.prefix_.end()) continue;
      bool same = true;
      for (int k = 0; k < len && same; ++k) same = it->second.tokens[k] == r.TokenAt(k);
      if (!same) continue;
      r.prefix_key = key;
      r.prefix_len = len;
      return;
    }
  }

  // The requests still waiting, least-served tenant first, then priority: while their chains
  // fit next to what is pinned and reserved, their memory is reserved too — the models they
  // need that are not ready load ahead, and the ones that are stay resident for them.
  // (Only while some model is not ready: reservations matter to loads alone.)
  void Reserve() {
    if (std::find(s_.ready_.begin(), s_.ready_.end(), false) == s_.ready_.end()) return;
    std::vector<const std::string*> tenants;
    for (auto& [t, list] : waiting_) tenants.push_back(&t);
    std::stable_sort(tenants.begin(), tenants.end(),
                     [&](const std::string* a, const std::string* b) {
                       return s_.service(*a) < s_.service(*b);
                     });
    for (const std::string* t : tenants) {
      for (const Request* r : waiting_[*t]) {
        if (OverMemory(*r)) continue;
        if (s_.ready_[r->spec.model]) {
          Pin(*r);
        } else {
          Want(*r);
        }
      }
    }
  }

  // 3. Per chain position, one call per block instance (split at its maximum batch).
  void Group() {
    for (size_t s = 0; s < plan_.seqs.size(); ++s) {
      const auto& chain = s_.models_[plan_.seqs[s].model].chain;
      if (plan_.rounds.size() < chain.size()) plan_.rounds.resize(chain.size());
      for (size_t pos = 0; pos < chain.size(); ++pos) {
        // The head only for sequences that sample (a prefill chunk mid-prompt needs no
        // logits), or that score their prompt (RequestSpec::prompt_logprobs).
        if (pos + 1 == chain.size() && !plan_.seqs[s].sample &&
            s_.Get(plan_.seqs[s].id)->spec.prompt_logprobs < 0) {
          continue;
        }
        auto& calls = plan_.rounds[pos];
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
          for (int m : call->members) tokens += plan_.seqs[m].len;
        }
        if (call == nullptr || (!call->members.empty() &&
                                tokens + plan_.seqs[s].len > s_.instances_[inst].max_batch_tokens)) {
          calls.push_back({inst, {}});
          call = &calls.back();
        }
        call->members.push_back(static_cast<int>(s));
      }
    }
  }

  Scheduler& s_;
  StepPlan plan_;
  int budget_;
  std::map<std::string, std::vector<Request*>> waiting_;
  // Instances the running (and admitted, and reserved-for) requests pin, and their bytes;
  // adapter keys pinned (a LoRA model's adapters on its chain are charged once).
  std::set<InstanceId> pinned_;
  uint64_t pinned_bytes_ = 0;
  std::set<int32_t> pinned_adapters_;
};

StepPlan Scheduler::Plan() { return Planner(*this).Run(); }

}  // namespace blockserve::scheduler
