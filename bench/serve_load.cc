// Load on the OpenAI endpoint of a real gateway (loopback HTTP, streaming completions), serving
// a synthetic 110M-parameter Llama shape (dim 768, 12 layers, FFN 2048, vocab 32000, f32) and
// partial fine-tunes of it from a scratch zoo. Random weights: timing only.
//   phase 1 ("scale"): C concurrent clients (default 8), each sending requests of 64 generated
//     tokens back to back: total tokens/s and p50/p95 request latency, next to the llama.cpp
//     server figure measured on this machine class (8 x 64 tokens, 2 threads: ~220 tok/s, p95
//     ~2.4 s; the baseline).
//   phase 2 ("soak"): 64 concurrent streaming clients for 60 s across the models: errors,
//     tokens/s, p50/p95 inter-token latency (gap between streamed chunks), RSS once warm (a
//     fifth into the run) and at the end.
// Ends with one JSON line.
//   serve_load [--clients 8] [--scale_s 30] [--soak_clients 64] [--soak_s 60] [--models 3]
//              [--threads 2] [--quick]
#include <sys/resource.h>

#include <atomic>
#include <csignal>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "bench/roofline.h"
#include "blockzoo/derive.h"
#include "blockzoo/importer.h"
#include "blockzoo/synthetic.h"
#include "nlohmann/json.hpp"
#include "server/http_gateway.h"
#include "server/serving.h"
#include "tests/testing/http_client.h"

namespace blockserve::bench {
namespace {

using Clock = std::chrono::steady_clock;
using nlohmann::json;

double Secs(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

struct Stats {
  std::mutex mu;
  std::vector<double> latency, itl;
  uint64_t tokens = 0, requests = 0, errors = 0;
};

// One streaming completion; records the gaps between chunks and the usage's token count.
void OneRequest(int port, const std::string& model, int prompt_len, int max_tokens,
                std::mt19937& rng, Stats* st) {
  std::vector<int> prompt(prompt_len);
  for (int& t : prompt) t = 3 + static_cast<int>(rng() % 31000);
  const json body = {{"model", model}, {"prompt", prompt}, {"max_tokens", max_tokens},
                     {"temperature", 0}, {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  const auto t0 = Clock::now();
  const int fd = testing::Connect(port);
  if (fd < 0 || !testing::SendAll(fd, testing::Request("POST", "/v1/completions", body.dump()))) {
    if (fd >= 0) close(fd);
    std::lock_guard<std::mutex> lock(st->mu);
    ++st->errors;
    return;
  }
  std::string raw;
  std::vector<double> gaps;
  auto last = t0;
  bool first = true;
  char buf[16384];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n <= 0) break;
    raw.append(buf, n);
    const auto now = Clock::now();
    // Each server write is one chunk of whole events: a gap per arrival carrying data.
    if (std::string_view(buf, n).find("data: ") != std::string_view::npos) {
      if (!first) gaps.push_back(Secs(last, now));
      first = false;
      last = now;
    }
  }
  close(fd);
  const auto t1 = Clock::now();
  const testing::HttpReply r = testing::ParseReply(raw);
  const auto events = testing::SseData(r.body);
  uint64_t tokens = 0;
  bool ok = r.status == 200 && events.size() >= 2 && events.back() == "[DONE]";
  if (ok) {
    const json usage = json::parse(events[events.size() - 2], nullptr, false);
    ok = usage.is_object() && usage.contains("usage") && usage["usage"].is_object();
    if (ok) tokens = usage["usage"]["completion_tokens"].get<uint64_t>();
  }
  std::lock_guard<std::mutex> lock(st->mu);
  if (!ok) {
    ++st->errors;
    return;
  }
  ++st->requests;
  st->tokens += tokens;
  st->latency.push_back(Secs(t0, t1));
  st->itl.insert(st->itl.end(), gaps.begin(), gaps.end());
}

struct PhaseResult {
  double tok_s = 0, lat_p50 = 0, lat_p95 = 0, itl_p50 = 0, itl_p95 = 0, seconds = 0;
  uint64_t requests = 0, errors = 0, tokens = 0;
  double rss_start = 0, rss_end = 0;
};

PhaseResult RunPhase(const char* name, int port, const std::vector<std::string>& models,
                     int clients, double seconds, int prompt_len, int max_tokens) {
  Stats st;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  PhaseResult res;
  res.rss_start = RssMiB();
  const auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(1234 + c);
      while (!stop) OneRequest(port, models[c % models.size()], prompt_len, max_tokens, rng, &st);
    });
  }
  std::thread progress([&] {
    bool warm = false;
    while (!stop) {
      std::this_thread::sleep_for(std::chrono::seconds(5));
      if (stop) break;
      // RSS once warm (a fifth of the run: every KV page and buffer the load needs exists).
      if (!warm && Secs(t0, Clock::now()) >= seconds / 5) {
        res.rss_start = RssMiB();
        warm = true;
      }
      std::lock_guard<std::mutex> lock(st.mu);
      std::fprintf(stderr, "  %s: %.0f s, %llu requests, %llu tokens, %llu errors, RSS %.0f MiB\n",
                   name, Secs(t0, Clock::now()), static_cast<unsigned long long>(st.requests),
                   static_cast<unsigned long long>(st.tokens),
                   static_cast<unsigned long long>(st.errors), RssMiB());
    }
  });
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : threads) t.join();
  progress.join();
  res.seconds = Secs(t0, Clock::now());
  res.rss_end = RssMiB();
  res.requests = st.requests;
  res.errors = st.errors;
  res.tokens = st.tokens;
  res.tok_s = st.tokens / res.seconds;
  res.lat_p50 = Percentile(st.latency, 0.5);
  res.lat_p95 = Percentile(st.latency, 0.95);
  res.itl_p50 = Percentile(st.itl, 0.5);
  res.itl_p95 = Percentile(st.itl, 0.95);
  return res;
}

