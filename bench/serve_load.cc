// Load on the OpenAI endpoint of a real gateway (loopback HTTP, streaming completions), serving
// a synthetic 110M-parameter Llama shape (dim 768, 12 layers, FFN 2048, vocab 32000, f32) and
// partial fine-tunes of it from a scratch zoo (random weights: timing only), or a GGUF file.
//   phase 1 ("scale"): C concurrent clients (default 8), each sending requests of 64 generated
//     tokens back to back: total tokens/s, p50/p95 request latency and p50 time to first token.
//     With --baseline URL, the same clients and load drive that OpenAI-compatible server too
//     (llama.cpp's llama-server on the same GGUF, say), interleaved with blockserve in rounds,
//     and the ratio of the medians is printed; without one, no ratio (a benchmark compares
//     only against what it measured in the same run).
//   phase 2 ("soak"): 64 concurrent streaming clients for 60 s across the models: errors,
//     tokens/s, p50/p95 inter-token latency (gap between streamed chunks), RSS once warm (a
//     fifth into the run) and at the end.
// Ends with one JSON line.
//   serve_load [--clients 8] [--scale_s 30] [--soak_clients 64] [--soak_s 60] [--models 3]
//              [--threads 2] [--quick] [--gguf FILE] [--baseline http://127.0.0.1:PORT]
//              [--rounds 3]
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
#include "runtime/status_macros.h"
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
  std::vector<double> latency, itl, ttft;
  uint64_t tokens = 0, requests = 0, errors = 0;
};

// Random prompts: token ids drawn from the vocabulary, or (`text`, for a baseline server that
// takes only text, as llama-server's /v1/completions does) words drawn from a list, so that
// both servers tokenize the same string with the same model's tokenizer.
struct PromptMaker {
  int vocab = 0;
  bool text = false;
  json Make(int len, std::mt19937& rng) const {
    if (!text) {
      std::vector<int> ids(len);
      for (int& t : ids) t = 3 + static_cast<int>(rng() % (vocab - 3));
      return ids;
    }
    static constexpr const char* kWords[] = {
        "once", "upon", "a",    "time", "there", "was",   "little", "girl", "named", "Lily",
        "she",  "liked", "to",  "play", "with",  "her",   "dog",    "in",   "the",   "park",
        "one",  "day",   "saw", "big",  "red",   "ball",  "and",    "they", "were",  "happy"};
    std::string s;
    for (int i = 0; i < len; ++i) {
      if (i > 0) s += ' ';
      s += kWords[rng() % std::size(kWords)];
    }
    return s;
  }
};

