#include "server/serve_command.h"

#include <signal.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "runtime/device.h"
#include "server/grpc_server.h"
#include "server/http_gateway.h"
#include "server/remote_block.h"
#include "server/serving.h"
#include "server/stop_signals.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_DECLARE_FLAG(std::string, zoo);
ABSL_DECLARE_FLAG(int, threads);
ABSL_FLAG(std::string, host, "127.0.0.1", "address both servers listen on");
ABSL_FLAG(int, grpc_port, 50051, "gRPC port (0: any free port)");
ABSL_FLAG(int, http_port, 8000, "HTTP (OpenAI gateway, /metrics) port (0: any free port)");
ABSL_FLAG(std::string, config, "", "server configuration (JSON: tenants, keys, limits, engine)");
ABSL_FLAG(double, memory_budget_mib, -1, "weight memory budget (overrides the config; 0: none)");
ABSL_FLAG(std::string, workers, "",
          "worker processes that host the block instances (blockserve worker): host:port,... — a "
          "name that resolves to several addresses is one worker per address; empty: in process");
ABSL_FLAG(std::string, placement, "contiguous",
          "which worker hosts each instance: contiguous (consecutive blocks together), "
          "round-robin or random");
ABSL_FLAG(double, workers_wait_s, 60, "how long serve waits for each worker to answer");

namespace blockserve::server {

namespace {

bool IsLoopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

}  // namespace

int RunServe() {
  spdlog::set_default_logger(spdlog::stderr_color_mt("blockserve"));  // stdout: the ports line
  const std::string zoo = absl::GetFlag(FLAGS_zoo);
  const std::string host = absl::GetFlag(FLAGS_host);
  if (zoo.empty()) {
    std::fprintf(stderr, "blockserve serve: --zoo DIR is required\n");
    return 2;
  }
  ServerConfig config;
  const std::string config_path = absl::GetFlag(FLAGS_config);
  if (!config_path.empty()) {
    auto c = LoadServerConfig(config_path);
    if (!c.ok()) {
      std::fprintf(stderr, "blockserve serve: %s\n", std::string(c.status().message()).c_str());
      return 2;
    }
    config = std::move(*c);
  }
  if (absl::GetFlag(FLAGS_threads) > 0) config.threads = absl::GetFlag(FLAGS_threads);
  if (absl::GetFlag(FLAGS_memory_budget_mib) >= 0) {
    config.memory_budget = static_cast<uint64_t>(absl::GetFlag(FLAGS_memory_budget_mib) * 1048576.0);
  }
  if (config.open() && !IsLoopback(host)) {
    std::fprintf(stderr,
                 "blockserve serve: without --config (tenants and API keys) the server only "
                 "listens on loopback; --host %s refused\n",
                 host.c_str());
    return 2;
  }
  if (!absl::GetFlag(FLAGS_workers).empty()) {
    auto wrap = WorkerSources(absl::GetFlag(FLAGS_workers), absl::GetFlag(FLAGS_placement),
                              absl::GetFlag(FLAGS_workers_wait_s));
    if (!wrap.ok()) {
      std::fprintf(stderr, "blockserve serve: %s\n", std::string(wrap.status().message()).c_str());
      return 2;
    }
    config.block_source = std::move(*wrap);
  }
  sigset_t set = BlockStopSignals();

  auto core = ServingCore::Create(zoo, config);
  if (!core.ok()) {
    std::fprintf(stderr, "blockserve serve: %s\n", std::string(core.status().message()).c_str());
    return 1;
  }
  GrpcServer grpc(core->get());
  HttpGateway http(core->get());
  if (auto s = grpc.Start(absl::StrCat(host, ":", absl::GetFlag(FLAGS_grpc_port))); !s.ok()) {
    std::fprintf(stderr, "blockserve serve: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  if (auto s = http.Start(host, absl::GetFlag(FLAGS_http_port)); !s.ok()) {
    std::fprintf(stderr, "blockserve serve: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  if ((*core)->tenants().open()) {
    spdlog::warn("no --config: serving OPEN (no API keys, every model, admin API included) on "
                 "loopback only");
  } else {
    spdlog::info("{} tenants, {} admin keys configured", (*core)->tenants().all().size(),
                 config.admin_keys.size());
  }
  spdlog::info("{} models from {}", (*core)->models().size(), zoo);
  if (!runtime::GetBuildInfo().optimized) {
    spdlog::warn("this binary was built without optimisation: serving will be slow");
  }
  for (const auto& [name, why] : (*core)->unavailable()) {
    spdlog::error("model {} is not served: {}", name, why);
  }
  if (http.metrics_port() > 0) spdlog::info("/metrics on port {}", http.metrics_port());
  // One line for scripts and tests to read the ports from.
  std::printf("blockserve listening http=%s:%d grpc=%s:%d\n", host.c_str(), http.port(),
              host.c_str(), grpc.port());
  std::fflush(stdout);

  int sig = 0;
  sigwait(&set, &sig);
  const auto deadline = std::chrono::duration<double>(config.drain_seconds);
  spdlog::info("{}: draining ({} in flight, up to {} s)", sig == SIGTERM ? "SIGTERM" : "SIGINT",
               (*core)->in_flight(), config.drain_seconds);
  grpc.SetServing(false);
  const int aborted = (*core)->Drain(deadline);
  if (aborted > 0) spdlog::warn("drain deadline passed: {} requests aborted", aborted);
  http.Stop();
  grpc.Shutdown(std::chrono::seconds(1));
  spdlog::info("stopped");
  return 0;
}

}  // namespace blockserve::server
