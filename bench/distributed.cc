// The cost of distribution and what placement does to it: one engine serving a synthetic base
// (MediumConfig: dim 512, 8 layers, f32, random weights: timing only) and two partial
// fine-tunes of it (top 2 layers changed), with its block instances in this process, on one
// worker, or on three workers under each placement policy; each with no added delay and with a
// delay per round trip to a worker that the transport injects (standing for a network between
// servers: this machine has no traffic shaping). The workers are real gRPC servers on loopback
// in this process (each with as many compute threads as the engine); on a 2-core machine everything shares the
// cores, so compare the rows with each other, not with a cluster.
// Per configuration: tokens/s, p50/p95 request latency, round trips to workers per generated
// token, and whether every request's tokens equal the single process's.
//   distributed [--requests 24] [--tokens 32] [--hop_ms 1] [--threads 2]
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/bench_util.h"
#include "blockzoo/derive.h"
#include "blockzoo/importer.h"
#include "blockzoo/synthetic.h"
#include "runtime/status_macros.h"
#include "scheduler/engine.h"
#include "scheduler/zoo_engine.h"
#include "server/remote_block.h"
#include "server/worker_service.h"
#include "spdlog/spdlog.h"

namespace blockserve::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  int requests = 24, tokens = 32, threads = 2;
  double hop_ms = 1;
};

struct Row {
  double tok_s = 0, p50 = 0, p95 = 0, hops_per_token = 0;
  std::vector<std::vector<int32_t>> out;
};

uint64_t Segments(const std::vector<std::unique_ptr<server::WorkerServer>>& ws) {
  uint64_t n = 0;
  for (const auto& w : ws) {
    server::WorkerClient c(absl::StrCat("127.0.0.1:", w->port()));
    grpc::ClientContext ctx;
    worker::v1::StatsResponse resp;
    if (c.stub().Stats(&ctx, worker::v1::StatsRequest(), &resp).ok()) n += resp.segments();
  }
  return n;
}

// All requests submitted at once, the engine stepped to the end on this thread.
absl::StatusOr<Row> Serve(const blockzoo::Zoo& zoo, const Options& o,
                          const scheduler::SourceWrapper& wrap,
                          const std::vector<std::unique_ptr<server::WorkerServer>>& ws) {
  const std::vector<std::string> names = {"base", "ft1", "ft2"};
  ASSIGN_OR_RETURN(auto models, scheduler::LoadEngineModels(zoo, names, runtime::BlockOptions{},
                                                            /*lazy=*/false, true, wrap));
  scheduler::EngineOptions eo;
  eo.threads = o.threads;
  scheduler::Engine engine(eo, std::move(models));
  Row row;
  row.out.resize(o.requests);
  std::vector<double> done(o.requests, 0);
  const uint64_t seg0 = Segments(ws);
  const auto t0 = Clock::now();
  for (int i = 0; i < o.requests; ++i) {
    scheduler::RequestSpec spec;
    spec.model = engine.FindModel(names[i % names.size()]);
    for (int t = 0; t < 16; ++t) spec.prompt.push_back(3 + (i * 131 + t * 17) % 7000);
    spec.max_tokens = o.tokens;
    RETURN_IF_ERROR(engine
                        .Submit(spec,
                                [&, i](const scheduler::Event& ev) {
                                  if (ev.token >= 0) row.out[i].push_back(ev.token);
                                  if (ev.finish != scheduler::Finish::kNone) {
                                    done[i] = std::chrono::duration<double>(Clock::now() - t0)
                                                  .count();
                                  }
                                })
                        .status());
  }
  while (true) {
    ASSIGN_OR_RETURN(bool worked, engine.Step());
    if (!worked) break;
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  uint64_t tokens = 0;
  for (const auto& t : row.out) tokens += t.size();
  row.tok_s = tokens / secs;
  row.p50 = Percentile(done, 0.5);
  row.p95 = Percentile(done, 0.95);
  row.hops_per_token = static_cast<double>(Segments(ws) - seg0) / static_cast<double>(tokens);
  return row;
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--requests") o.requests = std::stoi(v);
    else if (a == "--tokens") o.tokens = std::stoi(v);
    else if (a == "--hop_ms") o.hop_ms = std::stod(v);
    else if (a == "--threads") o.threads = std::stoi(v);
    else {
      std::fprintf(stderr, "usage: distributed [--requests 24] [--tokens 32] [--hop_ms 1] "
                           "[--threads 2]\n");
      return 2;
    }
  }
  spdlog::set_level(spdlog::level::warn);  // a line per block load would bury the table
  ScratchDir tmp;
  auto zoo = blockzoo::Zoo::Open(tmp.path(), true);
  if (!zoo.ok()) return 1;
  std::fprintf(stderr, "distributed: synthetic medium f32 base + 2 fine-tunes in %s\n",
               tmp.path().c_str());
  if (!blockzoo::ImportSynthetic(**zoo, "base", blockzoo::MediumConfig(), runtime::DType::kF32, 1,
                                 nullptr).ok()) {
    return 1;
  }
  for (int i = 1; i <= 2; ++i) {
    blockzoo::DeriveOptions d;
    d.base = "base";
    d.name = absl::StrCat("ft", i);
    d.top_layers = 2;
    d.seed = i;
    if (!blockzoo::DeriveModel(**zoo, d).ok()) return 1;
  }
  std::vector<std::unique_ptr<server::WorkerServer>> ws;
  std::string all;
  for (int i = 0; i < 3; ++i) {
    auto z = blockzoo::Zoo::Open(tmp.path(), false);
    ws.push_back(std::make_unique<server::WorkerServer>(std::move(*z), o.threads));
    if (!ws.back()->Start("127.0.0.1:0").ok()) return 1;
    absl::StrAppend(&all, all.empty() ? "" : ",", "127.0.0.1:", ws.back()->port());
  }
  const std::string one = absl::StrCat("127.0.0.1:", ws[0]->port());
  std::printf("\ndistributed: %d requests x %d tokens over 3 models (base + 2 fine-tunes), "
              "%d compute threads in the engine and in each worker\n", o.requests, o.tokens, o.threads);
  std::printf("  %-34s %9s %8s %8s %10s %s\n", "configuration", "tok/s", "p50 s", "p95 s",
              "hops/tok", "tokens");
  auto single = Serve(**zoo, o, nullptr, ws);
  if (!single.ok()) {
    std::fprintf(stderr, "%s\n", single.status().ToString().c_str());
    return 1;
  }
  auto line = [&](const std::string& what, const Row& r) {
    std::printf("  %-34s %9.1f %8.2f %8.2f %10.2f %s\n", what.c_str(), r.tok_s, r.p50, r.p95,
                r.hops_per_token, r.out == single->out ? "= single process" : "DIFFER");
  };
  line("single process", *single);
  for (double hop : {0.0, o.hop_ms}) {
    struct Config { const char* name; std::string list; const char* placement; };
    for (const Config& c : {Config{"1 worker", one, "contiguous"},
                            Config{"3 workers, contiguous", all, "contiguous"},
                            Config{"3 workers, round-robin", all, "round-robin"},
                            Config{"3 workers, random", all, "random"}}) {
      auto wrap = server::WorkerSources(c.list, c.placement, 10, hop / 1000);
      if (!wrap.ok()) return 1;
      auto r = Serve(**zoo, o, *wrap, ws);
      if (!r.ok()) {
        std::fprintf(stderr, "%s: %s\n", c.name, r.status().ToString().c_str());
        return 1;
      }
      line(absl::StrCat(c.name, ", +", hop, " ms/hop"), *r);
    }
  }
  return 0;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
