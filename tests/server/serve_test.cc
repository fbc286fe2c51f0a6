// `blockserve serve` as a process: it starts, answers, and on SIGTERM drains — requests in
// flight finish (a stream runs to [DONE]), new ones are refused — then exits 0. Bad
// configurations are clear errors.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "tests/testing/child_process.h"
#include "tests/testing/http_client.h"
#include "tests/testing/test_util.h"

namespace blockserve {
namespace {

using testing::HttpReply;

// `blockserve serve ARGS`; stdout (the ports line) read, stderr kept in a file.
class ServeProcess : public testing::ChildProcess {
 public:
  ServeProcess(const std::vector<std::string>& args, const std::string& log)
      : ChildProcess("serve", args, log) {}
  // The HTTP port from the "listening" line (0 when the process ended first).
  int HttpPort() { return ReadPort("http=[^:]+:(\\d+)"); }
};

std::string ImportZoo(const std::string& models, const std::string& dir) {
  const std::string zoo = dir + "/zoo";
  const std::string cmd = absl::StrCat(BLOCKSERVE_BINARY_DIR, "/bin/blockzoo import --zoo ", zoo,
                                       " ", models, "/stories260K/stories260K.bin > /dev/null 2>&1");
  EXPECT_EQ(std::system(cmd.c_str()), 0);
  return zoo;
}

// A 480-token stream started on `port`, its first bytes in; the socket (-1 on failure).
int StartStream(int port, bool ignore_eos) {
  const int fd = testing::Connect(port);
  if (fd < 0) return -1;
  const nlohmann::json req = {{"model", "stories260K"}, {"prompt", "Once upon a time"},
                              {"max_tokens", 480}, {"stream", true}, {"ignore_eos", ignore_eos}};
  char first[64];
  if (!testing::SendAll(fd, testing::Request("POST", "/v1/completions", req.dump())) ||
      recv(fd, first, sizeof(first), MSG_PEEK) <= 0) {
    close(fd);
    return -1;
  }
  return fd;
}

TEST(Serve, SigtermLetsTheStreamFinishRefusesNewRequestsAndExitsZero) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  const std::string zoo = ImportZoo(models, tmp.path());
  ServeProcess p({"--zoo", zoo, "--http_port", "0", "--grpc_port", "0", "--threads", "2"},
                 tmp.path() + "/serve.log");
  const int port = p.HttpPort();
  ASSERT_GT(port, 0) << testing::ReadFile(tmp.path() + "/serve.log");
  // A long stream starts; SIGTERM arrives mid-way.
  const int fd = StartStream(port, false);
  ASSERT_GE(fd, 0);
  p.Signal(SIGTERM);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  // New work is refused while draining (or the connection is refused once stopped).
  const HttpReply refused = testing::Http(port, "POST", "/v1/completions",
                                          R"({"model":"stories260K","prompt":"Tom"})");
  EXPECT_TRUE(refused.status == 503 || refused.status == 0) << refused.status << refused.body;
  const HttpReply stream = testing::ParseReply(testing::ReadAll(fd));
  close(fd);
  const auto events = testing::SseData(stream.body);
  ASSERT_GE(events.size(), 2u) << stream.body;
  EXPECT_EQ(events.back(), "[DONE]");
  const auto last = nlohmann::json::parse(events[events.size() - 2]);
  // Ran to its natural end (sampled: an end-of-text token may come before max_tokens), never cut.
  const std::string finish = last["choices"][0]["finish_reason"].get<std::string>();
  EXPECT_TRUE(finish == "length" || finish == "stop") << finish;
  EXPECT_EQ(p.Wait(), 0);
  const std::string log = testing::ReadFile(tmp.path() + "/serve.log");
  // The model is tiny: on a loaded machine the stream can finish before the signal is handled
  // ("0 in flight"); what must hold either way is checked above (the stream ran to its length
  // and [DONE], new work was refused, exit 0).
  EXPECT_TRUE(log.find("draining (1 in flight") != std::string::npos ||
              log.find("draining (0 in flight") != std::string::npos)
      << log;
  EXPECT_NE(log.find("OPEN"), std::string::npos) << "an open server says so at start-up";
}

// Past the drain deadline a stream is cut — and says so: its last event is an error the client
// sees (503, server_shutting_down), never a finish_reason of "stop" that reads as success.
TEST(Serve, AStreamCutAtTheDrainDeadlineEndsWithAnError) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  const std::string zoo = ImportZoo(models, tmp.path());
  const std::string config = tmp.path() + "/config.json";
  std::ofstream(config) << R"({"gateway": {"drain_seconds": 0}})";
  ServeProcess p({"--zoo", zoo, "--http_port", "0", "--grpc_port", "0", "--threads", "2",
                  "--config", config},
                 tmp.path() + "/serve.log");
  const int port = p.HttpPort();
  ASSERT_GT(port, 0) << testing::ReadFile(tmp.path() + "/serve.log");
  const int fd = StartStream(port, /*ignore_eos=*/true);
  ASSERT_GE(fd, 0);
  p.Signal(SIGTERM);
  const HttpReply stream = testing::ParseReply(testing::ReadAll(fd));
  close(fd);
  const auto events = testing::SseData(stream.body);
  ASSERT_GE(events.size(), 2u) << stream.body;
  // With ignore_eos a stream that ran to its end finishes with "length" after 480 tokens; one
  // cut by the deadline must end with the error event instead.
  for (const std::string& e : events) {
    const auto j = nlohmann::json::parse(e, nullptr, false);
    if (j.is_object() && j.contains("choices") && !j["choices"].empty()) {
      EXPECT_NE(j["choices"][0]["finish_reason"], "stop") << "a cut stream read as a normal end";
    }
  }
  const auto last = nlohmann::json::parse(events[events.size() - 2], nullptr, false);
  if (last.contains("error")) {
    EXPECT_EQ(last["error"]["code"], "server_shutting_down");
    EXPECT_NE(last["error"]["message"].get<std::string>().find("drain deadline"), std::string::npos);
  } else {  // finished before the signal landed (a fast machine): then it must be whole
    EXPECT_EQ(last["choices"][0]["finish_reason"], "length") << events[events.size() - 2];
  }
  EXPECT_EQ(p.Wait(), 0);
}

