#include "server/worker_command.h"

#include <signal.h>

#include <cstdio>
#include <string>

#include "absl/flags/declare.h"
#include "absl/flags/flag.h"
#include "blockzoo/zoo.h"
#include "server/stop_signals.h"
#include "server/worker_service.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

ABSL_DECLARE_FLAG(std::string, zoo);
ABSL_DECLARE_FLAG(int, threads);
ABSL_FLAG(std::string, listen, "127.0.0.1:50061",
          "worker: address the internal worker API listens on (port 0: any free port)");

namespace blockserve::server {

int RunWorker() {
  spdlog::set_default_logger(spdlog::stderr_color_mt("worker"));  // stdout: the port line
  const std::string dir = absl::GetFlag(FLAGS_zoo);
  if (dir.empty()) {
    std::fprintf(stderr, "blockserve worker: --zoo DIR is required (the front end's zoo)\n");
    return 2;
  }
  auto zoo = blockzoo::Zoo::Open(dir, /*create=*/false);
  if (!zoo.ok()) {
    std::fprintf(stderr, "blockserve worker: %s\n", std::string(zoo.status().message()).c_str());
    return 1;
  }
  sigset_t set = BlockStopSignals();
  const int threads = absl::GetFlag(FLAGS_threads);
  WorkerServer server(std::move(*zoo), threads);
  if (absl::Status s = server.Start(absl::GetFlag(FLAGS_listen)); !s.ok()) {
    std::fprintf(stderr, "blockserve worker: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  // One line for scripts and tests to read the port from.
  std::printf("blockserve worker listening port=%d\n", server.port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("{}: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  server.Stop();
  return 0;
}

}  // namespace blockserve::server
