// The block zoo on real files: dedup, exact byte accounting, derive, verify, gc, rm, hostile
// input, concurrency, and an import killed (SIGKILL) at random points.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

#include "blockzoo/derive.h"
#include "blockzoo/importer.h"
#include "blockzoo/model_loader.h"
#include "blockzoo/sha256.h"
#include "blockzoo/zoo.h"
#include "blockzoo/zoo_model.h"
#include "runtime/chain.h"
#include "runtime/device.h"
#include "runtime/sampler.h"
#include "tests/testing/test_util.h"

namespace blockserve::blockzoo {
namespace {

using ::testing::HasSubstr;
using testing::IsOk;
using testing::StatusIs;
namespace fs = std::filesystem;

std::unique_ptr<Zoo> NewZoo(const std::string& dir) {
  auto z = Zoo::Open(dir, /*create=*/true);
  EXPECT_THAT(z, IsOk());
  return z.ok() ? std::move(*z) : nullptr;
}

absl::StatusOr<ImportResult> Import(const Zoo& zoo, const std::string& source,
                                    const std::string& name) {
  ImportOptions opt;
  opt.name = name;
  return ImportModel(zoo, source, opt);
}

std::string Bin(const std::string& models) { return models + "/stories260K/stories260K.bin"; }

// Greedy tokens of `name` for a fixed prompt.
std::vector<int32_t> Greedy(const Zoo& zoo, const std::string& name, int n) {
  auto m = LoadZooModel(zoo, name, {}, /*verify_hash=*/true);
  EXPECT_THAT(m, IsOk());
  if (!m.ok()) return {};
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  std::vector<int32_t> toks = m->tokenizer->Encode("Once upon a time", true);
  std::vector<int32_t> out;
  runtime::Batch b;
  b.Add(1, 0, toks.data(), static_cast<int>(toks.size()));
  int pos = static_cast<int>(toks.size());
  for (int i = 0; i < n; ++i) {
    EXPECT_THAT(m->chain->Forward(b, ctx), IsOk());
    const int32_t next = runtime::Argmax(b.logits.data(), m->chain->config().vocab_size);
    out.push_back(next);
    b.Clear();
    b.Add(1, pos++, &next, 1);
  }
  return out;
}

TEST(Zoo, IdenticalBlocksAreStoredOnce) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  auto a = Import(*zoo, Bin(models), "a");
  ASSERT_THAT(a, IsOk());
  EXPECT_EQ(a->blocks_written, 12);
  // The GGUF copy holds the same f32 tensors: every block is already there.
  auto b = Import(*zoo, models + "/stories260K-gguf/stories260K.gguf", "b");
  ASSERT_THAT(b, IsOk());
  EXPECT_EQ(b->blocks_written, 0);
  EXPECT_EQ(b->blocks_shared, 12);
  for (size_t i = 0; i < a->manifest.chain.size(); ++i) {
    EXPECT_EQ(a->manifest.chain[i].block, b->manifest.chain[i].block);
  }
  auto s = zoo->Stats();
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->models, 2);
  EXPECT_EQ(s->blocks, 12);
  EXPECT_EQ(s->logical_bytes, 2 * s->physical_bytes);
  EXPECT_EQ(Greedy(*zoo, "a", 20), Greedy(*zoo, "b", 20));
  // Importing under an existing name is refused, and leaves the zoo as it was.
  EXPECT_THAT(Import(*zoo, Bin(models), "a").status(), StatusIs(absl::StatusCode::kAlreadyExists, ""));
}