// One streaming completion; records the gaps between chunks and the usage's token count.
void OneRequest(int port, const std::string& model, int prompt_len, int max_tokens,
                const PromptMaker& prompts, std::mt19937& rng, Stats* st) {
  const json body = {{"model", model}, {"prompt", prompts.Make(prompt_len, rng)},
                     {"max_tokens", max_tokens},
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
  double ttft = 0;
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
      if (first) ttft = Secs(t0, now);
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
  st->ttft.push_back(ttft);
  st->itl.insert(st->itl.end(), gaps.begin(), gaps.end());
}

struct PhaseResult {
  double tok_s = 0, lat_p50 = 0, lat_p95 = 0, itl_p50 = 0, itl_p95 = 0, ttft_p50 = 0, seconds = 0;
  uint64_t requests = 0, errors = 0, tokens = 0;
  double rss_start = 0, rss_end = 0;
};

PhaseResult RunPhase(const char* name, int port, const std::vector<std::string>& models,
                     int clients, double seconds, int prompt_len, int max_tokens,
                     const PromptMaker& prompts) {
  Stats st;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  PhaseResult res;
  res.rss_start = RssMiB();
  const auto t0 = Clock::now();
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      std::mt19937 rng(1234 + c);
      while (!stop) {
        OneRequest(port, models[c % models.size()], prompt_len, max_tokens, prompts, rng, &st);
      }
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
  res.ttft_p50 = Percentile(st.ttft, 0.5);
  return res;
}

double Median(std::vector<double> v) { return Percentile(v, 0.5); }

// Phase 1 against blockserve and, with a baseline port, against the baseline too: `rounds`
// rounds, each a stretch on one then the other (so drift and noise hit both alike); each
// server's figures are the medians over its rounds.
void ScalePhase(int port, int baseline_port, int clients, double seconds, int rounds,
                const PromptMaker& prompts, PhaseResult* ours, PhaseResult* theirs) {
  std::vector<PhaseResult> a, b;
  // Rounds exist to interleave with a baseline; alone, one stretch (a short round's tail of
  // requests draining at falling concurrency would understate the rate).
  if (baseline_port <= 0) rounds = 1;
  for (int r = 0; r < rounds; ++r) {
    a.push_back(RunPhase("scale", port, {"base"}, clients, seconds / rounds, 16, 64, prompts));
    if (baseline_port > 0) {
      b.push_back(RunPhase("baseline", baseline_port, {"base"}, clients, seconds / rounds, 16, 64,
                           prompts));
    }
  }
  auto fold = [](const std::vector<PhaseResult>& v, PhaseResult* out) {
    if (v.empty()) return;
    std::vector<double> tok, p50, p95, ttft;
    *out = PhaseResult();
    for (const PhaseResult& p : v) {
      tok.push_back(p.tok_s);
      p50.push_back(p.lat_p50);
      p95.push_back(p.lat_p95);
      ttft.push_back(p.ttft_p50);
      out->requests += p.requests;
      out->errors += p.errors;
      out->seconds += p.seconds;
    }
    out->tok_s = Median(tok);
    out->lat_p50 = Median(p50);
    out->lat_p95 = Median(p95);
    out->ttft_p50 = Median(ttft);
  };
  fold(a, ours);
  fold(b, theirs);
}

// The port of a loopback URL ("http://127.0.0.1:8080", "localhost:8080"); 0 when it is not one.
int LoopbackPort(std::string url) {
  if (url.rfind("http://", 0) == 0) url = url.substr(7);
  while (!url.empty() && url.back() == '/') url.pop_back();
  const size_t colon = url.rfind(':');
  if (colon == std::string::npos) return 0;
  const std::string host = url.substr(0, colon);
  if (host != "127.0.0.1" && host != "localhost") return 0;
  return std::atoi(url.c_str() + colon + 1);
}

struct Options {
  int clients = 8, soak_clients = 64, n_models = 3, threads = 2, rounds = 3;
  double scale_s = 30, soak_s = 60;
  std::string gguf, baseline;
};

bool ParseArgs(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string("0"); };
    if (a == "--clients") o->clients = std::stoi(next());
    else if (a == "--scale_s") o->scale_s = std::stod(next());
    else if (a == "--soak_clients") o->soak_clients = std::stoi(next());
    else if (a == "--soak_s") o->soak_s = std::stod(next());
    else if (a == "--models") o->n_models = std::max(1, std::stoi(next()));
    else if (a == "--threads") o->threads = std::stoi(next());
    else if (a == "--rounds") o->rounds = std::max(1, std::stoi(next()));
    else if (a == "--gguf") o->gguf = next();
    else if (a == "--baseline") o->baseline = next();
    else if (a == "--quick") o->scale_s = 8, o->soak_s = 10, o->soak_clients = 16;
    else return false;
  }
  return true;
}

// The scratch zoo: the base (synthetic llama110m, or the GGUF) and fine-tunes of its top 25 %
// of layers. `*decode_bytes`: what a decode step of `clients` sequences reads — every weight
// once, but of the embedding table only the rows of the tokens in the step.
absl::Status MakeZoo(const Options& o, const std::string& dir, std::vector<std::string>* models,
                     runtime::ModelConfig* family, uint64_t* decode_bytes) {
  ASSIGN_OR_RETURN(auto zoo, blockzoo::Zoo::Open(dir, true));
  if (o.gguf.empty()) {
    std::fprintf(stderr, "serve_load: synthetic llama110m f32 base + %d fine-tunes in %s\n",
                 o.n_models - 1, dir.c_str());
    RETURN_IF_ERROR(blockzoo::ImportSynthetic(*zoo, "base", blockzoo::Llama110MConfig(),
                                              runtime::DType::kF32, 1, nullptr)
                        .status());
  } else {
    std::fprintf(stderr, "serve_load: %s + %d fine-tunes in %s\n", o.gguf.c_str(),
                 o.n_models - 1, dir.c_str());
    blockzoo::ImportOptions io;
    io.name = "base";
    RETURN_IF_ERROR(blockzoo::ImportModel(*zoo, o.gguf, io).status());
  }
  ASSIGN_OR_RETURN(blockzoo::Manifest manifest, zoo->GetManifest("base"));
  *family = manifest.family;
  uint64_t embed_bytes = 0;
  for (const auto& e : manifest.chain) {
    if (e.kind == runtime::BlockKind::kEmbed) embed_bytes += e.bytes;
  }
  *decode_bytes = manifest.bytes() - embed_bytes +
                  static_cast<uint64_t>(o.clients) * family->dim * sizeof(float);
  models->assign(1, "base");
  for (int i = 1; i < o.n_models; ++i) {
    blockzoo::DeriveOptions d;
    d.base = "base";
    d.name = "ft" + std::to_string(i);
    d.top_layers = std::max(1, family->n_layers / 4);
    d.seed = i;
    RETURN_IF_ERROR(blockzoo::DeriveModel(*zoo, d).status());
    models->push_back(d.name);
  }
  return absl::OkStatus();
}

