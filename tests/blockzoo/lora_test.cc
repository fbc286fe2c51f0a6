// LoRA adapters: a run-time adapter gives the logits of the same adapter merged into the
// weights; requests with different adapters (or none) batched together give exactly what each
// gives alone; PEFT adapters import onto HF-layout and llama2.c-layout bases alike.
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "blockzoo/derive.h"
#include "blockzoo/formats/peft.h"
#include "blockzoo/formats/safetensors.h"
#include "blockzoo/importer.h"
#include "blockzoo/model_loader.h"
#include "blockzoo/zoo.h"
#include "blockzoo/zoo_model.h"
#include "nlohmann/json.hpp"
#include "runtime/device.h"
#include "tests/testing/hf_export.h"
#include "tests/testing/test_util.h"

namespace blockserve::blockzoo {
namespace {

using runtime::Tensor;
using testing::IsOk;

const std::vector<int32_t> kTokens = {1, 403, 407, 261, 378, 290, 297, 274};

// Logits at every position of kTokens through `chain` with `adapter`.
std::vector<float> Logits(const runtime::Chain& chain, int32_t adapter) {
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  runtime::Batch b;
  b.Add(1, 0, kTokens.data(), static_cast<int>(kTokens.size()), runtime::SeqSpan::Logits::kAll,
        adapter);
  EXPECT_THAT(chain.Forward(b, ctx), IsOk());
  chain.ReleaseSequence(1);
  return b.logits;
}

std::vector<float> ZooLogits(const Zoo& zoo, const std::string& name) {
  auto m = LoadZooModel(zoo, name, {}, /*verify_hash=*/true);
  EXPECT_THAT(m, IsOk());
  if (!m.ok()) return {};
  return Logits(*m->chain, m->adapter);
}

double MaxDiff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) d = std::max(d, std::fabs(double(a[i]) - b[i]));
  return d;
}

DeriveOptions Lora(const std::string& name, int rank, uint64_t seed, bool merge) {
  DeriveOptions o;
  o.base = "base";
  o.name = name;
  o.recipe = DeriveOptions::Recipe::kLora;
  o.lora_rank = rank;
  o.lora_alpha = 2.0f * rank;
  o.lora_targets = {"wq", "wk", "wv", "wo", "w1", "w2", "w3"};
  o.rel_norm = 0.05;
  o.seed = seed;
  o.merge = merge;
  return o;
}

class LoraTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto dir = testing::ModelsDir();
    if (!dir) GTEST_SKIP() << "real models not found (../shared/models)";
    models_ = *dir;
    auto z = Zoo::Open(tmp_.path() + "/zoo", true);
    ASSERT_THAT(z, IsOk());
    zoo_ = std::move(*z);
    ImportOptions opt;
    opt.name = "base";
    ASSERT_THAT(ImportModel(*zoo_, models_ + "/stories260K/stories260K.bin", opt), IsOk());
  }
  testing::TempDir tmp_;
  std::string models_;
  std::unique_ptr<Zoo> zoo_;
};

TEST_F(LoraTest, RunTimeAdapterGivesTheMergedLogits) {
  for (int rank : {1, 4, 16}) {
    const std::string n = std::to_string(rank);
    auto l = DeriveModel(*zoo_, Lora("lora" + n, rank, 7 + rank, false));
    ASSERT_THAT(l, IsOk());
    EXPECT_EQ(l->blocks_written, 10);  // a LoRA block per attn and ffn block
    ASSERT_THAT(DeriveModel(*zoo_, Lora("merged" + n, rank, 7 + rank, true)), IsOk());
    const auto base = ZooLogits(*zoo_, "base");
    const auto lora = ZooLogits(*zoo_, "lora" + n);
    const auto merged = ZooLogits(*zoo_, "merged" + n);
    EXPECT_GT(MaxDiff(base, merged), 1e-2) << "the adapter must change the model";
    EXPECT_LT(MaxDiff(lora, merged), 1e-4) << "rank " << rank;
  }
  auto v = zoo_->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok());
}

