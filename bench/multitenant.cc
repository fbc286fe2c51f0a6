// The BlockLLM experiment in one run: a family of N partial fine-tunes (top 25% of the layers
// changed) of a synthetic Llama-shape base plus LoRA models, Poisson arrivals with Zipf
// popularity across the models, mixed prompt and output lengths. Compares
//   (a) blockserve: block instances shared across models (one batch per shared block), and
//   (b) per-model serving: the same engine with a dedicated copy of every block per model
//       (requests batch only with their own model; copies swapped in and out from the zoo when
//       they do not all fit),
// under the same weight-memory budget: once with room for every copy, once for a quarter. With
// room for every copy both sides load everything before the clock starts (steady-state serving:
// a deployment that holds every model does not reload them per request burst; --cold makes them
// load on first use instead, inside the measured time); with a quarter both start empty and load
// on demand, evicting the least recently used blocks.
// Prints throughput, p50/p95 time to first token and end-to-end latency, p99/max inter-token
// gap and peak memory for both, and ends with one JSON line. Random weights: timing only, never correctness.
//   multitenant [--n 8,32] [--requests 160] [--rate R] [--shape medium|llama110m|small]
//               [--threads T] [--max-running M] [--dtype f32|f16] [--kv-dtype f32|bf16] [--quick]
//               [--repeat K (default 2: each configuration K times, interleaved; best reported)]
//               [--only shared|dedicated|all_copies|quarter]  (profiling: one configuration)
//               [--verbose]  (per block instance: calls, mean batch, busy time)
//               [--cold]  (room for every copy too: load on first use, inside the measured time)
//               [--loads background|step]  (loader threads, the server's default; or in the step)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <filesystem>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "blockzoo/derive.h"
#include "blockzoo/importer.h"
#include "blockzoo/synthetic.h"
#include "nlohmann/json.hpp"
#include "scheduler/engine.h"
#include "scheduler/zoo_engine.h"

namespace blockserve::bench {
namespace {

using Clock = std::chrono::steady_clock;
using scheduler::Engine;
using scheduler::EngineOptions;
using scheduler::Event;
using scheduler::Finish;
using scheduler::RequestSpec;

struct Arrival {
  double at = 0;  // seconds after start
  int model = 0;
  int prompt = 0, output = 0;
};

struct Figures {
  double throughput = 0;  // generated tokens / s
  double ttft_p50 = 0, ttft_p95 = 0, e2e_p50 = 0, e2e_p95 = 0;
  // Gaps between a request's consecutive tokens: a step that stalls (e.g. loading blocks)
  // shows here for every request running through it.
  double itl_p99 = 0, itl_max = 0;
  double peak_gib = 0, makespan = 0;
  uint64_t loads = 0, evictions = 0, adapter_loads = 0;
  int completed = 0, errors = 0;
};


std::vector<Arrival> Workload(int models, int requests, double rate, uint64_t seed, int vocab) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate);
  // Zipf(1.1) popularity over the models.
  std::vector<double> w(models);
  for (int i = 0; i < models; ++i) w[i] = 1.0 / std::pow(i + 1, 1.1);
  std::discrete_distribution<int> pick(w.begin(), w.end());
  std::uniform_int_distribution<int> prompt(16, 128), output(16, 128);
  std::vector<Arrival> out;
  double t = 0;
  for (int i = 0; i < requests; ++i) {
    t += gap(rng);
    out.push_back({t, pick(rng), prompt(rng), output(rng)});
  }
  (void)vocab;
  return out;
}

int g_max_running = 64;
std::string g_only;
int g_repeat = 2;  // --repeat: runs of each configuration (the best is reported)
bool g_verbose = false;  // --verbose: per block instance calls, mean batch and busy time
// --loads: blocks that are not resident load on loader threads while the engine serves what
// is (background, the server's default) or inside the step that needs them (step).
bool g_background_loads = true;
bool g_cold = false;  // --cold: with room for every copy, still load blocks on first use
runtime::DType g_kv_dtype = runtime::DType::kF32;  // --kv-dtype: the KV cache's element type