int Main(int argc, char** argv) {
  int clients = 8, soak_clients = 64, n_models = 3, threads = 2;
  double scale_s = 30, soak_s = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string("0"); };
    if (a == "--clients") clients = std::stoi(next());
    else if (a == "--scale_s") scale_s = std::stod(next());
    else if (a == "--soak_clients") soak_clients = std::stoi(next());
    else if (a == "--soak_s") soak_s = std::stod(next());
    else if (a == "--models") n_models = std::max(1, std::stoi(next()));
    else if (a == "--threads") threads = std::stoi(next());
    else if (a == "--quick") scale_s = 8, soak_s = 10, soak_clients = 16;
    else {
      std::fprintf(stderr, "usage: serve_load [--clients 8] [--scale_s 30] [--soak_clients 64] "
                           "[--soak_s 60] [--models 3] [--threads 2] [--quick]\n");
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  ScratchDir tmp;
  std::vector<std::string> models = {"base"};
  uint64_t weight_bytes = 0;
  {
    auto zoo = blockzoo::Zoo::Open(tmp.path(), true);
    if (!zoo.ok()) return 1;
    std::fprintf(stderr, "serve_load: synthetic llama110m f32 base + %d fine-tunes in %s\n",
                 n_models - 1, tmp.path().c_str());
    auto base = blockzoo::ImportSynthetic(**zoo, "base", blockzoo::Llama110MConfig(),
                                          runtime::DType::kF32, 1, nullptr);
    if (!base.ok()) {
      std::fprintf(stderr, "%s\n", base.status().ToString().c_str());
      return 1;
    }
    auto manifest = (*zoo)->GetManifest("base");
    if (!manifest.ok()) return 1;
    // What a decode step reads: every weight once, but of the embedding table only the rows of
    // the tokens in the step (the head's own matrix is read whole; this shape is untied).
    const runtime::ModelConfig cfg = blockzoo::Llama110MConfig();
    uint64_t embed_bytes = 0;
    for (const auto& e : manifest->chain) {
      if (e.kind == runtime::BlockKind::kEmbed) embed_bytes += e.bytes;
    }
    weight_bytes = manifest->bytes() - embed_bytes +
                   static_cast<uint64_t>(clients) * cfg.dim * sizeof(float);
    for (int i = 1; i < n_models; ++i) {
      blockzoo::DeriveOptions d;
      d.base = "base";
      d.name = "ft" + std::to_string(i);
      d.top_layers = 3;  // top 25% of 12 layers
      d.seed = i;
      if (!blockzoo::DeriveModel(**zoo, d).ok()) return 1;
      models.push_back(d.name);
    }
  }
  // The hardware limit in the same run: a decode step of C sequences reads every weight once
  // (and C embedding rows), so C concurrent requests generate at most C x bandwidth / those
  // bytes tokens per second.
  double bw = 0;
  {
    runtime::ThreadPool pool(threads);
    bw = MeasureReadBandwidth(pool, size_t{1} << 30, 5);
  }
  const double roofline = clients * bw * 1e9 / static_cast<double>(weight_bytes);
  server::ServerConfig cfg;
  cfg.threads = threads;
  cfg.max_running = std::max(64, soak_clients);
  cfg.max_batch_tokens = 512;
  cfg.max_step_tokens = 512;
  cfg.prefix_cache = false;
  cfg.http_threads = std::max(128, 2 * soak_clients);
  auto core = server::ServingCore::Create(tmp.path(), cfg);
  if (!core.ok()) {
    std::fprintf(stderr, "%s\n", core.status().ToString().c_str());
    return 1;
  }
  server::HttpGateway http(core->get());
  if (!http.Start("127.0.0.1", 0).ok()) return 1;
  const int port = http.port();
  // Warm-up: every model's blocks resident.
  Stats warm;
  std::mt19937 rng(1);
  for (const auto& m : models) OneRequest(port, m, 16, 4, rng, &warm);

  std::fprintf(stderr, "phase 1: %d clients x (16-token prompt, 64 tokens) on base for %.0f s\n",
               clients, scale_s);
  const PhaseResult scale = RunPhase("scale", port, {"base"}, clients, scale_s, 16, 64);
  std::fprintf(stderr, "phase 2: %d streaming clients across %zu models for %.0f s\n",
               soak_clients, models.size(), soak_s);
  const PhaseResult soak = RunPhase("soak", port, models, soak_clients, soak_s, 32, 128);
  http.Stop();

  const double llama_cpp_tok_s = 220, llama_cpp_p95 = 2.4;  // the baseline, this machine class
  std::printf("\nserve_load: synthetic llama110m f32, %d threads, OpenAI /v1/completions (stream)\n",
              threads);
  std::printf("phase 1, %d concurrent x 64 tokens (%.0f s):\n", clients, scale.seconds);
  std::printf("  blockserve: %8.1f tok/s  p50 %.2f s  p95 %.2f s  (%llu requests, %llu errors)\n",
              scale.tok_s, scale.lat_p50, scale.lat_p95,
              static_cast<unsigned long long>(scale.requests),
              static_cast<unsigned long long>(scale.errors));
  std::printf("  llama.cpp : %8.1f tok/s            p95 %.2f s  (baseline from the issue)\n",
              llama_cpp_tok_s, llama_cpp_p95);
  std::printf("  ratio     : %8.2fx (target >= 2x)\n", scale.tok_s / llama_cpp_tok_s);
  std::printf("  roofline  : %8.1f tok/s (%d x %.1f GB/s read / %.0f MB of weights); blockserve at "
              "%.0f%%, 2x llama.cpp would need %.0f%%\n",
              roofline, clients, bw, weight_bytes / 1e6, 100 * scale.tok_s / roofline,
              100 * 2 * llama_cpp_tok_s / roofline);
  std::printf("phase 2, %d streaming clients, %zu models (%.0f s):\n", soak_clients, models.size(),
              soak.seconds);
  std::printf("  %8.1f tok/s  ITL p50 %.1f ms  p95 %.1f ms  request p95 %.2f s  "
              "(%llu requests, %llu errors)\n",
              soak.tok_s, soak.itl_p50 * 1e3, soak.itl_p95 * 1e3, soak.lat_p95,
              static_cast<unsigned long long>(soak.requests),
              static_cast<unsigned long long>(soak.errors));
  std::printf("  RSS %.0f MiB once warm (a fifth in), %.0f MiB at the end (%+.1f%%)\n", soak.rss_start,
              soak.rss_end, 100.0 * (soak.rss_end - soak.rss_start) / soak.rss_start);
  const json j = {
      {"bench", "serve_load"},
      {"threads", threads},
      {"scale", {{"clients", clients}, {"tok_s", scale.tok_s}, {"p50_s", scale.lat_p50},
                 {"p95_s", scale.lat_p95}, {"requests", scale.requests}, {"errors", scale.errors},
                 {"baseline_llama_cpp_tok_s", llama_cpp_tok_s},
                 {"ratio", scale.tok_s / llama_cpp_tok_s}, {"read_gb_s", bw},
                 {"roofline_tok_s", roofline}}},
      {"soak", {{"clients", soak_clients}, {"models", models.size()}, {"seconds", soak.seconds},
                {"tok_s", soak.tok_s}, {"itl_p50_ms", soak.itl_p50 * 1e3},
                {"itl_p95_ms", soak.itl_p95 * 1e3}, {"request_p95_s", soak.lat_p95},
                {"requests", soak.requests}, {"errors", soak.errors},
                {"rss_start_mib", soak.rss_start}, {"rss_end_mib", soak.rss_end}}}};
  std::printf("%s\n", j.dump().c_str());
  return scale.errors + soak.errors > 0 ? 1 : 0;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
