// Tokenizing cost against prompt length: the real tok512 (SentencePiece BPE) and GPT-2
// (byte-level BPE) vocabularies encode natural text and the worst case for BPE merges (one
// long run of letters) of 1k to 256k bytes; time per call (best of --reps) and per KiB, which
// stays flat when encoding is linear (it grew with the length when every merge rescanned).
//   tokenize_bench [--models ../shared/models] [--reps 3]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "runtime/mapped_file.h"
#include "runtime/tokenizer/sentencepiece_bpe.h"

namespace blockserve {
namespace {

double BestSeconds(const runtime::Tokenizer& t, const std::string& text, int reps, size_t* tokens) {
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    *tokens = t.Encode(text, true).size();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

int Main(int argc, char** argv) {
  std::string models = "../shared/models";
  int reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::string(argv[i]) == "--models") models = argv[i + 1];
    if (std::string(argv[i]) == "--reps") reps = std::max(1, std::atoi(argv[i + 1]));
  }
  auto sp = runtime::LoadLlama2cTokenizer(models + "/stories260K/tok512.bin", 512);
  const std::string gguf = models + "/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf";
  auto file = runtime::MappedFile::Open(gguf);
  if (!sp.ok() || !file.ok()) {
    std::fprintf(stderr, "tokenize_bench: the vocabularies are not under %s\n", models.c_str());
    return 2;
  }
  auto g = blockzoo::ParseGguf((*file)->data(), (*file)->size(), gguf);
  auto gpt2 = g.ok() ? blockzoo::GgufTokenizer(*g) : absl::StatusOr<std::unique_ptr<runtime::Tokenizer>>(g.status());
  if (!gpt2.ok()) return 2;
  const std::string story =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the "
      "sunshine with her dog, Max. One day they found a shiny red ball under a big tree. ";
  std::printf("%-10s %-8s %9s %9s %12s %12s\n", "vocab", "text", "bytes", "tokens", "ms", "us/KiB");
  for (const auto& [name, tok] : {std::pair<const char*, const runtime::Tokenizer*>{"tok512", sp->get()},
                                  {"gpt2", gpt2->get()}}) {
    for (const char* kind : {"story", "letters"}) {
      for (size_t bytes : {size_t{1} << 10, size_t{4} << 10, size_t{16} << 10, size_t{64} << 10,
                           size_t{256} << 10}) {
        std::string text;
        while (text.size() < bytes) text += kind[0] == 's' ? story : std::string("abcdefghijklmnopqrstuvwxyz");
        text.resize(bytes);
        size_t tokens = 0;
        const double s = BestSeconds(*tok, text, reps, &tokens);
        std::printf("%-10s %-8s %9zu %9zu %12.3f %12.1f\n", name, kind, bytes, tokens, s * 1e3,
                    s * 1e6 / (bytes / 1024.0));
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace blockserve

int main(int argc, char** argv) { return blockserve::Main(argc, argv); }