// Where a run's time went: every block instance that ran, its calls, mean batch and busy time
// (calls run side by side each count their own time), and the share of the instances that ran in
// fewer steps than the busiest one (with shared blocks: the fine-tunes' own top blocks).
void PrintInstances(const scheduler::EngineStats& st) {
  uint64_t most_calls = 0;
  for (const auto& i : st.instances) most_calls = std::max(most_calls, i.calls);
  double busy = 0, partial = 0;
  for (const auto& i : st.instances) {
    busy += i.busy_s;
    if (i.calls > 0 && i.calls < most_calls) partial += i.busy_s;
  }
  std::printf("    %llu steps, block busy %.2f s (instances in fewer steps than the busiest: "
              "%.2f s, %.0f%%), loading in steps %.2f s, in the background %.2f s\n",
              static_cast<unsigned long long>(st.steps), busy, partial,
              busy > 0 ? 100 * partial / busy : 0, st.load_s, st.background_load_s);
  for (const auto& i : st.instances) {
    if (i.calls == 0) continue;
    std::printf("    %-24s calls %6llu  mean batch %6.1f  busy %6.2f s\n", i.name.c_str(),
                static_cast<unsigned long long>(i.calls),
                static_cast<double>(i.tokens) / static_cast<double>(i.calls), i.busy_s);
  }
}

// `preload`: every block is loaded before the clock starts (the budget holds them all);
// otherwise blocks load on first use, inside the measured time, and may be evicted.
Figures Serve(const blockzoo::Zoo& zoo, const std::vector<std::string>& names, bool share,
              uint64_t budget, bool preload, const std::vector<Arrival>& arrivals, int threads,
              int vocab) {
  runtime::BlockOptions bo;
  bo.kv_dtype = g_kv_dtype;
  auto models = scheduler::LoadEngineModels(zoo, names, bo, /*lazy=*/!preload, share);
  if (!models.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(models.status().message()).c_str());
    std::exit(1);
  }
  EngineOptions opt;
  opt.threads = threads;
  opt.memory_budget = budget;
  opt.background_loads = g_background_loads;
  opt.kv_dtype = g_kv_dtype;
  opt.scheduler.max_running = g_max_running;
  opt.scheduler.max_step_tokens = 512;
  opt.scheduler.prefill_chunk = 256;
  Engine engine(opt, std::move(*models));
  std::mutex mu;
  std::condition_variable cv;
  const size_t n = arrivals.size();
  std::vector<double> ttft(n, -1), e2e(n, -1), submit(n, 0), last(n, -1);
  std::vector<double> gaps;
  size_t finished = 0;
  uint64_t tokens = 0;
  int errors = 0;
  engine.Start();
  const auto t0 = Clock::now();
  auto now = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  for (size_t i = 0; i < n; ++i) {
    const Arrival& a = arrivals[i];
    std::this_thread::sleep_until(t0 + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(a.at)));
    RequestSpec spec;
    spec.model = a.model;
    spec.max_tokens = a.output;
    spec.prompt.push_back(1);
    for (int k = 1; k < a.prompt; ++k) spec.prompt.push_back(static_cast<int32_t>((i * 31 + k * 7) % vocab));
    {
      std::lock_guard<std::mutex> lock(mu);
      submit[i] = now();
    }
    auto id = engine.Submit(spec, [&, i](const Event& ev) {
      std::lock_guard<std::mutex> lock(mu);
      if (ev.token >= 0) {
        ++tokens;
        const double t = now();
        if (ttft[i] < 0) ttft[i] = t - submit[i];
        if (last[i] >= 0) gaps.push_back(t - last[i]);
        last[i] = t;
      }
      if (ev.finish != Finish::kNone) {
        e2e[i] = now() - submit[i];
        if (ev.finish == Finish::kError || ev.finish == Finish::kContextFull) ++errors;
        ++finished;
        cv.notify_all();
      }
    });
    if (!id.ok()) {
      std::lock_guard<std::mutex> lock(mu);
      ++errors;
      ++finished;
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return finished == n; });
  Figures f;
  f.makespan = now();
  lock.unlock();
  engine.Stop();
  const auto st = engine.stats();
  if (g_verbose) PrintInstances(st);
  std::vector<double> t1, t2;
  for (size_t i = 0; i < n; ++i) {
    if (ttft[i] >= 0) t1.push_back(ttft[i]);
    if (e2e[i] >= 0) t2.push_back(e2e[i]);
  }
  f.throughput = tokens / f.makespan;
  f.ttft_p50 = Percentile(t1, 0.5);
  f.ttft_p95 = Percentile(t1, 0.95);
  f.e2e_p50 = Percentile(t2, 0.5);
  f.e2e_p95 = Percentile(t2, 0.95);
  f.itl_p99 = Percentile(gaps, 0.99);
  f.itl_max = gaps.empty() ? 0 : *std::max_element(gaps.begin(), gaps.end());
  f.peak_gib = st.peak_resident_bytes / 1073741824.0;
  f.loads = st.block_loads;
  for (const auto& i : st.instances) f.evictions += i.evictions;
  f.adapter_loads = st.adapter_loads;
  f.completed = static_cast<int>(t2.size());
  f.errors = errors;
  return f;
}