TEST(Zoo, EightPartialFineTunesStoreOnlyTheirChangedBlocks) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  ASSERT_THAT(Import(*zoo, Bin(models), "base"), IsOk());
  auto base = zoo->GetManifest("base");
  ASSERT_THAT(base, IsOk());
  const uint64_t base_bytes = base->bytes();
  // stories260K: 5 layers; the top 2 (3 and 4) change: attn 3, ffn 3, attn 4, ffn 4.
  uint64_t changed_bytes = 0;
  for (const ChainEntry& e : base->chain) {
    if (e.layer >= 3) changed_bytes += e.bytes;
  }
  for (int i = 0; i < 8; ++i) {
    DeriveOptions opt;
    opt.base = "base";
    opt.name = "ft" + std::to_string(i);
    opt.top_layers = 2;
    opt.rel_norm = 0.05;
    opt.seed = 100 + i;
    auto r = DeriveModel(*zoo, opt);
    ASSERT_THAT(r, IsOk());
    EXPECT_EQ(r->blocks_written, 4);
    EXPECT_EQ(r->blocks_shared, 8);
    EXPECT_TRUE(r->manifest.synthetic);
    EXPECT_EQ(r->manifest.parent, "base");
    EXPECT_EQ(r->manifest.provenance["seed"], 100 + i);
  }
  auto s = zoo->Stats();
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->models, 9);
  EXPECT_EQ(s->blocks, 12 + 8 * 4);
  EXPECT_EQ(s->logical_bytes, 9 * base_bytes);
  EXPECT_EQ(s->physical_bytes, base_bytes + 8 * changed_bytes);
  // stories260K f32 (dim 64, 4 of 8 kv heads, ffn 172): per layer attn 49,408 + ffn 132,352
  // tensor bytes; layers 3-4 with their four safetensors headers (2,176 bytes) are 365,696.
  EXPECT_EQ(changed_bytes, 2 * (49408 + 132352) + 2176u);
  EXPECT_EQ(base_bytes, 1177216u);
  EXPECT_EQ(s->physical_bytes, 1177216u + 8 * 365696u);
  // A derived model is a different model: its output differs from the base's somewhere.
  EXPECT_NE(Greedy(*zoo, "base", 40), Greedy(*zoo, "ft0", 40));
  // The same seed derives the same blocks (deterministic), so nothing new is written.
  DeriveOptions again;
  again.base = "base";
  again.name = "ft0-again";
  again.top_layers = 2;
  again.rel_norm = 0.05;
  again.seed = 100;
  auto r = DeriveModel(*zoo, again);
  ASSERT_THAT(r, IsOk());
  EXPECT_EQ(r->blocks_written, 0);
  auto v = zoo->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok()) << v->errors[0];
}

TEST(Zoo, VerifyNamesCorruptTruncatedAndMissingFiles) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  auto a = Import(*zoo, Bin(models), "a");
  ASSERT_THAT(a, IsOk());
  auto v = zoo->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok());
  EXPECT_EQ(v->blocks, 12);

  // One flipped byte in a tensor of attn 0: the hash check names the file.
  const std::string attn0 = zoo->BlockPath(a->manifest.chain[1].block);
  {
    std::fstream f(attn0, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(-5, std::ios::end);
    f.put('\x7f');
  }
  v = zoo->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  ASSERT_EQ(v->errors.size(), 1u);
  EXPECT_THAT(v->errors[0], HasSubstr(attn0));
  EXPECT_THAT(v->errors[0], HasSubstr("corrupt"));
  EXPECT_THAT(LoadZooModel(*zoo, "a", {}, /*verify_hash=*/true).status(),
              StatusIs(absl::StatusCode::kDataLoss, ""));

  // Truncated block: an error naming the file (never a crash), on verify and on load.
  const std::string ffn0 = zoo->BlockPath(a->manifest.chain[2].block);
  fs::resize_file(ffn0, fs::file_size(ffn0) - 100);
  auto loaded = LoadZooModel(*zoo, "a", {}, /*verify_hash=*/false);
  EXPECT_FALSE(loaded.ok());
  EXPECT_THAT(std::string(loaded.status().message()), HasSubstr(ffn0));

  // Missing block.
  const std::string head = zoo->BlockPath(a->manifest.chain.back().block);
  fs::remove(head);
  v = zoo->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  // attn 0 (hash), ffn 0 (size against the manifest, and unreadable), head (missing).
  EXPECT_EQ(v->errors.size(), 4u);
  bool named_missing = false, named_ffn = false;
  for (const auto& e : v->errors) {
    named_missing |= e.find("is missing") != std::string::npos;
    named_ffn |= e.find(ffn0) != std::string::npos;
  }
  EXPECT_TRUE(named_missing);
  EXPECT_TRUE(named_ffn);
}