TEST(Serve, BadConfigurationIsAClearError) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  const std::string zoo = ImportZoo(models, tmp.path());
  struct Case {
    std::string config, expect;
  };
  const std::vector<Case> cases = {
      {"{\"tenants\": 3}", "tenants: must be an array"},
      {R"({"tenants": [{"name": "a"}]})", "tenants[0].api_keys"},
      {R"({"tenants": [{"name": "a", "api_keys": ["k1"], "weight": "x"}]})", "tenants[0].weight: must be a number"},
      {R"({"tenants": [{"name": "a", "api_keys": ["k1"], "equivalence": "maybe"}]})", "tenants[0].equivalence"},
      {R"({"engine": {"threadz": 2}})", "engine.threadz: unknown field"},
      {R"({"engine": {"kv_dtype": "f8"}})", R"(engine.kv_dtype: must be f32 or bf16, got 'f8')"},
      {R"({"engine": {"background_loads": 1}})", "engine.background_loads: must be true or false"},
      {R"({"engine": {"profile_max_batch": "yes"}})",
       "engine.profile_max_batch: must be true or false"},
      {"{not json", "not valid JSON"},
  };
  for (const Case& c : cases) {
    const std::string path = tmp.path() + "/config.json";
    std::ofstream(path) << c.config;
    ServeProcess p({"--zoo", zoo, "--config", path, "--http_port", "0", "--grpc_port", "0"},
                   tmp.path() + "/serve.log");
    EXPECT_EQ(p.HttpPort(), 0);
    EXPECT_EQ(p.Wait(), 2) << c.config;
    const std::string log = testing::ReadFile(tmp.path() + "/serve.log");
    EXPECT_NE(log.find(path), std::string::npos) << log;
    EXPECT_NE(log.find(c.expect), std::string::npos) << log;
  }
  // Open (no config) on a non-loopback address is refused.
  ServeProcess p({"--zoo", zoo, "--host", "0.0.0.0", "--http_port", "0", "--grpc_port", "0"},
                 tmp.path() + "/serve.log");
  EXPECT_EQ(p.Wait(), 2);
  EXPECT_NE(testing::ReadFile(tmp.path() + "/serve.log").find("loopback"), std::string::npos);
}

}  // namespace
}  // namespace blockserve
