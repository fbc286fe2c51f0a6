// blockzoo: manage a block zoo.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/usage.h"
#include "server/cli_flags.h"
#include "server/zoo_commands.h"

int main(int argc, char** argv) {
  const std::vector<std::string> args = blockserve::server::ParseFlags(
      argc, argv,
      "blockzoo <command> --zoo DIR [args]\n"
      "  import SOURCE [--name N --tokenizer FILE --replace]  llama2.c .bin, GGUF or HF directory\n"
      "  import PEFT_DIR --base MODEL [--name N]  a PEFT LoRA adapter on a zoo model\n"
      "  synth --name N [--shape llama110m|small --dtype f32|f16|bf16 --seed S]\n"
      "         a random-weight model of a realistic shape (labelled synthetic; for timing)\n"
      "  ls                       models with parent, blocks and bytes\n"
      "  show NAME                a model's family and chain (with how many models share each block)\n"
      "  stats                    logical bytes (summed over models), physical bytes, ratio\n"
      "  verify                   check every manifest, block hash and tokenizer\n"
      "  gc                       remove unreferenced blocks and leftovers of interrupted writes\n"
      "  rm NAME                  remove a model (its blocks stay until gc)\n"
      "  derive --from BASE --name NEW --recipe partial|full|lora [--layers K --kinds attn,ffn\n"
      "         --rel_norm R --seed S --lora_rank R --lora_alpha A --lora_targets wq,wv --merge]\n"
      "         synthetic fine-tune (labelled synthetic)\n"
      "  equiv MODEL [--calibration F --heldout F --skips=false --include_self]\n"
      "         score every candidate block (and skipping) at each position; stored in the zoo\n"
      "  resolve MODEL [--policy exact|equivalent --threshold T --allow_skip --min_top1 A]\n"
      "         the chain that would run under a policy\n"
      "Flags accept dashes or underscores. See --helpfull.");
  std::vector<std::string> rest(args.begin() + std::min<size_t>(args.size(), 2), args.end());
  const std::string cmd = args.size() > 1 ? args[1] : "";
  return blockserve::server::RunZooCommand(cmd, rest);
}