TEST(Zoo, HostileManifestsAndNamesAreRejected) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  ASSERT_THAT(Import(*zoo, Bin(models), "a"), IsOk());
  const std::string good = testing::ReadFile(zoo->ManifestPath("a"));
  EXPECT_FALSE(zoo->GetManifest("../a").ok());
  EXPECT_FALSE(zoo->GetManifest("").ok());
  EXPECT_THAT(Import(*zoo, Bin(models), "../escape").status(),
              StatusIs(absl::StatusCode::kInvalidArgument, ""));
  auto write = [&](const std::string& name, const std::string& text) {
    std::ofstream(zoo->ManifestPath(name)) << text;
  };
  struct Case {
    std::string from, to, expect;
  };
  const auto first_block = good.find("\"block\": \"") + 10;
  const std::string id = good.substr(first_block, 64);
  const std::vector<Case> cases = {
      {id, "../../../../etc/passwd", "chain[0].block"},
      {"\"n_layers\": 5", "\"n_layers\": 99999", "n_layers"},
      {"\"n_layers\": 5", "\"n_layers\": \"5\"", "n_layers"},
      {"\"dim\": 64", "\"dim\": -64", "dim"},
      {"\"bytes\": ", "\"bytes\": -", "bytes"},
      {"\"kind\": \"embed\"", "\"kind\": \"attn\"", "chain[0].kind"},
      {"\"format\": \"blockserve-model\"", "\"format\": \"other\"", "format"},
  };
  for (const Case& c : cases) {
    std::string text = good;
    const size_t at = text.find(c.from);
    ASSERT_NE(at, std::string::npos) << c.from;
    text.replace(at, c.from.size(), c.to);
    write("a", text);
    auto m = zoo->GetManifest("a");
    ASSERT_FALSE(m.ok()) << c.to;
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(zoo->ManifestPath("a"))) << c.to;
    EXPECT_THAT(std::string(m.status().message()), HasSubstr(c.expect)) << c.to;
  }
  write("a", good.substr(0, good.size() / 2));
  EXPECT_THAT(zoo->GetManifest("a").status(), StatusIs(absl::StatusCode::kInvalidArgument, ""));
  write("a", good);
  EXPECT_THAT(zoo->GetManifest("a"), IsOk());
}

TEST(Zoo, RmAndGcKeepEveryReferencedBlock) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  ASSERT_THAT(Import(*zoo, Bin(models), "base"), IsOk());
  DeriveOptions opt;
  opt.base = "base";
  opt.name = "ft";
  opt.top_layers = 1;
  ASSERT_THAT(DeriveModel(*zoo, opt), IsOk());
  // A leftover of a dead writer.
  fs::create_directories(tmp.path() + "/blocks/ab");
  std::ofstream(tmp.path() + "/blocks/ab/.tmp-1-0-partial.safetensors") << "partial";
  {
    auto lock = zoo->LockForWrite();
    ASSERT_THAT(lock, IsOk());
    auto gc = zoo->Gc(*lock);
    ASSERT_THAT(gc, IsOk());
    EXPECT_EQ(gc->blocks_removed, 0);
    EXPECT_EQ(gc->temporaries_removed, 1);
    ASSERT_THAT(zoo->RemoveModel(*lock, "base"), IsOk());
    EXPECT_THAT(zoo->RemoveModel(*lock, "base"), StatusIs(absl::StatusCode::kNotFound, ""));
    gc = zoo->Gc(*lock);
    ASSERT_THAT(gc, IsOk());
    EXPECT_EQ(gc->blocks_removed, 2);  // only base's own attn 4 and ffn 4
  }
  auto v = zoo->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok());
  EXPECT_EQ(v->blocks, 12);
  EXPECT_EQ(Greedy(*zoo, "ft", 10).size(), 10u);
}