void Report(const Options& o, const PhaseResult& scale, const PhaseResult* base,
            const PhaseResult& soak, size_t n_models, double roofline, double bw,
            uint64_t decode_bytes) {
  std::printf("\nserve_load: %s, %d threads, OpenAI /v1/completions (stream)\n",
              o.gguf.empty() ? "synthetic llama110m f32" : o.gguf.c_str(), o.threads);
  std::printf("phase 1, %d concurrent x 64 tokens (%.0f s, median of %d rounds):\n", o.clients,
              scale.seconds, o.rounds);
  auto line = [](const char* who, const PhaseResult& r) {
    std::printf("  %-10s: %8.1f tok/s  TTFT p50 %4.0f ms  latency p50 %.2f s  p95 %.2f s  "
                "(%llu requests, %llu errors)\n",
                who, r.tok_s, r.ttft_p50 * 1e3, r.lat_p50, r.lat_p95,
                static_cast<unsigned long long>(r.requests),
                static_cast<unsigned long long>(r.errors));
  };
  line("blockserve", scale);
  if (base != nullptr) {
    line("baseline", *base);
    std::printf("  ratio     : %8.2fx tok/s (target >= 2x); TTFT p50 %.0f vs %.0f ms\n",
                scale.tok_s / base->tok_s, scale.ttft_p50 * 1e3, base->ttft_p50 * 1e3);
  }
  std::printf("  roofline  : %8.1f tok/s (%d x %.1f GB/s read / %.0f MB per decode step); "
              "blockserve at %.0f%%\n",
              roofline, o.clients, bw, decode_bytes / 1e6, 100 * scale.tok_s / roofline);
  std::printf("phase 2, %d streaming clients, %zu models (%.0f s):\n", o.soak_clients, n_models,
              soak.seconds);
  std::printf("  %8.1f tok/s  ITL p50 %.1f ms  p95 %.1f ms  request p95 %.2f s  "
              "(%llu requests, %llu errors)\n",
              soak.tok_s, soak.itl_p50 * 1e3, soak.itl_p95 * 1e3, soak.lat_p95,
              static_cast<unsigned long long>(soak.requests),
              static_cast<unsigned long long>(soak.errors));
  std::printf("  RSS %.0f MiB once warm (a fifth in), %.0f MiB at the end (%+.1f%%)\n",
              soak.rss_start, soak.rss_end,
              100.0 * (soak.rss_end - soak.rss_start) / soak.rss_start);
  json scale_j = {{"clients", o.clients}, {"tok_s", scale.tok_s}, {"ttft_p50_s", scale.ttft_p50},
                  {"p50_s", scale.lat_p50}, {"p95_s", scale.lat_p95},
                  {"requests", scale.requests}, {"errors", scale.errors}, {"read_gb_s", bw},
                  {"roofline_tok_s", roofline}};
  if (base != nullptr) {
    scale_j["baseline"] = {{"url", o.baseline}, {"tok_s", base->tok_s},
                           {"ttft_p50_s", base->ttft_p50}, {"p50_s", base->lat_p50},
                           {"p95_s", base->lat_p95}, {"errors", base->errors}};
    scale_j["ratio"] = scale.tok_s / base->tok_s;
  }
  const json j = {
      {"bench", "serve_load"}, {"threads", o.threads}, {"scale", scale_j},
      {"soak", {{"clients", o.soak_clients}, {"models", n_models}, {"seconds", soak.seconds},
                {"tok_s", soak.tok_s}, {"itl_p50_ms", soak.itl_p50 * 1e3},
                {"itl_p95_ms", soak.itl_p95 * 1e3}, {"request_p95_s", soak.lat_p95},
                {"requests", soak.requests}, {"errors", soak.errors},
                {"rss_start_mib", soak.rss_start}, {"rss_end_mib", soak.rss_end}}}};
  std::printf("%s\n", j.dump().c_str());
}

