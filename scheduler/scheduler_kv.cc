// Scheduler, KV bookkeeping: the pages a request is charged at each attn instance of its chain,
// admission's fit test, the prefix cache (keys, donation of a finished request's full pages,
// eviction), preemption, and the invariants the tests check after every step. Bookkeeping only:
// the bytes live in the blocks' caches. (Planning and committing steps: scheduler.cc.)
#include "scheduler/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "runtime/check.h"
#include "runtime/status_macros.h"

namespace blockserve::scheduler {

using runtime::BlockKind;

int Scheduler::Pages(InstanceId i, int len) const {
  const int ps = instances_[i].kv_page_size;
  return (len + ps - 1) / ps;
}

int Scheduler::Charged(const Request& r, InstanceId i, int len) const {
  return std::max(0, Pages(i, len) - Pages(i, r.prefix_len));
}

bool Scheduler::Fits(const Request& r, int len) const {
  auto it = reserved_.find(r.id);
  const int have = it == reserved_.end() ? 0 : it->second;
  for (InstanceId i : models_[r.spec.model].chain) {
    const InstanceInfo& info = instances_[i];
    if (info.kind != BlockKind::kAttn || info.kv_max_pages == 0) continue;
    if (pages_used_[i] + Charged(r, i, len) - Charged(r, i, have) > info.kv_max_pages) {
      return false;
    }
  }
  return true;
}

void Scheduler::Account(const Request& r, int from_len, int to_len) {
  for (InstanceId i : models_[r.spec.model].chain) {
    if (instances_[i].kind != BlockKind::kAttn) continue;
    pages_used_[i] += Charged(r, i, to_len) - Charged(r, i, from_len);
  }
  if (to_len == 0) {
    reserved_.erase(r.id);
  } else {
    reserved_[r.id] = to_len;
  }
}

int Scheduler::KvPageSize(int model) const {
  int ps = 0;
  for (InstanceId i : models_[model].chain) {
    if (instances_[i].kind != BlockKind::kAttn) continue;
    if (ps != 0 && ps != instances_[i].kv_page_size) return 0;
    ps = instances_[i].kv_page_size;
  }
  return ps;
}

std::vector<std::string> Scheduler::PrefixKeys(const Request& r, int len, int ps) const {
  std::string scope;
  for (InstanceId i : models_[r.spec.model].chain) absl::StrAppend(&scope, i, ",");
  const std::string& t = r.spec.tenant;
  absl::StrAppend(&scope, "|", config_.shared_prefix_tenants.count(t) ? std::string("*") : t, "|");
  // One FNV-1a pass over the token ids, keyed at every page boundary.
  std::vector<std::string> keys;
  uint64_t h = 1469598103934665603ull;
  for (int k = 0; k < len; ++k) {
    const uint32_t v = static_cast<uint32_t>(r.TokenAt(k));
    for (int b = 0; b < 4; ++b) h = (h ^ ((v >> (8 * b)) & 0xff)) * 1099511628211ull;
    if ((k + 1) % ps == 0) keys.push_back(absl::StrCat(scope, k + 1, "|", h));
  }
  return keys;
}

void Scheduler::Unuse(Request& r) {
  if (r.prefix_key.empty()) return;
  auto it = prefix_.find(r.prefix_key);
  if (it != prefix_.end()) --it->second.users;
  r.prefix_key.clear();
  r.prefix_len = 0;
}

// Keeps the full pages of a finished request as a prefix-cache entry (its pages move to the
// entry; nothing is copied).
void Scheduler::Donate(Request& r) {
  const int ps = KvPageSize(r.spec.model);
  if (!config_.prefix_cache || ps == 0 || r.prefix_len != 0 ||
      config_.uncached_tenants.count(r.spec.tenant)) {
    return;
  }
  const int len = r.computed / ps * ps;
  if (len == 0) return;
  const std::vector<std::string> keys = PrefixKeys(r, len, ps);
  const std::string& key = keys.back();
  auto it = prefix_.find(key);
  if (it != prefix_.end()) {
    it->second.last_used = ++clock_;
    return;
  }
  PrefixEntry e;
  e.seq = next_prefix_seq_--;
  e.model = r.spec.model;
  for (int k = 0; k < len; ++k) e.tokens.push_back(r.TokenAt(k));
  e.last_used = ++clock_;
  for (InstanceId i : models_[r.spec.model].chain) {
    if (instances_[i].kind == BlockKind::kAttn) pages_used_[i] += Pages(i, len);
  }
  pending_donations_.push_back({r.id, e.seq, r.spec.model, len});
  prefix_[key] = std::move(e);
  for (const std::string& k : keys) prefix_alias_.emplace(k, key);
}

bool Scheduler::EvictPrefix(InstanceId instance, StepPlan& plan) {
  auto victim = prefix_.end();
  for (auto it = prefix_.begin(); it != prefix_.end(); ++it) {
    if (it->second.users > 0) continue;
    if (instance >= 0) {
      const auto& ch = models_[it->second.model].chain;
      if (std::find(ch.begin(), ch.end(), instance) == ch.end()) continue;
    }
    if (victim == prefix_.end() || it->second.last_used < victim->second.last_used) victim = it;
  }
  if (victim == prefix_.end()) return false;
  const PrefixEntry& e = victim->second;
  for (InstanceId i : models_[e.model].chain) {
    if (instances_[i].kind == BlockKind::kAttn) {
      pages_used_[i] -= Pages(i, static_cast<int>(e.tokens.size()));
    }
  }
  plan.release.push_back({e.seq, e.model});
  for (auto a = prefix_alias_.begin(); a != prefix_alias_.end();) {
    a = a->second == victim->first ? prefix_alias_.erase(a) : std::next(a);
  }
  prefix_.erase(victim);
  return true;
}

std::vector<Release> Scheduler::DropPrefixes(InstanceId instance) {
  StepPlan plan;
  while (EvictPrefix(instance, plan)) {
  }
  return plan.release;
}

std::vector<Fork> Scheduler::TakeDonations() {
  std::vector<Fork> out = std::move(pending_donations_);
  pending_donations_.clear();
  return out;
}

void Scheduler::Preempt(Request& r, StepPlan& plan) {
  auto it = reserved_.find(r.id);
  if (it != reserved_.end()) {
    Account(r, it->second, 0);
    pending_release_.push_back({r.id, r.spec.model});
  }
  Unuse(r);
  r.computed = 0;
  ++r.preemptions;
  BS_CHECK(r.TransitionTo(RequestState::kPreempted).ok());
  plan.preempted.push_back(r.id);
}

absl::Status Scheduler::CheckInvariants() const {
  std::vector<int> pages(instances_.size(), 0);
  for (const auto& [id, len] : reserved_) {
    auto it = requests_.find(id);
    if (it == requests_.end() || it->second->state != RequestState::kRunning) {
      return absl::InternalError(absl::StrCat("request ", id, " holds KV but is not running"));
    }
    if (len < it->second->computed) {
      return absl::InternalError(absl::StrCat("request ", id, " reserved less than computed"));
    }
    for (InstanceId i : models_[it->second->spec.model].chain) {
      if (instances_[i].kind == BlockKind::kAttn) pages[i] += Charged(*it->second, i, len);
    }
  }
  for (const auto& [key, e] : prefix_) {
    for (InstanceId i : models_[e.model].chain) {
      if (instances_[i].kind == BlockKind::kAttn) {
        pages[i] += Pages(i, static_cast<int>(e.tokens.size()));
      }
    }
  }
  for (size_t i = 0; i < instances_.size(); ++i) {
    if (pages[i] != pages_used_[i]) {
      return absl::InternalError(absl::StrCat("instance ", i, ": ", pages_used_[i],
                                              " pages accounted, sequences hold ", pages[i]));
    }
    if (instances_[i].kv_max_pages > 0 && pages[i] > instances_[i].kv_max_pages) {
      return absl::InternalError(absl::StrCat("instance ", i, " over its KV budget"));
    }
  }
  for (const auto& [id, r] : requests_) {
    if (r->state != RequestState::kRunning && r->computed != 0) {
      return absl::InternalError(absl::StrCat("request ", id, " is not running but has KV"));
    }
  }
  return absl::OkStatus();
}

}  // namespace blockserve::scheduler
