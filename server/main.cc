// blockserve: the command-line entry point.
//   blockserve generate --model PATH [--tokenizer PATH] --prompt TEXT --max_tokens N ...
//   blockserve devices
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "server/generate_command.h"

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "blockserve <command> [flags]\n"
      "  generate  run a model file on a prompt: --model PATH [--tokenizer PATH] --prompt TEXT\n"
      "            --max_tokens N [--temperature T --top_p P --top_k K --seed S --threads N]\n"
      "  devices   list compute devices\n"
      "Flags accept --max-tokens and --max_tokens alike. See --helpfull.");
  // Accept dashes in flag names (--max-tokens) as well as absl's underscores.
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a.rfind("--", 0) != 0) continue;
    const size_t eq = a.find('=');
    for (size_t j = 2; j < (eq == std::string::npos ? a.size() : eq); ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(cargs.size()), cargs.data());
  const std::string cmd = positional.size() > 1 ? positional[1] : "";
  if (cmd == "generate") return blockserve::server::RunGenerate();
  if (cmd == "devices") return blockserve::server::RunDevices();
  std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
  return 2;
}