int Main(int argc, char** argv) {
  Options o;
  if (!ParseArgs(argc, argv, &o)) {
    std::fprintf(stderr, "usage: serve_load [--clients 8] [--scale_s 30] [--soak_clients 64] "
                         "[--soak_s 60] [--models 3] [--threads 2] [--quick] [--gguf FILE] "
                         "[--baseline http://127.0.0.1:PORT] [--rounds 3]\n");
    return 2;
  }
  const int baseline_port = o.baseline.empty() ? 0 : LoopbackPort(o.baseline);
  if (!o.baseline.empty() && baseline_port <= 0) {
    std::fprintf(stderr, "--baseline: a loopback URL (http://127.0.0.1:PORT), got %s\n",
                 o.baseline.c_str());
    return 2;
  }
  if (baseline_port > 0 && o.gguf.empty()) {
    std::fprintf(stderr, "--baseline needs --gguf: the baseline serves the same GGUF file\n");
    return 2;
  }
  std::signal(SIGPIPE, SIG_IGN);
  ScratchDir tmp;
  std::vector<std::string> models;
  runtime::ModelConfig family;
  uint64_t decode_bytes = 0;
  if (absl::Status st = MakeZoo(o, tmp.path(), &models, &family, &decode_bytes); !st.ok()) {
    std::fprintf(stderr, "%s\n", st.ToString().c_str());
    return 1;
  }
  // The hardware limit in the same run: a decode step of C sequences reads decode_bytes, so C
  // concurrent requests generate at most C x bandwidth / decode_bytes tokens per second.
  double bw = 0;
  {
    runtime::ThreadPool pool(o.threads);
    bw = MeasureReadBandwidth(pool, size_t{1} << 30, 5);
  }
  const double roofline = o.clients * bw * 1e9 / static_cast<double>(decode_bytes);
  server::ServerConfig cfg;
  cfg.threads = o.threads;
  cfg.max_running = std::max(64, o.soak_clients);
  cfg.max_batch_tokens = 512;
  cfg.max_step_tokens = 512;
  cfg.prefix_cache = false;
  cfg.http_threads = std::max(128, 2 * o.soak_clients);
  auto core = server::ServingCore::Create(tmp.path(), cfg);
  if (!core.ok()) {
    std::fprintf(stderr, "%s\n", core.status().ToString().c_str());
    return 1;
  }
  server::HttpGateway http(core->get());
  if (!http.Start("127.0.0.1", 0).ok()) return 1;
  const int port = http.port();
  // With a baseline, text prompts for both (llama-server's completions take only text).
  const PromptMaker prompts{family.vocab_size, baseline_port > 0};
  Stats warm;  // warm-up: every model's blocks resident (and the baseline's first request)
  std::mt19937 rng(1);
  for (const auto& m : models) OneRequest(port, m, 16, 4, prompts, rng, &warm);
  if (baseline_port > 0) OneRequest(baseline_port, "base", 16, 4, prompts, rng, &warm);
  std::fprintf(stderr, "phase 1: %d clients x (16-token prompt, 64 tokens) for %.0f s%s\n",
               o.clients, o.scale_s, baseline_port > 0 ? ", interleaved with the baseline" : "");
  PhaseResult scale, base;
  ScalePhase(port, baseline_port, o.clients, o.scale_s, o.rounds, prompts, &scale, &base);
  std::fprintf(stderr, "phase 2: %d streaming clients across %zu models for %.0f s\n",
               o.soak_clients, models.size(), o.soak_s);
  const PhaseResult soak =
      RunPhase("soak", port, models, o.soak_clients, o.soak_s, 32, 128, prompts);
  http.Stop();
  Report(o, scale, baseline_port > 0 ? &base : nullptr, soak, models.size(), roofline, bw,
         decode_bytes);
  return scale.errors + soak.errors + base.errors > 0 ? 1 : 0;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
