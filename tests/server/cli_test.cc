// `blockserve generate` end to end: the real binary on the real model prints exactly what
// llama2.c prints, and bad input is a clear error with a non-zero exit code.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>

#include <nlohmann/json.hpp>

#include "tests/testing/test_util.h"

namespace blockserve {
namespace {

struct ExecResult {
  int code;
  std::string out;
};

ExecResult Exec(const std::string& args) {
  const std::string cmd = std::string(BLOCKSERVE_BINARY_DIR) + "/bin/blockserve " + args;
  FILE* p = popen(cmd.c_str(), "r");
  ExecResult r{-1, ""};
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(Cli, GenerateMatchesLlama2cStdout) {
  BS_REQUIRE_MODELS(dir);
  std::ifstream f(dir + "/stories260K/reference.json");
  const auto ref = nlohmann::json::parse(f);
  for (const auto& c : ref["cases"]) {
    const std::string name = c["name"];
    std::string args = "generate --model " + dir + "/stories260K/stories260K.bin";
    if (name == "greedy_once_upon_a_time_n64") args += " --prompt 'Once upon a time'";
    if (name == "greedy_tom_and_his_dog_n64") args += " --prompt 'Tom and his dog'";
    if (name.rfind("sampled", 0) == 0) args += " --temperature 1.0 --top-p 0.9 --seed 133742";
    const int n = c["steps"].get<int>() - static_cast<int>(c["prompt_ids"].size()) + 1;
    args += " --max-tokens " + std::to_string(n) + " --threads 2 2>/dev/null";
    const ExecResult r = Exec(args);
    EXPECT_EQ(r.code, 0) << name;
    EXPECT_EQ(r.out, c["stdout"].get<std::string>()) << name;
  }
}

TEST(Cli, GgufWithItsOwnTokenizer) {
  BS_REQUIRE_MODELS(dir);
  const ExecResult r = Exec("generate --model " + dir +
                     "/stories260K-gguf/stories260K.gguf --prompt 'Once upon a time' --max-tokens 60 2>/dev/null");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << r.out;
}

TEST(Cli, BadInputIsAClearError) {
  blockserve::testing::TempDir tmp;
  ExecResult r = Exec("generate --prompt hi 2>&1");
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.out.find("--model is required"), std::string::npos) << r.out;
  r = Exec("generate --model " + tmp.path() + "/missing.bin 2>&1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(tmp.path() + "/missing.bin"), std::string::npos) << r.out;
  std::ofstream(tmp.path() + "/junk.gguf") << "GGUF\x03\x00\x00\x00garbage";
  r = Exec("generate --model " + tmp.path() + "/junk.gguf 2>&1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("junk.gguf"), std::string::npos) << r.out;
  r = Exec("frobnicate 2>&1");
  EXPECT_EQ(r.code, 2);
  r = Exec("devices");
  EXPECT_EQ(r.code, 0);
  EXPECT_NE(r.out.find("cpu"), std::string::npos);
}

}  // namespace
}  // namespace blockserve
