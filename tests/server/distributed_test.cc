// blockserve as separate processes: three `blockserve worker`s hosting the block instances and a
// `blockserve serve --workers` front end, all on loopback. The front end's answers equal a
// single process's token for token; a worker killed with SIGKILL under 16 streams makes each
// stream finish or end with an error event within a bound — none hangs.
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/testing/child_process.h"
#include "tests/testing/http_client.h"
#include "tests/testing/test_util.h"

namespace blockserve {
namespace {

using nlohmann::json;
using testing::ChildProcess;

struct Cluster {
  std::vector<std::unique_ptr<ChildProcess>> workers;
  std::vector<int> worker_ports;
  std::unique_ptr<ChildProcess> front, single;
  int front_port = 0, single_port = 0;
};

// The zoo (stories260K), three workers, the front end over them and a single process beside.
void StartCluster(const std::string& models, const std::string& dir, Cluster* c) {
  const std::string zoo = dir + "/zoo";
  ASSERT_EQ(std::system(absl::StrCat(BLOCKSERVE_BINARY_DIR, "/bin/blockzoo import --zoo ", zoo,
                                     " ", models, "/stories260K/stories260K.bin > /dev/null 2>&1")
                            .c_str()),
            0);
  std::string list;
  for (int i = 0; i < 3; ++i) {
    const std::string log = absl::StrCat(dir, "/worker", i, ".log");
    c->workers.push_back(std::make_unique<ChildProcess>(
        "worker", std::vector<std::string>{"--zoo", zoo, "--listen", "127.0.0.1:0", "--threads", "1"},
        log));
    c->worker_ports.push_back(c->workers.back()->ReadPort("port=(\\d+)"));
    ASSERT_GT(c->worker_ports.back(), 0) << testing::ReadFile(log);
    absl::StrAppend(&list, list.empty() ? "" : ",", "127.0.0.1:", c->worker_ports.back());
  }
  const std::vector<std::string> common = {"--zoo", zoo, "--http_port", "0", "--grpc_port", "0",
                                           "--threads", "1"};
  std::vector<std::string> front = common;
  front.insert(front.end(), {"--workers", list});
  c->front = std::make_unique<ChildProcess>("serve", front, dir + "/front.log");
  c->front_port = c->front->ReadPort("http=[^:]+:(\\d+)");
  ASSERT_GT(c->front_port, 0) << testing::ReadFile(dir + "/front.log");
  c->single = std::make_unique<ChildProcess>("serve", common, dir + "/single.log");
  c->single_port = c->single->ReadPort("http=[^:]+:(\\d+)");
  ASSERT_GT(c->single_port, 0) << testing::ReadFile(dir + "/single.log");
}

// A streamed greedy completion: its text and how it ended ("length", "stop", "error", or
// "hung" when nothing arrived for `timeout_ms`).
struct Streamed {
  std::string text, end;
};
Streamed Stream(int port, const std::string& prompt, int max_tokens, int timeout_ms = 30000) {
  Streamed out;
  const int fd = testing::Connect(port);
  const json req = {{"model", "stories260K"}, {"prompt", prompt}, {"max_tokens", max_tokens},
                    {"temperature", 0}, {"stream", true}};
  if (fd < 0 || !testing::SendAll(fd, testing::Request("POST", "/v1/completions", req.dump()))) {
    if (fd >= 0) close(fd);
    out.end = "connect failed";
    return out;
  }
  const testing::HttpReply r = testing::ParseReply(testing::ReadAll(fd, timeout_ms));
  close(fd);
  const auto events = testing::SseData(r.body);
  if (events.empty() || events.back() != "[DONE]") {
    out.end = r.status != 200 && r.status != 0 ? "error" : "hung";
    return out;
  }
  out.end = "none";
  for (const std::string& e : events) {
    const json j = json::parse(e, nullptr, false);
    if (!j.is_object()) continue;
    if (j.contains("error")) out.end = "error";
    if (!j.contains("choices") || j["choices"].empty()) continue;
    out.text += j["choices"][0].value("text", "");
    if (j["choices"][0]["finish_reason"].is_string()) {
      out.end = j["choices"][0]["finish_reason"].get<std::string>();
    }
  }
  return out;
}

const char* kPrompts[] = {"Once upon a time", "Tom had a dog", "The sun was", "Lily saw a bird",
                          "One day", "The little boy", "Sara and Ben", "There was a big tree"};

TEST(Distributed, ThreeWorkersGiveTheSingleProcessTokens) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(StartCluster(models, tmp.path(), &c));
  // Eight streams at once on each (batched with each other at every block), then compared.
  std::vector<Streamed> front(8), single(8);
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] { front[i] = Stream(c.front_port, kPrompts[i], 48); });
    threads.emplace_back([&, i] { single[i] = Stream(c.single_port, kPrompts[i], 48); });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 8; ++i) {
    EXPECT_TRUE(front[i].end == "length" || front[i].end == "stop") << kPrompts[i] << ": "
                                                                    << front[i].end;
    EXPECT_EQ(front[i].text, single[i].text) << kPrompts[i];
    EXPECT_FALSE(front[i].text.empty());
  }
  // Every worker hosts part of the chain (contiguous placement over 12 blocks).
  for (int i = 0; i < 3; ++i) {
    const std::string log = testing::ReadFile(absl::StrCat(tmp.path(), "/worker", i, ".log"));
    EXPECT_NE(log.find("worker: loaded"), std::string::npos) << "worker " << i << ": " << log;
  }
}

TEST(Distributed, AWorkerKilledUnderSixteenStreamsHangsNone) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  Cluster c;
  ASSERT_NO_FATAL_FAILURE(StartCluster(models, tmp.path(), &c));
  ASSERT_EQ(Stream(c.front_port, "Warm up", 4).end, "length");  // every block loaded
  std::vector<Streamed> got(16);
  std::vector<std::thread> threads;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&, i] { got[i] = Stream(c.front_port, kPrompts[i % 8], 400, 40000); });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  c.workers[1]->Signal(SIGKILL);
  for (auto& t : threads) t.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  int errors = 0;
  for (int i = 0; i < 16; ++i) {
    EXPECT_NE(got[i].end, "hung") << "stream " << i;
    EXPECT_NE(got[i].end, "connect failed") << "stream " << i;
    errors += got[i].end == "error";
  }
  EXPECT_LT(secs, 30) << "every stream ends within the bound";
  // The killed worker held a third of the chain: what was running when it died failed, and
  // a request after it fails at once with an error, not a hang.
  const Streamed after = Stream(c.front_port, "After", 8, 10000);
  EXPECT_EQ(after.end, "error");
  std::printf("  %d of 16 streams ended with an error event, the rest finished; %.2f s\n", errors,
              secs);
}

}  // namespace
}  // namespace blockserve
