#include "server/metrics.h"

#include <chrono>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "prometheus/text_serializer.h"

namespace blockserve::server {

namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

const Histogram::BucketBoundaries& LatencyBuckets() {
  static const Histogram::BucketBoundaries b = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                0.25,  0.5,    1,     2.5,  5,     10,   30,
                                                60,    120};
  return b;
}

}  // namespace

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      requests_(BuildCounter()
                    .Name("blockserve_requests_total")
                    .Help("Requests finished, by model, tenant and finish reason")
                    .Register(*registry_)),
      rejected_(BuildCounter()
                    .Name("blockserve_requests_rejected_total")
                    .Help("Requests refused before reaching the engine, by tenant and HTTP code")
                    .Register(*registry_)),
      prompt_tokens_(BuildCounter()
                         .Name("blockserve_prompt_tokens_total")
                         .Help("Prompt tokens of admitted requests")
                         .Register(*registry_)),
      completion_tokens_(BuildCounter()
                             .Name("blockserve_generation_tokens_total")
                             .Help("Tokens generated")
                             .Register(*registry_)),
      http_(BuildCounter()
                .Name("blockserve_http_requests_total")
                .Help("HTTP requests by path and status code")
                .Register(*registry_)),
      ttft_(BuildHistogram()
                .Name("blockserve_time_to_first_token_seconds")
                .Help("Time from arrival to the first generated token")
                .Register(*registry_)),
      itl_(BuildHistogram()
               .Name("blockserve_inter_token_latency_seconds")
               .Help("Time between consecutive generated tokens of a request")
               .Register(*registry_)),
      e2e_(BuildHistogram()
               .Name("blockserve_e2e_request_latency_seconds")
               .Help("Time from arrival to the last token")
               .Register(*registry_)),
      waiting_(BuildGauge()
                   .Name("blockserve_num_requests_waiting")
                   .Help("Requests queued or preempted (the inference gateway's queue length)")
                   .Register(*registry_)),
      running_(BuildGauge()
                   .Name("blockserve_num_requests_running")
                   .Help("Requests in the engine's running set")
                   .Register(*registry_)),
      kv_usage_(BuildGauge()
                    .Name("blockserve_kv_cache_usage_perc")
                    .Help("KV pages used / pages available over bounded attn instances (1 = full)")
                    .Register(*registry_)),
      resident_bytes_(BuildGauge()
                          .Name("blockserve_resident_bytes")
                          .Help("Weight bytes of resident block instances and adapters")
                          .Register(*registry_)),
      blocks_resident_(BuildGauge()
                           .Name("blockserve_blocks_resident")
                           .Help("Block instances resident")
                           .Register(*registry_)),
      blocks_loading_(BuildGauge()
                          .Name("blockserve_blocks_loading")
                          .Help("Blocks and adapters being loaded in the background")
                          .Register(*registry_)),
      preemptions_(BuildCounter()
                       .Name("blockserve_preemptions_total")
                       .Help("Sequences preempted for KV room")
                       .Register(*registry_)),
      adapters_resident_(BuildGauge()
                             .Name("blockserve_adapters_resident")
                             .Help("LoRA adapters attached to resident instances")
                             .Register(*registry_)),
      adapter_loads_(BuildCounter()
                         .Name("blockserve_adapter_loads_total")
                         .Help("LoRA adapter loads from the zoo")
                         .Register(*registry_)),
      block_loads_(BuildCounter()
                       .Name("blockserve_block_loads_total")
                       .Help("Block instance loads from the zoo")
                       .Register(*registry_)),
      prefix_hits_(BuildCounter()
                       .Name("blockserve_prefix_cache_hits_total")
                       .Help("Requests that started from a cached prefix")
                       .Register(*registry_)),
      lora_info_(BuildGauge()
                     .Name("blockserve_lora_requests_info")
                     .Help("LoRA models with running requests (labels); value: scrape time")
                     .Register(*registry_)),
      inst_batch_(BuildGauge()
                      .Name("blockserve_block_batch_tokens")
                      .Help("Tokens in the last call of a block instance")
                      .Register(*registry_)),
      inst_mean_batch_(BuildGauge()
                           .Name("blockserve_block_mean_batch_tokens")
                           .Help("Mean tokens per call of a block instance")
                           .Register(*registry_)),
      inst_max_batch_(BuildGauge()
                          .Name("blockserve_block_max_batch_tokens")
                          .Help("Batch limit of a block instance (configured or measured)")
                          .Register(*registry_)),
      inst_busy_(BuildGauge()
                     .Name("blockserve_block_busy_ratio")
                     .Help("Share of wall time a block instance computed since the last scrape")
                     .Register(*registry_)),
      inst_queue_(BuildGauge()
                      .Name("blockserve_block_queue_depth")
                      .Help("Waiting requests whose chain uses the block instance")
                      .Register(*registry_)),
      inst_kv_used_(BuildGauge()
                        .Name("blockserve_block_kv_pages_used")
                        .Help("KV pages held at an attn instance")
                        .Register(*registry_)),
      inst_kv_free_(BuildGauge()
                        .Name("blockserve_block_kv_pages_free")
                        .Help("KV pages free at an attn instance (absent when unbounded)")
                        .Register(*registry_)),
      inst_resident_(BuildGauge()
                         .Name("blockserve_block_resident")
                         .Help("1 when the block instance is resident")
                         .Register(*registry_)),
      inst_calls_(BuildCounter()
                      .Name("blockserve_block_calls_total")
                      .Help("Batched calls of a block instance")
                      .Register(*registry_)) {}

