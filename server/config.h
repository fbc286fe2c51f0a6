// The server's configuration file (JSON) and what it defines: tenants with their API keys,
// allowed models, rate limits, concurrency, fairness weight, equivalence policy and prefix
// caching; admin keys; engine and gateway limits. See docs/serving.md for the format.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/status/statusor.h"
#include "blockzoo/equiv.h"
#include "runtime/dtype.h"
#include "scheduler/zoo_engine.h"

namespace blockserve::server {

struct TenantConfig {
  std::string name;
  std::vector<std::string> api_keys;
  std::set<std::string> models;       // allowed models and adapters; {"*"}: all
  double requests_per_second = 0;     // 0: unlimited
  double tokens_per_minute = 0;       // prompt + completion tokens; 0: unlimited
  int max_concurrent = 0;             // 0: unlimited
  double weight = 1;                  // fairness weight in the engine
  int priority = 0;                   // default request priority
  blockzoo::ResolvePolicy policy;     // equivalence policy for its requests
  bool cache_prefixes = true;         // its finished requests' KV may be kept as cached prefixes
  bool share_prefixes = false;        // its cached prefixes may serve other sharing tenants
  bool admin = false;                 // its keys may use the admin API

  bool Allows(const std::string& model) const { return models.count("*") || models.count(model); }
};

struct ServerConfig {
  // Engine.
  int threads = 0;                  // compute threads (0: all cores)
  uint64_t memory_budget = 0;       // weight bytes resident at most (0: unbounded)
  uint64_t kv_budget = 0;           // KV bytes across attn instances (0: derived, DefaultKvBudget)
  int kv_page_size = 16;
  runtime::DType kv_dtype = runtime::DType::kF32;  // "f32" (exact) or "bf16" (half the KV memory)
  int max_running = 256;
  int max_step_tokens = 512;
  int max_batch_tokens = 512;
  bool prefix_cache = true;
  // Blocks and adapters load on loader threads while the engine serves what is resident.
  bool background_loads = true;
  // Each block instance's batch limit is measured when it first loads (else max_batch_tokens).
  bool profile_max_batch = false;
  std::vector<std::string> models;  // zoo models to serve (empty: all)
  // Gateway.
  size_t max_body_bytes = 1 << 20;
  int http_threads = 128;
  int default_max_tokens = 16;      // /v1/completions and gRPC when not given
  double drain_seconds = 30;        // SIGTERM: in-flight requests get this long
  int read_timeout_s = 10;          // a request (headers and body) must arrive within this
  double idle_timeout_s = 60;       // an idle keep-alive connection is closed after this
  int max_connections = 10000;      // open HTTP connections (the slowest is dropped past it)
  // Tenants; none configured: the server is open (one "default" tenant, all models).
  std::vector<TenantConfig> tenants;
  std::vector<std::string> admin_keys;
  // /metrics: on its own port (>= 0; 0: any free port), the Prometheus convention — then not on
  // the API port; or (-1) on the API port, where a configured server asks for an admin key or
  // one of `metrics_keys` (Bearer).
  int metrics_port = -1;
  std::vector<std::string> metrics_keys;
  // gRPC server reflection; unset: on for an open server, off once tenants are configured.
  std::optional<bool> grpc_reflection;
  // Where block instances live: unset, in this process; set (by `serve --workers`, never from
  // the file), it wraps the zoo's block source — instances on worker processes.
  scheduler::SourceWrapper block_source;

  bool open() const { return tenants.empty() && admin_keys.empty(); }
  bool reflection() const { return grpc_reflection.value_or(open()); }
};

// Parses the configuration; errors name the file and the field.
absl::StatusOr<ServerConfig> ParseServerConfig(const std::string& text, const std::string& source);
absl::StatusOr<ServerConfig> LoadServerConfig(const std::string& path);

// A token bucket: `rate` per second, holding at most `burst`.
class TokenBucket {
 public:
  TokenBucket(double rate, double burst);
  // Takes `n` when available; otherwise false and the seconds until it would be.
  bool Take(double n, double* retry_after);
  // Whether Take(n) would succeed now (nothing taken); otherwise false and the seconds to wait.
  bool Has(double n, double* retry_after);
  void Refund(double n);

 private:
  void Refill();
  double rate_, burst_, level_;
  std::chrono::steady_clock::time_point last_;
};

// Tenants at run time: API key lookup, rate limits and concurrency.
class Tenants {
 public:
  explicit Tenants(const ServerConfig& config);

  struct Identity {
    const TenantConfig* tenant = nullptr;  // null: an admin-only or metrics-only key
    bool admin = false;
    bool metrics = false;  // may read /metrics (admin keys, metrics keys, open servers)
  };
  // From an `Authorization` header value (or gRPC metadata). Open servers accept anything.
  // Errors: UNAUTHENTICATED (missing or unknown key; the key itself is never echoed in full).
  absl::StatusOr<Identity> Authenticate(std::string_view authorization) const;

  // Admission of one request of `tokens` (prompt + max completion) for the tenant:
  // RESOURCE_EXHAUSTED (rate or concurrency limit) with a message saying which and when to retry.
  // On success the caller must call Finish with the tokens really used.
  absl::Status Admit(const TenantConfig& t, double tokens, double* retry_after);
  // The same checks with nothing taken, for a request of at least `min_tokens`: run before
  // the expensive preparation (tokenizing), so a tenant over its limits costs a lookup.
  absl::Status Precheck(const TenantConfig& t, double min_tokens, double* retry_after);
  void Finish(const TenantConfig& t, double reserved_tokens, double used_tokens);
  int in_flight(const std::string& tenant) const;

  const std::vector<TenantConfig>& all() const { return tenants_; }
  bool open() const { return open_; }

 private:
  struct State {
    std::optional<TokenBucket> requests, tokens;
    int in_flight = 0;
  };
  static constexpr int kAdminKey = -1, kMetricsKey = -2;
  struct KeyEntry {
    std::string digest;  // SHA-256 of the key, hex
    int tenant;          // index in tenants_, or kAdminKey / kMetricsKey
  };
  void AddKey(const std::string& key, int tenant);
  // Admit (`take`) or Precheck.
  absl::Status Check(const TenantConfig& t, double tokens, bool take, double* retry_after);
  // The key's entry, found by a constant-time comparison against every stored digest.
  std::optional<int> FindKey(const std::string& key) const;

  bool open_;
  std::vector<TenantConfig> tenants_;
  std::vector<KeyEntry> keys_;
  mutable absl::Mutex mu_;
  std::map<std::string, State> state_ ABSL_GUARDED_BY(mu_);
};

// "sk-abc...xyz" -> "sk-a...xyz": enough to tell keys apart in an error, never the key.
std::string RedactKey(std::string_view key);

}  // namespace blockserve::server