TEST_F(LoraTest, AdaptersOfDifferentRanksInOneBatchGiveWhatEachGivesAlone) {
  ASSERT_THAT(DeriveModel(*zoo_, Lora("a", 2, 1, false)), IsOk());
  ASSERT_THAT(DeriveModel(*zoo_, Lora("b", 16, 2, false)), IsOk());
  // One chain of the base blocks, with both adapters attached under keys 1 and 2.
  auto base = LoadZooModel(*zoo_, "base", {}, false);
  ASSERT_THAT(base, IsOk());
  int32_t key = 1;
  for (const std::string name : {"a", "b"}) {
    auto m = zoo_->GetManifest(name);
    ASSERT_THAT(m, IsOk());
    for (size_t i = 0; i < m->chain.size(); ++i) {
      if (m->chain[i].lora.empty()) continue;
      auto adapter = LoadLora(*zoo_, m->chain[i], m->family, true);
      ASSERT_THAT(adapter, IsOk());
      ASSERT_THAT(base->chain->blocks()[i]->AttachAdapter(key, *adapter), IsOk());
    }
    ++key;
  }
  const runtime::Chain& chain = *base->chain;
  const int vocab = chain.config().vocab_size;
  const std::vector<int32_t> adapters = {1, 0, 2, 2, 1, 0};
  std::vector<std::vector<float>> alone;
  for (int32_t a : adapters) alone.push_back(Logits(chain, a));
  EXPECT_NE(alone[0], alone[1]);
  EXPECT_NE(alone[0], alone[2]);
  // Alone through the shared chain == through each model's own chain.
  EXPECT_EQ(alone[0], ZooLogits(*zoo_, "a"));
  EXPECT_EQ(alone[2], ZooLogits(*zoo_, "b"));
  EXPECT_EQ(alone[1], ZooLogits(*zoo_, "base"));
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  runtime::Batch b;
  for (size_t s = 0; s < adapters.size(); ++s) {
    b.Add(10 + s, 0, kTokens.data(), static_cast<int>(kTokens.size()),
          runtime::SeqSpan::Logits::kAll, adapters[s]);
  }
  ASSERT_THAT(chain.Forward(b, ctx), IsOk());
  const size_t per = kTokens.size() * vocab;
  for (size_t s = 0; s < adapters.size(); ++s) {
    const std::vector<float> got(b.logits.begin() + s * per, b.logits.begin() + (s + 1) * per);
    EXPECT_EQ(got, alone[s]) << "span " << s << " adapter " << adapters[s];
  }
  // A key attached nowhere leaves every block at its base weights.
  EXPECT_EQ(Logits(chain, 7), alone[1]);
}

// Writes a PEFT adapter (HF names and row order) with random factors for every projection.
void WritePeft(const std::string& dir, const runtime::ModelConfig& c, int rank, float alpha,
               std::map<std::string, Tensor>* hf_tensors) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const std::vector<std::pair<std::string, std::pair<int, int>>> modules = {
      {"self_attn.q_proj", {c.dim, c.dim}},   {"self_attn.k_proj", {c.dim, c.kv_dim()}},
      {"self_attn.v_proj", {c.dim, c.kv_dim()}}, {"self_attn.o_proj", {c.dim, c.dim}},
      {"mlp.gate_proj", {c.dim, c.hidden_dim}}, {"mlp.up_proj", {c.dim, c.hidden_dim}},
      {"mlp.down_proj", {c.hidden_dim, c.dim}}};
  for (int l = 0; l < c.n_layers; ++l) {
    for (const auto& [module, shape] : modules) {
      const auto [in, out] = shape;
      Tensor a = Tensor::Zeros(runtime::DType::kF32, {rank, in});
      Tensor b = Tensor::Zeros(runtime::DType::kF32, {out, rank});
      for (int64_t i = 0; i < a.numel(); ++i) a.mutable_data<float>()[i] = normal(rng) * 0.1f;
      for (int64_t i = 0; i < b.numel(); ++i) b.mutable_data<float>()[i] = normal(rng) * 0.02f;
      const std::string p = "base_model.model.model.layers." + std::to_string(l) + "." + module;
      (*hf_tensors)[p + ".lora_A.weight"] = a;
      (*hf_tensors)[p + ".lora_B.weight"] = b;
    }
  }
  std::map<std::string, const Tensor*> ordered;
  for (const auto& [n, t] : *hf_tensors) ordered[n] = &t;
  std::string bytes = SafetensorsHeader(ordered, {{"format", "pt"}});
  for (const auto& [n, t] : ordered) bytes.append(static_cast<const char*>(t->raw()), t->nbytes());
  std::ofstream(dir + "/adapter_model.safetensors", std::ios::binary) << bytes;
  nlohmann::json cfg = {{"peft_type", "LORA"},
                        {"r", rank},
                        {"lora_alpha", alpha},
                        {"target_modules", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                            "up_proj", "down_proj"}},
                        {"bias", "none"},
                        {"fan_in_fan_out", false},
                        {"base_model_name_or_path", "stories260K-hf"}};
  std::ofstream(dir + "/adapter_config.json") << cfg.dump(2);
}