Metrics::Series Metrics::Started(const std::string& model, const std::string& tenant,
                                 int prompt_tokens) {
  const prometheus::Labels l = {{"model", model}, {"tenant", tenant}};
  prompt_tokens_.Add(l).Increment(prompt_tokens);
  return {&ttft_.Add(l, LatencyBuckets()), &itl_.Add(l, LatencyBuckets()),
          &e2e_.Add(l, LatencyBuckets()), &completion_tokens_.Add(l), model, tenant};
}

void Metrics::Rejected(const std::string& tenant, int code) {
  rejected_.Add({{"tenant", tenant}, {"code", std::to_string(code)}}).Increment();
}

void Metrics::Finished(const Series& s, const std::string& reason, double seconds,
                       int completion_tokens) {
  requests_.Add({{"model", s.model}, {"tenant", s.tenant}, {"finish_reason", reason}}).Increment();
  s.e2e->Observe(seconds);
  s.completion_tokens->Increment(completion_tokens);
}

void Metrics::HttpRequest(const std::string& path, int code) {
  http_.Add({{"path", path}, {"code", std::to_string(code)}}).Increment();
}

std::string Metrics::Render(const scheduler::EngineStats& st,
                            const std::vector<std::string>& running_adapters, int max_adapters) {
  {
    absl::MutexLock lock(&mu_);
    const double now = Now();
    const double wall = last_scrape_ > 0 ? now - last_scrape_ : 0;
    last_scrape_ = now;
    waiting_.Add({}).Set(st.waiting);
    running_.Add({}).Set(st.running);
    resident_bytes_.Add({}).Set(static_cast<double>(st.resident_bytes));
    blocks_loading_.Add({}).Set(st.loading);
    adapters_resident_.Add({}).Set(st.adapters_resident);
    auto bump = [](prometheus::Counter& c, uint64_t now_v, uint64_t* seen) {
      if (now_v > *seen) c.Increment(static_cast<double>(now_v - *seen));
      *seen = now_v;
    };
    bump(preemptions_.Add({}), st.preemptions, &seen_preemptions_);
    bump(adapter_loads_.Add({}), st.adapter_loads, &seen_adapter_loads_);
    bump(block_loads_.Add({}), st.block_loads, &seen_block_loads_);
    bump(prefix_hits_.Add({}), st.prefix_hits, &seen_prefix_hits_);
    last_busy_.resize(st.instances.size(), 0);
    seen_calls_.resize(st.instances.size(), 0);
    int resident = 0;
    double kv_used = 0, kv_total = 0;
    for (size_t i = 0; i < st.instances.size(); ++i) {
      const scheduler::InstanceStats& in = st.instances[i];
      const prometheus::Labels l = {{"instance_id", std::to_string(i)},
                                    {"block", in.name},
                                    {"kind", runtime::BlockKindName(in.kind)}};
      inst_batch_.Add(l).Set(in.last_batch);
      inst_mean_batch_.Add(l).Set(in.calls ? static_cast<double>(in.tokens) / in.calls : 0);
      inst_max_batch_.Add(l).Set(in.max_batch);
      inst_busy_.Add(l).Set(wall > 0 ? std::min(1.0, (in.busy_s - last_busy_[i]) / wall) : 0);
      last_busy_[i] = in.busy_s;
      inst_queue_.Add(l).Set(in.queued);
      inst_resident_.Add(l).Set(in.resident ? 1 : 0);
      bump(inst_calls_.Add(l), in.calls, &seen_calls_[i]);
      if (in.kind == runtime::BlockKind::kAttn) {
        inst_kv_used_.Add(l).Set(in.kv_pages_used);
        if (in.kv_pages_free >= 0) {
          inst_kv_free_.Add(l).Set(in.kv_pages_free);
          kv_used += in.kv_pages_used;
          kv_total += in.kv_pages_used + in.kv_pages_free;
        }
      }
      resident += in.resident;
    }
    blocks_resident_.Add({}).Set(resident);
    kv_usage_.Add({}).Set(kv_total > 0 ? kv_used / kv_total : 0);
    // The inference gateway reads the running adapters from this gauge's labels.
    const std::string running = absl::StrJoin(running_adapters, ",");
    if (lora_gauge_ == nullptr || running != lora_labels_) {
      if (lora_gauge_) lora_info_.Remove(lora_gauge_);
      lora_gauge_ = &lora_info_.Add({{"running_lora_adapters", running},
                                     {"waiting_lora_adapters", ""},
                                     {"max_lora", std::to_string(max_adapters)}});
      lora_labels_ = running;
    }
    lora_gauge_->Set(std::chrono::duration<double>(
                         std::chrono::system_clock::now().time_since_epoch()).count());
  }
  std::ostringstream out;
  prometheus::TextSerializer().Serialize(out, registry_->Collect());
  return out.str();
}

}  // namespace blockserve::server
