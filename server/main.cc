// blockserve: the command-line entry point.
//   blockserve generate --model PATH [--tokenizer PATH] --prompt TEXT --max_tokens N ...
//   blockserve generate --zoo DIR --model NAME --prompt TEXT ...
//   blockserve serve --zoo DIR [--grpc_port P --http_port Q --config FILE --host H]
//   blockserve worker --zoo DIR [--listen 127.0.0.1:50061 --threads N]
//   blockserve devices
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/usage.h"
#include "server/cli_flags.h"
#include "server/generate_command.h"
#include "server/serve_command.h"
#include "server/worker_command.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args = blockserve::server::ParseFlags(
      argc, argv,
      "blockserve <command> [flags]\n"
      "  generate  run a model on a prompt: --model PATH [--tokenizer PATH] | --zoo DIR\n"
      "            --model NAME; --prompt TEXT --max_tokens N [--temperature T --top_p P\n"
      "            --top_k K --seed S --threads N]\n"
      "  serve     serve a zoo: --zoo DIR [--grpc_port 50051 --http_port 8000 --host\n"
      "            127.0.0.1 --config FILE --threads N --memory_budget_mib M --workers\n"
      "            host:port,... --placement contiguous|round-robin|random]\n"
      "  worker    host block instances for a front end: --zoo DIR [--listen\n"
      "            127.0.0.1:50061 --threads N]\n"
      "  devices   list compute devices\n"
      "Flags accept --max-tokens and --max_tokens alike. See --helpfull.");
  const std::string cmd = args.size() > 1 ? args[1] : "";
  if (cmd == "generate") return blockserve::server::RunGenerate();
  if (cmd == "serve") return blockserve::server::RunServe();
  if (cmd == "worker") return blockserve::server::RunWorker();
  if (cmd == "devices") return blockserve::server::RunDevices();
  std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
  return 2;
}