nlohmann::json ToJson(const Figures& f) {
  return {{"throughput_tok_s", f.throughput}, {"ttft_p50_s", f.ttft_p50},
          {"ttft_p95_s", f.ttft_p95},         {"e2e_p50_s", f.e2e_p50},
          {"e2e_p95_s", f.e2e_p95},           {"peak_weights_gib", f.peak_gib},
          {"block_loads", f.loads},           {"evictions", f.evictions},
          {"adapter_loads", f.adapter_loads},           {"makespan_s", f.makespan},
          {"itl_p99_s", f.itl_p99},           {"itl_max_s", f.itl_max},
          {"errors", f.errors}};
}

void Print(const char* label, const Figures& f) {
  std::printf("  %-28s %8.1f tok/s  TTFT p50 %6.2f p95 %6.2f s  E2E p50 %6.2f p95 %6.2f s  "
              "ITL p99 %4.0f max %4.0f ms  peak %5.2f GiB  loads %4llu evictions %4llu adapter "
              "loads %4llu%s\n",
              label, f.throughput, f.ttft_p50, f.ttft_p95, f.e2e_p50, f.e2e_p95, 1e3 * f.itl_p99,
              1e3 * f.itl_max, f.peak_gib,
              static_cast<unsigned long long>(f.loads),
              static_cast<unsigned long long>(f.evictions),
              static_cast<unsigned long long>(f.adapter_loads), f.errors ? "  ERRORS" : "");
  std::fflush(stdout);
}

