#include "server/generate_command.h"

#include <cctype>
#include <chrono>
#include <cstdio>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "blockzoo/equiv.h"
#include "blockzoo/model_loader.h"
#include "blockzoo/zoo_model.h"
#include "runtime/status_macros.h"
#include "runtime/chain.h"
#include "runtime/device.h"
#include "scheduler/run_to_completion.h"

ABSL_FLAG(std::string, model, "",
          "model file (llama2.c checkpoint .bin or GGUF), or with --zoo a model name in the zoo");
ABSL_FLAG(std::string, zoo, "", "block zoo directory: run --model NAME from it");
ABSL_FLAG(std::string, policy, "exact",
          "with --zoo: exact (the model's own blocks) or equivalent (measured substitutes)");
ABSL_FLAG(double, threshold, 0.99, "with --policy equivalent: minimum block score");
ABSL_FLAG(bool, verify_blocks, false, "with --zoo: check every block's SHA-256 while loading");
ABSL_FLAG(bool, allow_skip, false, "with --policy equivalent: drop sub-layers that pass");
ABSL_FLAG(std::string, tokenizer, "", "tokenizer file (llama2.c .bin or tokenizer.json); "
                                      "default: the GGUF's own, or tok<vocab>.bin next to the model");
ABSL_FLAG(std::string, prompt, "", "prompt text");
ABSL_FLAG(int, max_tokens, 256, "tokens to generate at most");
ABSL_FLAG(double, temperature, 0.0, "sampling temperature (0 = greedy)");
ABSL_FLAG(double, top_p, 1.0, "nucleus sampling mass in (0, 1]");
ABSL_FLAG(int, top_k, 0, "sample among the k most likely tokens (0 = off)");
ABSL_FLAG(uint64_t, seed, 0, "sampling seed (0 = fixed default)");
ABSL_FLAG(int, threads, 0, "compute threads (0 = BLOCKSERVE_THREADS or all CPUs)");