TEST_F(LoraTest, PeftAdapterOnHfAndLlama2cBasesMatchesTheMergedModel) {
  auto loaded = LoadModelFile(models_ + "/stories260K/stories260K.bin", std::nullopt);
  ASSERT_THAT(loaded, IsOk());
  const runtime::ModelConfig& c = loaded->weights.config;
  const std::string hf_dir = tmp_.path() + "/hf", peft_dir = tmp_.path() + "/peft";
  ASSERT_THAT(testing::ExportHfLlama(loaded->weights, hf_dir, 1, ""), IsOk());
  std::map<std::string, Tensor> peft;
  const int rank = 4;
  const float alpha = 8.0f;
  WritePeft(peft_dir, c, rank, alpha, &peft);
  ImportOptions opt;
  opt.name = "hf";
  ASSERT_THAT(ImportModel(*zoo_, hf_dir, opt), IsOk());
  // Without --base, a PEFT directory is refused with a hint.
  opt.name = "oops";
  EXPECT_THAT(ImportModel(*zoo_, peft_dir, opt).status(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument, "--base"));
  opt.name = "hf-lora";
  auto r = ImportPeftAdapter(*zoo_, peft_dir, "hf", opt);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->blocks_written, 2 * c.n_layers);
  opt.name = "base-lora";
  ASSERT_THAT(ImportPeftAdapter(*zoo_, peft_dir, "base", opt), IsOk());

  // The merged reference, built in HF space: W + alpha/r * B A, exported and imported as a plain
  // model.
  runtime::ModelWeights merged = loaded->weights;  // llama2.c layout; merge via HF export below
  std::string merged_dir = tmp_.path() + "/hf-merged";
  {
    auto hf = LoadModelFile(models_ + "/stories260K/stories260K.bin", std::nullopt);
    ASSERT_THAT(testing::ExportHfLlama(hf->weights, merged_dir, 1, ""), IsOk());
    auto st = ReadSafetensors(merged_dir + "/model.safetensors");
    ASSERT_THAT(st, IsOk());
    std::map<std::string, Tensor> tensors = st->tensors;
    for (int l = 0; l < c.n_layers; ++l) {
      for (const char* module : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                 "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                 "mlp.down_proj"}) {
        const std::string w = "model.layers." + std::to_string(l) + "." + module + ".weight";
        const std::string p = "base_model.model.model.layers." + std::to_string(l) + "." + module;
        tensors[w] = MergeLora(tensors.at(w), peft.at(p + ".lora_A.weight"),
                               peft.at(p + ".lora_B.weight"), alpha / rank);
      }
    }
    std::map<std::string, const Tensor*> ordered;
    for (const auto& [n, t] : tensors) ordered[n] = &t;
    std::string bytes = SafetensorsHeader(ordered, {});
    for (const auto& [n, t] : ordered) bytes.append(static_cast<const char*>(t->raw()), t->nbytes());
    st = absl::InternalError("released");  // unmap before overwriting
    std::ofstream(merged_dir + "/model.safetensors", std::ios::binary | std::ios::trunc) << bytes;
  }
  opt.name = "hf-merged";
  ASSERT_THAT(ImportModel(*zoo_, merged_dir, opt), IsOk());
  const auto ref = ZooLogits(*zoo_, "hf-merged");
  EXPECT_GT(MaxDiff(ref, ZooLogits(*zoo_, "hf")), 1e-2);
  EXPECT_LT(MaxDiff(ZooLogits(*zoo_, "hf-lora"), ref), 1e-4);
  EXPECT_LT(MaxDiff(ZooLogits(*zoo_, "base-lora"), ref), 1e-4);
  auto m = zoo_->GetManifest("base-lora");
  ASSERT_THAT(m, IsOk());
  EXPECT_EQ(m->parent, "base");
  EXPECT_EQ(m->provenance["format"], "peft");
}

}  // namespace
}  // namespace blockserve::blockzoo

namespace blockserve::blockzoo {
namespace {

// adapter_config.json from someone else: wrong types are errors naming the field, never an
// exception (use_rslora: "yes" once threw out of json::value and killed the importer).
TEST(PeftConfig, WrongTypesAreErrorsNamingTheField) {
  const std::string base = R"("peft_type": "LORA", "r": 4, "lora_alpha": 8)";
  for (const auto& [extra, field] : std::vector<std::pair<std::string, std::string>>{
           {R"("use_rslora": "yes")", "use_rslora"},
           {R"("fan_in_fan_out": 1)", "fan_in_fan_out"},
           {R"("bias": 3)", "bias"},
           {R"("r": "4")", "r"}}) {
    PeftAdapter a;
    const absl::Status s = ParsePeftConfig("{" + base + ", " + extra + "}", "adapter_config.json", &a);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << extra;
    EXPECT_NE(s.message().find(field), std::string::npos) << s.message();
  }
  PeftAdapter ok;
  EXPECT_TRUE(ParsePeftConfig("{" + base + R"(, "use_rslora": true})", "c.json", &ok).ok());
  EXPECT_FLOAT_EQ(ok.alpha, 16.0f);  // rsLoRA: alpha * sqrt(r)
}

}  // namespace
}  // namespace blockserve::blockzoo
