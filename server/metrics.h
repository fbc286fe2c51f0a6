// Prometheus metrics of the server, rendered by our own HTTP server through prometheus-cpp's
// text serializer (not its civetweb Exposer: see ../shared/TOOLCHAIN.md). Request metrics are
// recorded as requests flow; engine gauges (queues, KV, per block instance) are read from the
// engine's stats at scrape time. Names and labels: docs/serving.md.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "scheduler/engine.h"

namespace blockserve::server {

class Metrics {
 public:
  Metrics();

  // One (model, tenant)'s request series, looked up once per request (label hashing and the
  // family lock stay off the per-token path).
  struct Series {
    prometheus::Histogram* ttft = nullptr;
    prometheus::Histogram* itl = nullptr;
    prometheus::Histogram* e2e = nullptr;
    prometheus::Counter* completion_tokens = nullptr;
    std::string model, tenant;
  };
  // A request admitted to the engine (its series) / rejected before it (HTTP-style code).
  Series Started(const std::string& model, const std::string& tenant, int prompt_tokens);
  void Rejected(const std::string& tenant, int code);
  void Finished(const Series& s, const std::string& reason, double seconds,
                int completion_tokens);
  void HttpRequest(const std::string& path, int code);

  // Reads the engine's gauges and renders everything in the Prometheus text format.
  // `running_adapters`: LoRA models with requests in flight; `max_adapters`: how many can be.
  std::string Render(const scheduler::EngineStats& stats,
                     const std::vector<std::string>& running_adapters, int max_adapters);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& requests_;
  prometheus::Family<prometheus::Counter>& rejected_;
  prometheus::Family<prometheus::Counter>& prompt_tokens_;
  prometheus::Family<prometheus::Counter>& completion_tokens_;
  prometheus::Family<prometheus::Counter>& http_;
  prometheus::Family<prometheus::Histogram>& ttft_;
  prometheus::Family<prometheus::Histogram>& itl_;
  prometheus::Family<prometheus::Histogram>& e2e_;
  prometheus::Family<prometheus::Gauge>& waiting_;
  prometheus::Family<prometheus::Gauge>& running_;
  prometheus::Family<prometheus::Gauge>& kv_usage_;
  prometheus::Family<prometheus::Gauge>& resident_bytes_;
  prometheus::Family<prometheus::Gauge>& blocks_resident_;
  prometheus::Family<prometheus::Gauge>& blocks_loading_;
  prometheus::Family<prometheus::Counter>& preemptions_;
  prometheus::Family<prometheus::Gauge>& adapters_resident_;
  prometheus::Family<prometheus::Counter>& adapter_loads_;
  prometheus::Family<prometheus::Counter>& block_loads_;
  prometheus::Family<prometheus::Counter>& prefix_hits_;
  prometheus::Family<prometheus::Gauge>& lora_info_;
  prometheus::Family<prometheus::Gauge>& inst_batch_;
  prometheus::Family<prometheus::Gauge>& inst_mean_batch_;
  prometheus::Family<prometheus::Gauge>& inst_max_batch_;
  prometheus::Family<prometheus::Gauge>& inst_busy_;
  prometheus::Family<prometheus::Gauge>& inst_queue_;
  prometheus::Family<prometheus::Gauge>& inst_kv_used_;
  prometheus::Family<prometheus::Gauge>& inst_kv_free_;
  prometheus::Family<prometheus::Gauge>& inst_resident_;
  prometheus::Family<prometheus::Counter>& inst_calls_;

  absl::Mutex mu_;  // render state
  // Per instance busy seconds at the previous scrape, and the counters seen then.
  std::vector<double> last_busy_ ABSL_GUARDED_BY(mu_);
  double last_scrape_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seen_preemptions_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seen_adapter_loads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seen_block_loads_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t seen_prefix_hits_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> seen_calls_ ABSL_GUARDED_BY(mu_);
  prometheus::Gauge* lora_gauge_ = nullptr;
  std::string lora_labels_;
};

}  // namespace blockserve::server