int Main(int argc, char** argv) {
  std::vector<int> ns = {8, 32};
  int requests = 160, threads = runtime::DefaultThreadCount();
  double rate = 0;
  std::string shape = "medium";
  runtime::DType dtype = runtime::DType::kF32;  // --dtype: the base's (and so every block's)
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--n") {
      ns.clear();
      for (absl::string_view v : absl::StrSplit(next(), ',')) ns.push_back(std::stoi(std::string(v)));
    } else if (a == "--requests") {
      requests = std::stoi(next());
    } else if (a == "--rate") {
      rate = std::stod(next());
    } else if (a == "--shape") {
      shape = next();
    } else if (a == "--max-running") {
      g_max_running = std::stoi(next());
    } else if (a == "--threads") {
      threads = std::stoi(next());
    } else if (a == "--only") {  // profiling: "shared" or "dedicated", "all_copies" or "quarter"
      g_only = next();
    } else if (a == "--repeat") {
      g_repeat = std::max(1, std::stoi(next()));
    } else if (a == "--dtype" || a == "--kv-dtype") {
      const bool kv = a == "--kv-dtype";
      const auto d = runtime::ParseDType(next(), {runtime::DType::kF32, kv ? runtime::DType::kBF16
                                                                            : runtime::DType::kF16});
      if (!d.ok()) {
        std::fprintf(stderr, "%s: %s\n", a.c_str(), std::string(d.status().message()).c_str());
        return 2;
      }
      (kv ? g_kv_dtype : dtype) = *d;
    } else if (a == "--verbose") {
      g_verbose = true;
    } else if (a == "--loads") {
      const std::string v = next();
      if (v != "step" && v != "background") {
        std::fprintf(stderr, "--loads: step or background, not '%s'\n", v.c_str());
        return 2;
      }
      g_background_loads = v == "background";
    } else if (a == "--cold") {
      g_cold = true;
    } else if (a == "--quick") {
      ns = {8};
      requests = 48;
      g_repeat = 1;
    } else {
      std::fprintf(stderr, "usage: multitenant [--n 8,32] [--requests N] [--rate R] "
                           "[--shape medium|llama110m|small] [--threads T] [--max-running M] [--repeat K] "
                           "[--only WHAT] [--dtype f32|f16] [--kv-dtype f32|bf16] [--verbose] [--cold] "
                           "[--loads background|step] "
                           "[--quick]\n");
      return 2;
    }
  }
  runtime::ModelConfig c = blockzoo::Llama110MConfig();
  if (shape == "medium") {
    c = blockzoo::MediumConfig();
  } else if (shape == "small") {
    c = blockzoo::SmallConfig();
  }
  // Default rates offer more than per-model serving can carry on 2 cores; shared blocks may
  // keep up with them (then their throughput is the offered load, and the ratio understates
  // the capacity ratio: use a higher --rate, e.g. 200, to saturate both).
  if (rate <= 0) rate = shape == "medium" ? 20.0 : shape == "small" ? 60.0 : 5.0;
  std::printf("multitenant: synthetic llama dim %d, %d layers, ffn %d, vocab %d (%s, random "
              "weights, %s KV); %d requests, Poisson %.1f req/s, Zipf(1.1) over models; %d "
              "threads; loads %s\n",
              c.dim, c.n_layers, c.hidden_dim, c.vocab_size, runtime::DTypeName(dtype),
              runtime::DTypeName(g_kv_dtype), requests, rate, threads,
              g_background_loads ? "in the background" : "in the step");
  nlohmann::json all = {{"shape", shape}, {"requests", requests}, {"rate", rate}, {"repeat", g_repeat},
                        {"threads", threads}, {"max_running", g_max_running}, {"cold", g_cold},
                        {"loads", g_background_loads ? "background" : "step"},
                        {"dtype", runtime::DTypeName(dtype)},
                        {"kv_dtype", runtime::DTypeName(g_kv_dtype)}};
  for (int n : ns) {
    ScratchDir tmp;
    auto zoo = blockzoo::Zoo::Open(tmp.path(), true);
    if (!zoo.ok()) return 1;
    std::printf("N = %d: building the family (base, %d partial fine-tunes of the top %d layers, "
                "%d LoRA models) ...\n", n, n, std::max(1, c.n_layers / 4), std::max(1, n / 4));
    auto base = blockzoo::ImportSynthetic(**zoo, "base", c, dtype, 1, nullptr);
    if (!base.ok()) return 1;
    std::vector<std::string> names;
    for (int i = 0; i < n; ++i) {
      blockzoo::DeriveOptions d;
      d.base = "base";
      d.name = "ft" + std::to_string(i);
      d.top_layers = std::max(1, c.n_layers / 4);
      d.rel_norm = 0.01;
      d.seed = i + 1;
      if (!blockzoo::DeriveModel(**zoo, d).ok()) return 1;
      names.push_back(d.name);
    }
    for (int i = 0; i < std::max(1, n / 4); ++i) {
      blockzoo::DeriveOptions d;
      d.base = "base";
      d.name = "lora" + std::to_string(i);
      d.recipe = blockzoo::DeriveOptions::Recipe::kLora;
      d.lora_rank = 8;
      d.lora_targets = {"wq", "wv"};
      d.seed = 100 + i;
      if (!blockzoo::DeriveModel(**zoo, d).ok()) return 1;
      names.push_back(d.name);
    }
    const uint64_t model_bytes = base->manifest.bytes();
    // Every model as a dedicated copy, LoRA models with their adapters.
    uint64_t all_copies = 0;
    for (const std::string& name : names) {
      auto m = (*zoo)->GetManifest(name);
      if (!m.ok()) return 1;
      all_copies += m->bytes();
      for (const auto& e : m->chain) {
        std::error_code ec;
        if (!e.lora.empty()) all_copies += std::filesystem::file_size((*zoo)->BlockPath(e.lora), ec);
      }
    }
    const auto arrivals =
        Workload(static_cast<int>(names.size()), requests, rate, 42 + n, c.vocab_size);
    nlohmann::json jn;
    for (const auto& [budget_name, budget] :
         std::vector<std::pair<std::string, uint64_t>>{{"all_copies", all_copies},
                                                       {"quarter", all_copies / 4}}) {
      auto wanted = [&](const char* what) {
        return g_only.empty() || g_only == what || g_only == budget_name;
      };
      if (!g_only.empty() && !wanted("shared") && !wanted("dedicated")) continue;
      // Every copy fits: steady-state serving loads them all first (unless --cold).
      const bool preload = budget >= all_copies && !g_cold;
      std::printf(" budget %s: %.2f GiB of weights (one model %.0f MiB, %zu models; %s)\n",
                  budget_name.c_str(), budget / 1073741824.0, model_bytes / 1048576.0,
                  names.size(), preload ? "all loaded before the run" : "loaded on first use");
      // Each configuration runs g_repeat times, interleaved (a, b, a, b): this shared VM's
      // speed moves by tens of percent within a minute and the first touch of fresh memory is
      // slow, so one run of each would compare moments, not systems. The better run of each
      // (by throughput, with its own latencies) is reported.
      Figures a, b;
      for (int rep = 0; rep < g_repeat; ++rep) {
        if (wanted("shared")) {
          const Figures f = Serve(**zoo, names, true, budget, preload, arrivals, threads, c.vocab_size);
          Print("(a) shared blocks", f);
          if (f.throughput > a.throughput) a = f;
        }
        if (wanted("dedicated")) {
          const Figures f = Serve(**zoo, names, false, budget, preload, arrivals, threads, c.vocab_size);
          Print("(b) dedicated copies", f);
          if (f.throughput > b.throughput) b = f;
        }
      }
      if (g_repeat > 1) {
        Print("(a) best", a);
        Print("(b) best", b);
      }
      const double speedup = b.throughput > 0 ? a.throughput / b.throughput : 0;
      const double p95_cut = b.e2e_p95 > 0 ? 1.0 - a.e2e_p95 / b.e2e_p95 : 0;
      std::printf("  => throughput %.2fx, p95 end-to-end latency %.0f%% lower\n", speedup,
                  100 * p95_cut);
      jn[budget_name] = {{"preloaded", preload},
                         {"shared", ToJson(a)},
                         {"dedicated", ToJson(b)},
                         {"throughput_ratio", speedup},
                         {"p95_e2e_reduction", p95_cut}};
    }
    all["N" + std::to_string(n)] = jn;
  }
  std::printf("%s\n", all.dump().c_str());
  return 0;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