namespace blockserve::server {
namespace {

// Prints a piece unless it is a single unprintable control byte (as llama2.c does).
void PrintPiece(const std::string& piece) {
  if (piece.size() == 1) {
    const unsigned char c = piece[0];
    if (!(std::isprint(c) || std::isspace(c))) return;
  }
  std::fwrite(piece.data(), 1, piece.size(), stdout);
}

struct Runnable {
  std::unique_ptr<runtime::Chain> chain;
  int32_t adapter = 0;
  std::unique_ptr<runtime::Tokenizer> tokenizer;
};

// A model file, or a model of the zoo at `zoo` when that is set; a tokenizer is required.
absl::StatusOr<Runnable> LoadForGenerate(const std::string& model, const std::string& zoo_dir,
                                         const std::string& tokenizer) {
  Runnable r;
  if (!zoo_dir.empty()) {
    ASSIGN_OR_RETURN(auto zoo, blockzoo::Zoo::Open(zoo_dir, /*create=*/false));
    ASSIGN_OR_RETURN(blockzoo::ZooModel m, blockzoo::LoadZooModel(*zoo, model, {}, absl::GetFlag(FLAGS_verify_blocks)));
    r.chain = std::move(m.chain);
    const std::string policy = absl::GetFlag(FLAGS_policy);
    if (policy == "equivalent") {
      blockzoo::ResolvePolicy p;
      p.mode = blockzoo::ResolvePolicy::Mode::kEquivalent;
      p.threshold = absl::GetFlag(FLAGS_threshold);
      p.allow_skip = absl::GetFlag(FLAGS_allow_skip);
      ASSIGN_OR_RETURN(blockzoo::ResolvedChain rc, blockzoo::ResolveChain(*zoo, model, p));
      ASSIGN_OR_RETURN(runtime::Chain chain, blockzoo::BuildResolvedChain(*zoo, m.manifest, rc));
      r.chain = std::make_unique<runtime::Chain>(std::move(chain));
      std::fprintf(stderr, "policy equivalent(%.4g%s): %d blocks substituted, %d skipped\n",
                   p.threshold, p.allow_skip ? ", skips" : "", rc.substituted, rc.skipped);
    } else if (policy != "exact") {
      return absl::InvalidArgumentError("--policy must be exact or equivalent");
    }
    r.adapter = m.adapter;
    r.tokenizer = std::move(m.tokenizer);
    if (!tokenizer.empty()) {
      ASSIGN_OR_RETURN(r.tokenizer, blockzoo::LoadTokenizerFile(tokenizer, r.chain->config().vocab_size));
    }
  } else {
    ASSIGN_OR_RETURN(blockzoo::LoadedModel loaded,
                     blockzoo::LoadModelFile(model, tokenizer.empty()
                                                        ? std::nullopt
                                                        : std::optional<std::string>(tokenizer)));
    ASSIGN_OR_RETURN(runtime::Chain chain, runtime::BuildChain(loaded.weights));
    r.chain = std::make_unique<runtime::Chain>(std::move(chain));
    r.tokenizer = std::move(loaded.tokenizer);
  }
  if (!r.tokenizer) {
    return absl::FailedPreconditionError(
        absl::StrCat(model, ": no tokenizer found; pass --tokenizer"));
  }
  return r;
}

}  // namespace

int RunGenerate() {
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (model_path.empty()) {
    std::fprintf(stderr, "blockserve generate: --model is required\n");
    return 2;
  }
  auto loaded = LoadForGenerate(model_path, absl::GetFlag(FLAGS_zoo), absl::GetFlag(FLAGS_tokenizer));
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(loaded.status().message()).c_str());
    return 1;
  }
  const runtime::Tokenizer& tok = *loaded->tokenizer;
  const runtime::Chain* chain = loaded->chain.get();
  const int threads = absl::GetFlag(FLAGS_threads);
  // The server's engine and executor, one model, stepped on this thread.
  scheduler::EngineOptions opt;
  opt.threads = threads > 0 ? threads : runtime::DefaultThreadCount();
  opt.kv_page_size = runtime::BlockOptions{}.kv_page_size;  // the blocks were built with it
  opt.scheduler.max_running = 1;
  std::vector<scheduler::EngineModel> models;
  models.push_back(scheduler::ChainModel(model_path, *chain, loaded->adapter));
  scheduler::Engine engine(opt, std::move(models));

  scheduler::RequestSpec req;
  req.prompt = tok.Encode(absl::GetFlag(FLAGS_prompt), /*add_bos=*/true);
  if (req.prompt.empty()) req.prompt.push_back(0);
  req.max_tokens = absl::GetFlag(FLAGS_max_tokens);  // the context ends it sooner
  req.sampling.temperature = static_cast<float>(absl::GetFlag(FLAGS_temperature));
  req.sampling.top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  req.sampling.top_k = absl::GetFlag(FLAGS_top_k);
  req.sampling.seed = absl::GetFlag(FLAGS_seed);
  for (int32_t id : {tok.bos_id(), tok.eos_id()}) {
    if (id >= 0) req.stop_tokens.push_back(id);
  }
  // Echo the prompt (every token after the first, as llama2.c prints it).
  for (size_t i = 1; i < req.prompt.size(); ++i) PrintPiece(tok.Decode(req.prompt[i - 1], req.prompt[i]));
  int32_t prev = req.prompt.back();
  const auto t0 = std::chrono::steady_clock::now();
  auto result = scheduler::RunToCompletion(engine, {req}, [&](int, int32_t id) {
    PrintPiece(tok.Decode(prev, id));
    std::fflush(stdout);
    prev = id;
  });
  std::printf("\n");
  std::fflush(stdout);
  if (!result.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(result.status().message()).c_str());
    return 1;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto& r = (*result)[0];
  if (r.finish == scheduler::Finish::kError) {
    std::fprintf(stderr, "error: %s\n", r.error.c_str());
    return 1;
  }
  std::fprintf(stderr, "%zu tokens in %.3f s (%.1f tok/s), finish: %s, cpu (%d threads)\n",
               r.tokens.size(), secs, r.tokens.size() / secs, scheduler::FinishName(r.finish),
               opt.threads);
  return 0;
}

int RunDevices() {
  for (const auto& d : runtime::ListDevices()) {
    std::printf("%s: %s\n", d.kind == runtime::DeviceKind::kCpu ? "cpu" : "cuda",
                d.description.c_str());
  }
  const runtime::BuildInfo build = runtime::GetBuildInfo();
  std::printf("build: %s, %s\n",
              build.build_type.empty() ? "no build type" : build.build_type.c_str(),
              build.optimized ? "optimised"
                              : "NOT optimised (slow: configure a RelWithAsserts or Release build)");
  return 0;
}

}  // namespace blockserve::server