TEST(Zoo, ConcurrentImportsAndGcSerialiseAndReadersSeeOnlyCompleteModels) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  ASSERT_THAT(Import(*zoo, Bin(models), "base"), IsOk());
  std::atomic<bool> done{false};
  std::atomic<int> seen_incomplete{0};
  std::thread reader([&] {
    while (!done) {
      auto names = zoo->ListModels();
      if (!names.ok()) continue;
      for (const auto& n : *names) {
        auto m = zoo->GetManifest(n);
        if (!m.ok()) {
          ++seen_incomplete;
          continue;
        }
        for (const auto& e : m->chain) {
          if (!fs::exists(zoo->BlockPath(e.block))) ++seen_incomplete;
        }
      }
    }
  });
  std::thread gc([&] {
    while (!done) {
      auto lock = zoo->LockForWrite();
      if (lock.ok()) {
        EXPECT_THAT(zoo->Gc(*lock), IsOk());
      }
    }
  });
  for (int i = 0; i < 6; ++i) {
    DeriveOptions opt;
    opt.base = "base";
    opt.name = "ft" + std::to_string(i);
    opt.recipe = DeriveOptions::Recipe::kFull;
    opt.seed = i;
    ASSERT_THAT(DeriveModel(*zoo, opt), IsOk());
  }
  done = true;
  reader.join();
  gc.join();
  EXPECT_EQ(seen_incomplete, 0);
  auto v = zoo->Verify(nullptr);
  ASSERT_THAT(v, IsOk());
  EXPECT_TRUE(v->ok());
  EXPECT_EQ(v->models, 7);
}

// Kills an import with SIGKILL at many random moments (each into a fresh zoo, so every block is
// really written); after each, the zoo verifies clean and the model is either absent or complete
// and runnable. Then gc leaves nothing behind and a re-import succeeds.
TEST(Zoo, ImportKilledAtRandomPointsLeavesAValidZoo) {
  BS_REQUIRE_MODELS(models);
  testing::TempDir tmp;
  const std::string source = Bin(models);
  auto t0 = std::chrono::steady_clock::now();
  {
    auto probe = NewZoo(tmp.path() + "/probe");
    ASSERT_THAT(Import(*probe, source, "m"), IsOk());
  }
  const auto full_us = std::chrono::duration_cast<std::chrono::microseconds>(
                           std::chrono::steady_clock::now() - t0).count();
  const std::vector<int32_t> expect = [&] {
    auto z = Zoo::Open(tmp.path() + "/probe", false);
    return Greedy(**z, "m", 8);
  }();
  std::mt19937 rng(7);
  int complete = 0, absent = 0;
  for (int trial = 0; trial < 24; ++trial) {
    const std::string dir = tmp.path() + "/z" + std::to_string(trial);
    auto zoo = NewZoo(dir);
    const pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) _exit(Import(*zoo, source, "m").ok() ? 0 : 1);
    const int delay = std::uniform_int_distribution<int>(0, static_cast<int>(full_us * 1.5))(rng);
    std::this_thread::sleep_for(std::chrono::microseconds(delay));
    kill(pid, SIGKILL);
    int status = 0;
    waitpid(pid, &status, 0);
    auto v = zoo->Verify(nullptr);
    ASSERT_THAT(v, IsOk());
    ASSERT_TRUE(v->ok()) << "trial " << trial << ": " << v->errors[0];
    if (zoo->HasModel("m")) {
      ++complete;
      ASSERT_EQ(Greedy(*zoo, "m", 8), expect) << "trial " << trial;
    } else {
      ++absent;
    }
    {
      auto lock = zoo->LockForWrite();  // the dead writer's lock is gone with it
      ASSERT_THAT(lock, IsOk());
      ASSERT_THAT(zoo->Gc(*lock), IsOk());
    }
    v = zoo->Verify(nullptr);
    ASSERT_THAT(v, IsOk());
    EXPECT_TRUE(v->ok() && v->notes.empty()) << "trial " << trial;
    if (!zoo->HasModel("m")) {
      EXPECT_EQ(v->blocks, 0);
      ASSERT_THAT(Import(*zoo, source, "m"), IsOk());
      EXPECT_EQ(Greedy(*zoo, "m", 8), expect);
    }
  }
  EXPECT_GT(absent, 0);
  std::printf("kill test: %d complete, %d absent (one import takes %lld us)\n", complete, absent,
              static_cast<long long>(full_us));
}

