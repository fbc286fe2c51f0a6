#include "server/config.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "blockzoo/file_util.h"
#include "blockzoo/sha256.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace blockserve::server {

namespace {

using nlohmann::json;

// Typed field access with errors naming the source and the field path.
class Fields {
 public:
  Fields(const json& j, std::string source, std::string path)
      : j_(j), source_(std::move(source)), path_(std::move(path)) {}

  absl::Status Error(const std::string& key, const std::string& what) const {
    return absl::InvalidArgumentError(absl::StrCat(source_, ": ", path_, key, ": ", what));
  }
  absl::Status Known(const std::set<std::string>& keys) const {
    for (const auto& [k, v] : j_.items()) {
      if (!keys.count(k)) return Error(k, "unknown field");
    }
    return absl::OkStatus();
  }
  template <typename T>
  absl::Status Number(const std::string& key, T* out, double min, double max) const {
    if (!j_.contains(key)) return absl::OkStatus();
    const json& v = j_.at(key);
    if (!v.is_number()) return Error(key, "must be a number");
    const double d = v.get<double>();
    if (!(d >= min && d <= max)) return Error(key, absl::StrCat("must be in [", min, ", ", max, "]"));
    if constexpr (std::is_integral_v<T>) {
      if (d != std::floor(d)) return Error(key, "must be an integer");
    }
    *out = static_cast<T>(d);
    return absl::OkStatus();
  }
  absl::Status Bool(const std::string& key, bool* out) const {
    if (!j_.contains(key)) return absl::OkStatus();
    if (!j_.at(key).is_boolean()) return Error(key, "must be true or false");
    *out = j_.at(key).get<bool>();
    return absl::OkStatus();
  }
  absl::Status String(const std::string& key, std::string* out) const {
    if (!j_.contains(key)) return absl::OkStatus();
    if (!j_.at(key).is_string()) return Error(key, "must be a string");
    *out = j_.at(key).get<std::string>();
    return absl::OkStatus();
  }
  absl::Status Strings(const std::string& key, std::vector<std::string>* out) const {
    if (!j_.contains(key)) return absl::OkStatus();
    const json& v = j_.at(key);
    if (!v.is_array()) return Error(key, "must be an array of strings");
    out->clear();
    for (const json& e : v) {
      if (!e.is_string() || e.get<std::string>().empty()) {
        return Error(key, "must be an array of non-empty strings");
      }
      out->push_back(e.get<std::string>());
    }
    return absl::OkStatus();
  }

