// Engines of the tests with their block instances on worker processes: with
// BLOCKSERVE_TEST_BLOCKS=workers, TestBlockSource(zoo) starts three workers over the zoo's folder
// (real gRPC servers on loopback, in this process) and returns the wrapper that builds every
// instance on them; otherwise null (instances in the engine's own process). ctest runs the
// engine's tests both ways (EngineTestsOnWorkers).
#pragma once

#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "blockzoo/zoo.h"
#include "gtest/gtest.h"
#include "server/remote_block.h"
#include "server/worker_service.h"

namespace blockserve::testing {

inline bool BlocksOnWorkers() {
  const char* want = std::getenv("BLOCKSERVE_TEST_BLOCKS");
  return want != nullptr && std::string(want) == "workers";
}

// Three workers over the zoo in `dir`, started once per folder and kept for the process.
inline std::string WorkersFor(const std::string& dir) {
  static auto* running = new std::map<std::string, std::vector<std::unique_ptr<server::WorkerServer>>>;
  auto& ws = (*running)[dir];
  std::string list;
  if (ws.empty()) {
    for (int i = 0; i < 3; ++i) {
      auto zoo = blockzoo::Zoo::Open(dir, false);
      EXPECT_TRUE(zoo.ok()) << zoo.status();
      if (!zoo.ok()) return "";
      ws.push_back(std::make_unique<server::WorkerServer>(std::move(*zoo), 1));
      const absl::Status st = ws.back()->Start("127.0.0.1:0");
      EXPECT_TRUE(st.ok()) << st;
    }
  }
  for (const auto& w : ws) absl::StrAppend(&list, list.empty() ? "" : ",", "127.0.0.1:", w->port());
  return list;
}

inline scheduler::SourceWrapper TestBlockSource(const blockzoo::Zoo& zoo) {
  if (!BlocksOnWorkers()) return nullptr;
  auto wrap = server::WorkerSources(WorkersFor(zoo.dir()), "contiguous", 10);
  EXPECT_TRUE(wrap.ok()) << wrap.status();
  return wrap.ok() ? *wrap : nullptr;
}

}  // namespace blockserve::testing