TEST(Zoo, SentencePieceModelGivesTheSameIdsAsTok512Bin) {
  BS_REQUIRE_MODELS(models);
  auto bin = LoadTokenizerFile(models + "/stories260K/tok512.bin", 512);
  auto spm = LoadTokenizerFile(models + "/stories260K/tok512.model", 512);
  ASSERT_THAT(bin, IsOk());
  ASSERT_THAT(spm, IsOk());
  for (const char* text : {"Once upon a time", "Tom and his dog", "", "Lily said, \"Hi!\"\nThe end."}) {
    EXPECT_EQ((*bin)->Encode(text, true), (*spm)->Encode(text, true)) << text;
  }
  EXPECT_EQ((*bin)->bos_id(), (*spm)->bos_id());
  EXPECT_EQ((*bin)->eos_id(), (*spm)->eos_id());
}

}  // namespace
}  // namespace blockserve::blockzoo

namespace blockserve::blockzoo {
namespace {

// Derive works on any zoo model, including synthetic ones of other shapes and dtypes (f16 here,
// GQA 8:4): partial and LoRA variants share the base's blocks and run.
TEST(Zoo, DeriveWorksOnASyntheticF16Model) {
  testing::TempDir tmp;
  auto zoo = NewZoo(tmp.path());
  runtime::ModelConfig c;
  c.dim = 128;
  c.hidden_dim = 344;
  c.n_layers = 4;
  c.n_heads = 8;
  c.n_kv_heads = 4;
  c.vocab_size = 300;
  c.max_seq_len = 64;
  auto base = ImportSynthetic(*zoo, "synth", c, runtime::DType::kF16, 9, nullptr);
  ASSERT_THAT(base, IsOk());
  EXPECT_TRUE(base->manifest.synthetic);
  DeriveOptions p;
  p.base = "synth";
  p.name = "synth-ft";
  p.top_layers = 1;
  p.rel_norm = 0.1;
  ASSERT_THAT(DeriveModel(*zoo, p), IsOk());
  DeriveOptions l = p;
  l.name = "synth-lora";
  l.recipe = DeriveOptions::Recipe::kLora;
  l.lora_rank = 4;
  ASSERT_THAT(DeriveModel(*zoo, l), IsOk());
  auto s = zoo->Stats();
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(s->blocks, 10 + 2 + 4);  // base + ft's top layer + 4 LoRA blocks (wq, wv: attn only)
  runtime::CpuDevice cpu(2);
  runtime::ExecContext ctx(&cpu);
  std::vector<std::vector<float>> logits;
  for (const char* name : {"synth", "synth-ft", "synth-lora"}) {
    auto m = LoadZooModel(*zoo, name, {}, true);
    ASSERT_THAT(m, IsOk());
    EXPECT_EQ(m->manifest.chain[1].tensors.at("wq").dtype, runtime::DType::kF16);
    const std::vector<int32_t> toks = {1, 2, 3, 4};
    runtime::Batch b;
    b.Add(1, 0, toks.data(), 4, runtime::SeqSpan::Logits::kLast, m->adapter);
    ASSERT_THAT(m->chain->Forward(b, ctx), IsOk());
    for (float v : b.logits) ASSERT_TRUE(std::isfinite(v));
    logits.push_back(b.logits);
  }
  EXPECT_NE(logits[0], logits[1]);
  EXPECT_NE(logits[0], logits[2]);
}

}  // namespace
}  // namespace blockserve::blockzoo
