// Structured output's cost per generated token: a TokenConstraint's Mask (one pass over the
// vocabulary, each token's bytes tried on a copy of the recogniser) at a few points of a JSON
// object and for a guided choice, next to the greedy argmax over the same logits measured in
// the same run (the pass every token already pays). Ends with one JSON line.
//   build/bin/constraint_bench [--vocab PATH.gguf (default: the GPT-2 vocabulary, 50257 tokens,
//                               in ../shared/models)] [--iters N]
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "nlohmann/json.hpp"
#include "runtime/constraint.h"
#include "runtime/mapped_file.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::bench {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Microseconds per call of fn, best of 5 rounds of `iters` calls.
template <typename Fn>
double MicrosPerCall(int iters, Fn fn) {
  double best = 1e30;
  for (int round = 0; round < 5; ++round) {
    const double t0 = Now();
    for (int i = 0; i < iters; ++i) fn();
    best = std::min(best, (Now() - t0) / iters * 1e6);
  }
  return best;
}

int Main(int argc, char** argv) {
  std::string path = "../shared/models/ggml-vocab-gpt-2/ggml-vocab-gpt-2.gguf";
  int iters = 200;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vocab" && i + 1 < argc) {
      path = argv[++i];
    } else if (a == "--iters" && i + 1 < argc) {
      iters = std::max(1, std::atoi(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: constraint_bench [--vocab PATH.gguf] [--iters N]\n");
      return 2;
    }
  }
  auto file = runtime::MappedFile::Open(path);
  if (!file.ok()) {
    std::fprintf(stderr, "%s\n", std::string(file.status().message()).c_str());
    return 1;
  }
  auto gguf = blockzoo::ParseGguf((*file)->data(), (*file)->size(), path);
  if (!gguf.ok()) return 1;
  auto tok = blockzoo::GgufTokenizer(*gguf);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s\n", std::string(tok.status().message()).c_str());
    return 1;
  }
  const int vocab = (*tok)->vocab_size();
  const std::vector<int32_t> stops = {(*tok)->eos_id() >= 0 ? (*tok)->eos_id() : 0};
  std::printf("constraint_bench: %s, %d tokens\n", path.c_str(), vocab);
  const double t0 = Now();
  const auto table = runtime::MakeTokenBytes(**tok);
  const double table_ms = (Now() - t0) * 1e3;
  std::printf("  token bytes table: %.1f ms (once per tokenizer)\n", table_ms);

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(vocab), scratch(vocab);
  for (float& x : logits) x = normal(rng);
  volatile int sink = 0;
  const double argmax_us = MicrosPerCall(iters, [&] { sink = runtime::Argmax(logits.data(), vocab); });
  std::printf("  baseline: greedy argmax over the vocabulary  %8.1f us per token\n", argmax_us);

  // A constraint that has taken `text` (as single-byte pieces: the recogniser's state is what
  // matters, not how the text was split).
  auto after = [&](const runtime::ConstraintFactory& make, const std::string& text) {
    auto c = make();
    for (unsigned char ch : text) {
      for (int32_t t = 0; t < vocab; ++t) {
        if (table->bytes[t] == std::string(1, static_cast<char>(ch))) {
          c->Accept(t);
          break;
        }
      }
    }
    return c;
  };
  nlohmann::json out = {{"vocab", vocab}, {"table_ms", table_ms}, {"argmax_us", argmax_us}};
  const auto json_object = runtime::JsonObjectConstraint(table, stops);
  const auto choice = runtime::ChoiceConstraint(table, stops, {"positive", "negative", "neutral"});
  const std::vector<std::tuple<std::string, const runtime::ConstraintFactory*, std::string>> cases = {
      {"json_object, start", &json_object, ""},
      {"json_object, in a string", &json_object, "{\"story\": \"Once upon a"},
      {"json_object, after a number", &json_object, "{\"a\": [1, 2, 3"},
      {"guided_choice (3), start", &choice, ""},
      {"guided_choice (3), mid-word", &choice, "neg"},
  };
  for (const auto& [name, make, text] : cases) {
    auto c = after(*make, text);
    int allowed = 0;
    const double us = MicrosPerCall(iters, [&] {
      scratch = logits;
      c->Mask(scratch.data(), vocab);
    });
    for (float x : scratch) allowed += x > -1e30f;
    std::printf("  %-30s %8.1f us per token (%5.1fx the argmax), %d tokens allowed\n",
                name.c_str(), us, us / argmax_us, allowed);
    out[name] = {{"us", us}, {"over_argmax", us / argmax_us}, {"allowed", allowed}};
    std::fflush(stdout);
  }
  std::printf("%s\n", out.dump().c_str());
  return sink < -1;
}

}  // namespace
}  // namespace blockserve::bench

int main(int argc, char** argv) { return blockserve::bench::Main(argc, argv); }