 private:
  const json& j_;
  std::string source_, path_;
};

constexpr double kMiB = 1024.0 * 1024.0;

absl::Status ParseTenant(const json& j, const std::string& source, const std::string& path,
                         TenantConfig* t) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": ", path, ": must be an object"));
  Fields f(j, source, path + ".");
  RETURN_IF_ERROR(f.Known({"name", "api_keys", "models", "requests_per_second", "tokens_per_minute",
                           "max_concurrent", "weight", "priority", "equivalence", "cache_prefixes",
                           "share_prefixes", "admin"}));
  RETURN_IF_ERROR(f.String("name", &t->name));
  if (t->name.empty()) return f.Error("name", "required");
  RETURN_IF_ERROR(f.Strings("api_keys", &t->api_keys));
  if (t->api_keys.empty()) return f.Error("api_keys", "at least one key is required");
  std::vector<std::string> models = {"*"};
  RETURN_IF_ERROR(f.Strings("models", &models));
  t->models = std::set<std::string>(models.begin(), models.end());
  RETURN_IF_ERROR(f.Number("requests_per_second", &t->requests_per_second, 0, 1e9));
  RETURN_IF_ERROR(f.Number("tokens_per_minute", &t->tokens_per_minute, 0, 1e12));
  RETURN_IF_ERROR(f.Number("max_concurrent", &t->max_concurrent, 0, 1e6));
  RETURN_IF_ERROR(f.Number("weight", &t->weight, 1e-6, 1e6));
  RETURN_IF_ERROR(f.Number("priority", &t->priority, -1000, 1000));
  RETURN_IF_ERROR(f.Bool("cache_prefixes", &t->cache_prefixes));
  RETURN_IF_ERROR(f.Bool("share_prefixes", &t->share_prefixes));
  if (t->share_prefixes && !t->cache_prefixes) {
    return f.Error("share_prefixes", "needs cache_prefixes (a prefix that is not cached cannot be shared)");
  }
  RETURN_IF_ERROR(f.Bool("admin", &t->admin));
  if (j.contains("equivalence")) {
    const json& e = j.at("equivalence");
    const std::string ep = path + ".equivalence";
    if (e.is_string()) {
      if (e.get<std::string>() == "equivalent") {
        t->policy.mode = blockzoo::ResolvePolicy::Mode::kEquivalent;
      } else if (e.get<std::string>() != "exact") {
        return f.Error("equivalence", "must be \"exact\", \"equivalent\" or an object");
      }
    } else if (e.is_object()) {
      Fields ef(e, source, ep + ".");
      RETURN_IF_ERROR(ef.Known({"mode", "threshold", "allow_skip", "min_top1"}));
      std::string mode = "equivalent";
      RETURN_IF_ERROR(ef.String("mode", &mode));
      if (mode == "equivalent") {
        t->policy.mode = blockzoo::ResolvePolicy::Mode::kEquivalent;
      } else if (mode != "exact") {
        return ef.Error("mode", "must be \"exact\" or \"equivalent\"");
      }
      RETURN_IF_ERROR(ef.Number("threshold", &t->policy.threshold, -1, 1));
      RETURN_IF_ERROR(ef.Bool("allow_skip", &t->policy.allow_skip));
      RETURN_IF_ERROR(ef.Number("min_top1", &t->policy.min_top1, 0, 1));
    } else {
      return f.Error("equivalence", "must be \"exact\", \"equivalent\" or an object");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& text, const std::string& source) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {  // syntax, or a number past a double's range
    return absl::InvalidArgumentError(absl::StrCat(source, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object"));
  ServerConfig c;
  Fields f(j, source, "");
  RETURN_IF_ERROR(f.Known({"engine", "gateway", "models", "tenants", "admin_keys"}));
  RETURN_IF_ERROR(f.Strings("models", &c.models));
  RETURN_IF_ERROR(f.Strings("admin_keys", &c.admin_keys));
  if (j.contains("engine")) {
    const json& e = j.at("engine");
    if (!e.is_object()) return f.Error("engine", "must be an object");
    Fields ef(e, source, "engine.");
    RETURN_IF_ERROR(ef.Known({"threads", "memory_budget_mib", "kv_budget_mib", "kv_page_size",
                              "kv_dtype", "max_running", "max_step_tokens", "max_batch_tokens",
                              "prefix_cache", "background_loads",
                              "profile_max_batch"}));
    RETURN_IF_ERROR(ef.Number("threads", &c.threads, 0, 1024));
    double mem = 0, kv = 0;
    RETURN_IF_ERROR(ef.Number("memory_budget_mib", &mem, 0, 1e9));
    RETURN_IF_ERROR(ef.Number("kv_budget_mib", &kv, 0, 1e9));
    c.memory_budget = static_cast<uint64_t>(mem * kMiB);
    c.kv_budget = static_cast<uint64_t>(kv * kMiB);
    RETURN_IF_ERROR(ef.Number("kv_page_size", &c.kv_page_size, 1, 4096));
    std::string kv_dtype = "f32";
    RETURN_IF_ERROR(ef.String("kv_dtype", &kv_dtype));
    auto kv_type = runtime::ParseDType(kv_dtype, {runtime::DType::kF32, runtime::DType::kBF16});
    if (!kv_type.ok()) return ef.Error("kv_dtype", std::string(kv_type.status().message()));
    c.kv_dtype = *kv_type;
    RETURN_IF_ERROR(ef.Number("max_running", &c.max_running, 1, 1 << 20));
    RETURN_IF_ERROR(ef.Number("max_step_tokens", &c.max_step_tokens, 1, 1 << 20));
    RETURN_IF_ERROR(ef.Number("max_batch_tokens", &c.max_batch_tokens, 1, 1 << 20));
    RETURN_IF_ERROR(ef.Bool("prefix_cache", &c.prefix_cache));
    RETURN_IF_ERROR(ef.Bool("background_loads", &c.background_loads));
    RETURN_IF_ERROR(ef.Bool("profile_max_batch", &c.profile_max_batch));
  }
  if (j.contains("gateway")) {
    const json& g = j.at("gateway");
    if (!g.is_object()) return f.Error("gateway", "must be an object");
    Fields gf(g, source, "gateway.");
    RETURN_IF_ERROR(gf.Known({"max_body_bytes", "http_threads", "default_max_tokens",
                              "drain_seconds", "read_timeout_s", "idle_timeout_s",
                              "max_connections", "metrics_port", "metrics_keys",
                              "grpc_reflection"}));
    RETURN_IF_ERROR(gf.Number("metrics_port", &c.metrics_port, 0, 65535));
    RETURN_IF_ERROR(gf.Strings("metrics_keys", &c.metrics_keys));
    if (g.contains("grpc_reflection")) {
      bool on = false;
      RETURN_IF_ERROR(gf.Bool("grpc_reflection", &on));
      c.grpc_reflection = on;
    }
    RETURN_IF_ERROR(gf.Number("read_timeout_s", &c.read_timeout_s, 1, 3600));
    RETURN_IF_ERROR(gf.Number("idle_timeout_s", &c.idle_timeout_s, 1, 3600));
    RETURN_IF_ERROR(gf.Number("max_connections", &c.max_connections, 16, 1 << 20));
    RETURN_IF_ERROR(gf.Number("max_body_bytes", &c.max_body_bytes, 1024, 1 << 30));
    RETURN_IF_ERROR(gf.Number("http_threads", &c.http_threads, 4, 4096));
    RETURN_IF_ERROR(gf.Number("default_max_tokens", &c.default_max_tokens, 1, 1 << 20));
    RETURN_IF_ERROR(gf.Number("drain_seconds", &c.drain_seconds, 0, 3600));
  }
  if (j.contains("tenants")) {
    const json& ts = j.at("tenants");
    if (!ts.is_array()) return f.Error("tenants", "must be an array");
    std::set<std::string> names, keys(c.admin_keys.begin(), c.admin_keys.end());
    for (size_t i = 0; i < ts.size(); ++i) {
      TenantConfig t;
      const std::string path = absl::StrCat("tenants[", i, "]");
      RETURN_IF_ERROR(ParseTenant(ts[i], source, path, &t));
      if (!names.insert(t.name).second) {
        return absl::InvalidArgumentError(absl::StrCat(source, ": ", path, ".name: duplicate tenant ", t.name));
      }
      for (const std::string& k : t.api_keys) {
        if (!keys.insert(k).second) {
          return absl::InvalidArgumentError(
              absl::StrCat(source, ": ", path, ".api_keys: key ", RedactKey(k), " is used twice"));
        }
      }
      c.tenants.push_back(std::move(t));
    }
  }
  return c;
}

absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, blockzoo::ReadWholeFile(path, size_t{16} << 20));
  return ParseServerConfig(text, path);
}

std::string RedactKey(std::string_view key) {
  if (key.size() <= 8) return "****";
  return std::string(key.substr(0, 4)) + "..." + std::string(key.substr(key.size() - 4));
}

namespace {

std::string_view Strip(std::string_view v) {
  while (!v.empty() && absl::ascii_isspace(static_cast<unsigned char>(v.front()))) v.remove_prefix(1);
  while (!v.empty() && absl::ascii_isspace(static_cast<unsigned char>(v.back()))) v.remove_suffix(1);
  return v;
}

}  // namespace

TokenBucket::TokenBucket(double rate, double burst)
    : rate_(rate), burst_(burst), level_(burst), last_(std::chrono::steady_clock::now()) {}

void TokenBucket::Refill() {
  const auto now = std::chrono::steady_clock::now();
  level_ = std::min(burst_, level_ + rate_ * std::chrono::duration<double>(now - last_).count());
  last_ = now;
}

bool TokenBucket::Take(double n, double* retry_after) {
  Refill();
  // A request larger than the whole bucket is admitted when the bucket is full (it could never
  // be otherwise); the debt delays the next ones.
  if (level_ >= std::min(n, burst_)) {
    level_ -= n;
    return true;
  }
  if (retry_after) *retry_after = (std::min(n, burst_) - level_) / rate_;
  return false;
}

bool TokenBucket::Has(double n, double* retry_after) {
  Refill();
  if (level_ >= std::min(n, burst_)) return true;
  if (retry_after) *retry_after = (std::min(n, burst_) - level_) / rate_;
  return false;
}

void TokenBucket::Refund(double n) {
  Refill();
  level_ = std::min(burst_, level_ + n);
}

Tenants::Tenants(const ServerConfig& config) : open_(config.open()), tenants_(config.tenants) {
  if (open_) {
    TenantConfig t;
    t.name = "default";
    t.models = {"*"};
    t.admin = true;
    tenants_.push_back(t);
  }
  for (size_t i = 0; i < tenants_.size(); ++i) {
    for (const std::string& k : tenants_[i].api_keys) AddKey(k, static_cast<int>(i));
    State& s = state_[tenants_[i].name];
    if (tenants_[i].requests_per_second > 0) {
      const double r = tenants_[i].requests_per_second;
      s.requests.emplace(r, std::max(1.0, r));
    }
    if (tenants_[i].tokens_per_minute > 0) {
      const double r = tenants_[i].tokens_per_minute;
      s.tokens.emplace(r / 60.0, r);
    }
  }
  for (const std::string& k : config.metrics_keys) AddKey(k, kMetricsKey);
  for (const std::string& k : config.admin_keys) AddKey(k, kAdminKey);
}

void Tenants::AddKey(const std::string& key, int tenant) {
  keys_.push_back({blockzoo::Sha256Hex(key.data(), key.size()), tenant});
}

std::optional<int> Tenants::FindKey(const std::string& key) const {
  // Every stored digest is compared in full, whatever matches: the time taken says nothing
  // about how much of a key was right (the digests also hide the keys' lengths).
  const std::string digest = blockzoo::Sha256Hex(key.data(), key.size());
  std::optional<int> found;
  for (const KeyEntry& e : keys_) {
    unsigned char diff = 0;
    for (size_t i = 0; i < digest.size(); ++i) diff |= digest[i] ^ e.digest[i];
    if (diff == 0) found = e.tenant;  // a later entry wins (an admin key over a tenant's)
  }
  return found;
}

absl::StatusOr<Tenants::Identity> Tenants::Authenticate(std::string_view authorization) const {
  if (open_) return Identity{&tenants_[0], true, true};
  std::string_view v = Strip(authorization);
  if (v.empty()) {
    return absl::UnauthenticatedError(
        "You didn't provide an API key. You need to provide your API key in an Authorization "
        "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).");
  }
  if (v.size() < 7 || !absl::EqualsIgnoreCase(std::string(v.substr(0, 7)), "bearer ")) {
    return absl::UnauthenticatedError("The Authorization header must be 'Bearer YOUR_KEY'.");
  }
  const std::string key(Strip(v.substr(7)));
  const std::optional<int> found = FindKey(key);
  if (!found) {
    return absl::UnauthenticatedError(
        absl::StrCat("Incorrect API key provided: ", RedactKey(key), "."));
  }
  if (*found == kAdminKey) return Identity{nullptr, true, true};
  if (*found == kMetricsKey) return Identity{nullptr, false, true};
  const TenantConfig* t = &tenants_[*found];
  return Identity{t, t->admin, t->admin};
}

absl::Status Tenants::Admit(const TenantConfig& t, double tokens, double* retry_after) {
  return Check(t, tokens, /*take=*/true, retry_after);
}

absl::Status Tenants::Precheck(const TenantConfig& t, double min_tokens, double* retry_after) {
  return Check(t, min_tokens, /*take=*/false, retry_after);
}

absl::Status Tenants::Check(const TenantConfig& t, double tokens, bool take, double* retry_after) {
  absl::MutexLock lock(&mu_);
  State& s = state_[t.name];
  *retry_after = 0;
  if (t.max_concurrent > 0 && s.in_flight >= t.max_concurrent) {
    *retry_after = 1;
    return absl::ResourceExhaustedError(absl::StrCat(
        "Too many concurrent requests for tenant ", t.name, ": limit ", t.max_concurrent, "."));
  }
  if (s.requests && !(take ? s.requests->Take(1, retry_after) : s.requests->Has(1, retry_after))) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "Rate limit reached for requests per second of tenant ", t.name, ": limit ",
        t.requests_per_second, ". Please try again in ", *retry_after, "s."));
  }
  if (s.tokens &&
      !(take ? s.tokens->Take(tokens, retry_after) : s.tokens->Has(tokens, retry_after))) {
    if (s.requests && take) s.requests->Refund(1);
    return absl::ResourceExhaustedError(absl::StrCat(
        "Rate limit reached for tokens per min (TPM) of tenant ", t.name, ": limit ",
        t.tokens_per_minute, ", requested ", tokens, ". Please try again in ", *retry_after, "s."));
  }
  if (take) ++s.in_flight;
  return absl::OkStatus();
}

void Tenants::Finish(const TenantConfig& t, double reserved_tokens, double used_tokens) {
  absl::MutexLock lock(&mu_);
  State& s = state_[t.name];
  --s.in_flight;
  if (s.tokens && reserved_tokens > used_tokens) s.tokens->Refund(reserved_tokens - used_tokens);
}

int Tenants::in_flight(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = state_.find(tenant);
  return it == state_.end() ? 0 : it->second.in_flight;
}

}  // namespace blockserve::server
