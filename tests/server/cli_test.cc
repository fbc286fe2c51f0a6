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

ExecResult Exec(const std::string& args, const std::string& binary = "blockserve") {
  const std::string cmd = std::string(BLOCKSERVE_BINARY_DIR) + "/bin/" + binary + " " + args;
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


ExecResult Zoo(const std::string& args) { return Exec(args + " 2>&1", "blockzoo"); }

// Every `blockzoo` command on the real model, through the binary.
TEST(Cli, BlockzooCommandsEndToEnd) {
  BS_REQUIRE_MODELS(dir);
  blockserve::testing::TempDir tmp;
  const std::string z = "--zoo " + tmp.path() + "/zoo ";
  ExecResult r = Zoo("import " + z + dir + "/stories260K/stories260K.bin");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("imported stories260K: 12 blocks (12 new"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("100%"), std::string::npos) << "progress is shown: " << r.out;
  r = Zoo("import " + z + dir + "/stories260K-gguf/stories260K.gguf --name gguf");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("(0 new, 12 already in the zoo)"), std::string::npos) << r.out;
  r = Zoo("derive " + z + "--from stories260K --name ft --layers 2 --rel-norm 1e-3 --seed 4");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("4 blocks changed, 8 shared"), std::string::npos) << r.out;
  r = Zoo("derive " + z + "--from stories260K --name lora --recipe lora --lora-rank 4");
  ASSERT_EQ(r.code, 0) << r.out;
  r = Zoo("ls " + z);
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* m : {"stories260K", "gguf", "ft", "lora", "synthetic (partial)", "synthetic (lora)"}) {
    EXPECT_NE(r.out.find(m), std::string::npos) << m << "\n" << r.out;
  }
  r = Zoo("show " + z + "ft");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("shared by 4 model(s)"), std::string::npos) << r.out;
  r = Zoo("stats " + z);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("models:         4"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("ratio:"), std::string::npos) << r.out;
  r = Zoo("equiv " + z + "ft");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("stored "), std::string::npos) << r.out;
  r = Zoo("resolve " + z + "ft --policy equivalent --threshold 0.99");
  ASSERT_EQ(r.code, 0) << r.out;
  // ft's layers 3-4 differ from the base by 1e-3; the base's blocks are shared by two models.
  EXPECT_NE(r.out.find("12 blocks, 4 substituted, 0 skipped"), std::string::npos) << r.out;
  r = Exec("generate " + z + "--model lora --prompt 'Once upon a time' --max-tokens 20 2>/dev/null");
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out.rfind("Once upon a time", 0), 0u) << r.out;
  r = Exec("generate " + z + "--model stories260K --verify-blocks --prompt 'Once upon a time' "
           "--max-tokens 12 2>/dev/null");
  EXPECT_EQ(r.out.rfind("Once upon a time, there was a little girl named Lily.", 0), 0u) << r.out;
  r = Zoo("verify " + z);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("ok: 4 models"), std::string::npos) << r.out;
  r = Zoo("rm " + z + "ft");
  EXPECT_EQ(r.code, 0) << r.out;
  r = Zoo("gc " + z);
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("removed 4 blocks"), std::string::npos) << r.out;
  // Errors: a clear message and a non-zero exit code.
  r = Zoo("show " + z + "nope");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("no model 'nope'"), std::string::npos) << r.out;
  r = Zoo("import " + z + dir + "/stories260K/stories260K.bin");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("already exists"), std::string::npos) << r.out;
  r = Zoo("ls --zoo " + tmp.path() + "/missing");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("not a block zoo"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace blockserve
