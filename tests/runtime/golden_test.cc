// The real trained stories260K model reproduces llama2.c's reference outputs token for token,
// from the llama2.c checkpoint and from the GGUF copy; first-position logits within 1e-4.
#include <fstream>

#include <nlohmann/json.hpp>

#include "blockzoo/importer.h"
#include "blockzoo/model_loader.h"
#include "blockzoo/zoo_model.h"
#include "runtime/chain.h"
#include "scheduler/run_to_completion.h"
#include "tests/testing/hf_export.h"
#include "tests/testing/test_util.h"

namespace blockserve {
namespace {

using blockserve::testing::IsOk;

struct Fixture {
  std::unique_ptr<runtime::Chain> chain;
  std::unique_ptr<runtime::Tokenizer> tokenizer;
  std::unique_ptr<testing::TempDir> tmp;  // zoo variants: the zoo (and HF export)
};

std::unique_ptr<Fixture> Load(const std::string& path, runtime::BlockOptions opt = {}) {
  auto m = blockzoo::LoadModelFile(path, std::nullopt);
  EXPECT_THAT(m, IsOk());
  if (!m.ok()) return nullptr;
  auto c = runtime::BuildChain(m->weights, opt);
  EXPECT_THAT(c, IsOk());
  if (!c.ok()) return nullptr;
  auto fx = std::make_unique<Fixture>();
  fx->chain = std::make_unique<runtime::Chain>(std::move(*c));
  fx->tokenizer = std::move(m->tokenizer);
  return fx;
}

// `variant`: "llama2c" | "gguf" (the files) or "zoo-llama2c" | "zoo-gguf" | "zoo-hf" |
// "zoo-hf-sharded" (imported into a fresh zoo, then run from it).
std::unique_ptr<Fixture> LoadVariant(const std::string& models, const std::string& variant) {
  const std::string bin = models + "/stories260K/stories260K.bin";
  const std::string gguf = models + "/stories260K-gguf/stories260K.gguf";
  if (variant == "llama2c") return Load(bin);
  if (variant == "gguf") return Load(gguf);
  auto tmp = std::make_unique<testing::TempDir>();
  std::string source = variant == "zoo-gguf" ? gguf : bin;
  if (variant == "zoo-hf" || variant == "zoo-hf-sharded") {
    auto m = blockzoo::LoadModelFile(bin, std::nullopt);
    EXPECT_THAT(m, IsOk());
    if (!m.ok()) return nullptr;
    source = tmp->path() + "/hf";
    EXPECT_THAT(testing::ExportHfLlama(m->weights, source, variant == "zoo-hf" ? 1 : 3,
                                       models + "/stories260K/tok512.model"),
                IsOk());
  }
  auto zoo = blockzoo::Zoo::Open(tmp->path() + "/zoo", /*create=*/true);
  EXPECT_THAT(zoo, IsOk());
  if (!zoo.ok()) return nullptr;
  blockzoo::ImportOptions opt;
  opt.name = "m";
  auto imported = blockzoo::ImportModel(**zoo, source, opt);
  EXPECT_THAT(imported, IsOk());
  if (!imported.ok()) return nullptr;
  auto loaded = blockzoo::LoadZooModel(**zoo, "m", {}, /*verify_hash=*/true);
  EXPECT_THAT(loaded, IsOk());
  if (!loaded.ok()) return nullptr;
  auto fx = std::make_unique<Fixture>();
  fx->chain = std::move(loaded->chain);
  fx->tokenizer = std::move(loaded->tokenizer);
  fx->tmp = std::move(tmp);
  return fx;
}

nlohmann::json Reference(const std::string& dir) {
  std::ifstream f(dir + "/stories260K/reference.json");
  return nlohmann::json::parse(f);
}

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto dir = blockserve::testing::ModelsDir();
    if (!dir) GTEST_SKIP() << "real models not found (../shared/models)";
    dir_ = *dir;
    fx_ = LoadVariant(dir_, GetParam());
    ASSERT_NE(fx_, nullptr);
  }
  std::string dir_;
  std::unique_ptr<Fixture> fx_;
};

