#include "server/cli_flags.h"

#include "absl/flags/parse.h"
#include "absl/flags/usage.h"

namespace blockserve::server {

std::vector<std::string> ParseFlags(int argc, char** argv, const char* usage) {
  absl::SetProgramUsageMessage(usage);
  std::vector<std::string> args(argv, argv + argc);
  for (size_t i = 1; i < args.size(); ++i) {
    std::string& a = args[i];
    if (a == "--") break;
    if (a.rfind("--", 0) != 0) continue;
    const size_t eq = a.find('=');
    for (size_t j = 2; j < (eq == std::string::npos ? a.size() : eq); ++j) {
      if (a[j] == '-') a[j] = '_';
    }
  }
  std::vector<char*> cargs;
  for (auto& a : args) cargs.push_back(a.data());
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(cargs.size()), cargs.data());
  return std::vector<std::string>(positional.begin(), positional.end());
}

}  // namespace blockserve::server