TEST_P(GoldenTest, EveryReferenceCaseTokenForToken) {
  scheduler::EngineOptions opt;
  opt.threads = 2;
  std::vector<scheduler::EngineModel> models;
  models.push_back(scheduler::ChainModel("stories260K", *fx_->chain));
  scheduler::Engine engine(opt, std::move(models));
  const auto ref = Reference(dir_);
  int checked = 0;
  for (const auto& c : ref["cases"]) {
    scheduler::RequestSpec req;
    req.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(fx_->tokenizer->Encode(c["name"] == "greedy_once_upon_a_time_n64"
                                               ? "Once upon a time"
                                           : c["name"] == "greedy_tom_and_his_dog_n64"
                                               ? "Tom and his dog"
                                               : "",
                                           true),
              req.prompt);
    req.max_tokens = c["steps"].get<int>() - static_cast<int>(req.prompt.size()) + 1;
    req.stop_tokens = {1};  // llama2.c stops on BOS
    const std::string name = c["name"];
    if (name.rfind("sampled", 0) == 0) {
      req.sampling.temperature = 1.0f;
      req.sampling.top_p = 0.9f;
      req.sampling.seed = 133742;
    }
    auto out = scheduler::RunToCompletion(engine, {req});
    ASSERT_THAT(out, IsOk());
    EXPECT_EQ((*out)[0].tokens, c["generated_ids"].get<std::vector<int32_t>>()) << name;
    // The text, as llama2.c prints it (every token after position 0).
    const auto all = c["tokens"].get<std::vector<int32_t>>();
    std::string text;
    for (size_t i = 1; i < all.size(); ++i) text += fx_->tokenizer->Decode(all[i - 1], all[i]);
    EXPECT_EQ(text + "\n", c["stdout"].get<std::string>()) << name;
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST_P(GoldenTest, FirstPositionLogitsWithin1e4) {
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  const auto ref = Reference(dir_);
  const int vocab = fx_->chain->config().vocab_size;
  runtime::SeqId seq = 100;
  for (const auto& c : ref["cases"]) {
    if (c["top5_logits_first_positions"].is_null()) continue;
    const auto tokens = c["tokens"].get<std::vector<int32_t>>();
    const auto& positions = c["top5_logits_first_positions"];
    runtime::Batch batch;
    batch.Add(++seq, 0, tokens.data(), static_cast<int>(positions.size()),
              runtime::SeqSpan::Logits::kAll);
    ASSERT_THAT(fx_->chain->Forward(batch, ctx), IsOk());
    for (const auto& p : positions) {
      const int pos = p["pos"];
      const float* logits = batch.logits.data() + static_cast<size_t>(pos) * vocab;
      for (const auto& pair : p["top5"]) {
        EXPECT_NEAR(logits[pair[0].get<int>()], pair[1].get<double>(), 1e-4)
            << c["name"] << " pos " << pos << " token " << pair[0];
      }
      EXPECT_EQ(runtime::Argmax(logits, vocab), p["top5"][0][0].get<int>());
    }
    fx_->chain->ReleaseSequence(seq);
  }
}

INSTANTIATE_TEST_SUITE_P(Formats, GoldenTest,
                         ::testing::Values("llama2c", "gguf", "zoo-llama2c", "zoo-gguf", "zoo-hf",
                                           "zoo-hf-sharded"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& c : n) c = c == '-' ? '_' : c;
                           return n;
                         });

TEST(Golden, HalfPrecisionWeightsStayClose) {
  BS_REQUIRE_MODELS(dir);
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  auto f32 = Load(dir + "/stories260K/stories260K.bin");
  for (runtime::DType dt : {runtime::DType::kF16, runtime::DType::kBF16}) {
    runtime::BlockOptions opt;
    opt.weight_dtype = dt;
    auto half = Load(dir + "/stories260K/stories260K.bin", opt);
    ASSERT_NE(half, nullptr);
    EXPECT_LT(half->chain->weight_bytes(), f32->chain->weight_bytes() * 6 / 10);
    const std::vector<int32_t> toks = {1, 403, 407, 261, 378};
    runtime::Batch a, b;
    a.Add(1, 0, toks.data(), 5, runtime::SeqSpan::Logits::kAll);
    b.Add(1, 0, toks.data(), 5, runtime::SeqSpan::Logits::kAll);
    ASSERT_THAT(f32->chain->Forward(a, ctx), IsOk());
    ASSERT_THAT(half->chain->Forward(b, ctx), IsOk());
    f32->chain->ReleaseSequence(1);
    half->chain->ReleaseSequence(1);
    for (int r = 0; r < 5; ++r) {
      EXPECT_EQ(runtime::Argmax(a.logits.data() + r * 512, 512),
                runtime::Argmax(b.logits.data() + r * 512, 512));
    }
    for (size_t i = 0; i < a.logits.size(); ++i) {
      ASSERT_NEAR(a.logits[i], b.logits[i], dt == runtime::DType::kF16 ? 0.05 : 0.5);
    }
  }
}

}  // namespace
}  // namespace blockserve
