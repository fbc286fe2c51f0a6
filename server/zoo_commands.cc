#include "server/zoo_commands.h"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <map>
#include <set>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "runtime/status_macros.h"
#include "blockzoo/derive.h"
#include "blockzoo/equiv.h"
#include "blockzoo/file_util.h"
#include "blockzoo/importer.h"
#include "blockzoo/synthetic.h"
#include "blockzoo/zoo.h"

ABSL_FLAG(std::string, zoo, "", "block zoo directory");
ABSL_FLAG(std::string, name, "", "model name (import: default from the source; derive: the new model)");
ABSL_FLAG(std::string, tokenizer, "", "import: tokenizer file overriding the source's own");
ABSL_FLAG(bool, replace, false, "import/derive: replace a model of the same name");
ABSL_FLAG(std::string, from, "", "derive: the base model");
ABSL_FLAG(std::string, recipe, "partial", "derive: partial | full | lora");
ABSL_FLAG(int, lora_rank, 8, "derive lora: rank");
ABSL_FLAG(double, lora_alpha, 16.0, "derive lora: alpha (delta = alpha / rank * B A)");
ABSL_FLAG(std::string, lora_targets, "wq,wv", "derive lora: projections (wq wk wv wo w1 w2 w3)");
ABSL_FLAG(bool, merge, false, "derive lora: write W + delta as new blocks instead of LoRA blocks");
ABSL_FLAG(std::string, calibration, "", "equiv: calibration text file (paragraphs); default built in");
ABSL_FLAG(std::string, heldout, "", "equiv: held-out text file (paragraphs); default built in");
ABSL_FLAG(bool, skips, true, "equiv: also evaluate skipping each attn/ffn sub-layer");
ABSL_FLAG(bool, include_self, false, "equiv: also score each block against itself (must be 1)");
ABSL_FLAG(std::string, policy, "equivalent", "resolve: exact | equivalent");
ABSL_FLAG(double, threshold, 0.99, "resolve: minimum block score of a substitute or skip");
ABSL_FLAG(bool, allow_skip, false, "resolve: allow dropping sub-layers that pass");
ABSL_FLAG(double, min_top1, 0.0, "resolve: minimum whole-model top-1 agreement");
ABSL_FLAG(std::string, shape, "llama110m",
          "synth: llama110m (dim 768, 12 layers, 12 heads, ffn 2048, vocab 32000), medium "
          "(dim 512, 8 layers, ffn 1376, vocab 8000) or small (dim 256, 4 layers, 8 heads, "
          "4 kv heads, ffn 688, vocab 512)");
ABSL_FLAG(std::string, dtype, "f32", "synth: weight dtype f32 | f16 | bf16");
ABSL_FLAG(std::string, base, "", "import of a PEFT adapter directory: the zoo model it adapts");
ABSL_FLAG(int, layers, 1, "derive partial: perturb the blocks of the top K layers");
ABSL_FLAG(std::string, kinds, "attn,ffn", "derive partial: block kinds to perturb");
ABSL_FLAG(double, rel_norm, 0.01, "derive: relative Frobenius norm of each perturbation");
ABSL_FLAG(uint64_t, seed, 1, "derive: random seed");

namespace blockserve::server {
namespace {

using blockzoo::Zoo;

int Fail(const absl::Status& s) {
  std::fprintf(stderr, "error: %s\n", std::string(s.message()).c_str());
  return 1;
}

std::string Bytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / 1073741824.0);
  if (b >= (uint64_t{1} << 20)) return absl::StrFormat("%.2f MiB", b / 1048576.0);
  if (b >= 1024) return absl::StrFormat("%.1f KiB", b / 1024.0);
  return absl::StrCat(b, " B");
}

// Progress on stderr: rewritten in place on a terminal, a line every 10% otherwise.
blockzoo::ProgressFn Progress(const std::string& job) {
  const bool tty = isatty(2);
  auto last = std::make_shared<std::pair<std::chrono::steady_clock::time_point, int>>(
      std::chrono::steady_clock::time_point{}, -1);
  return [job, tty, last](const std::string& what, uint64_t done, uint64_t total) {
    const int pct = total == 0 ? 100 : static_cast<int>(100.0 * done / total);
    const auto now = std::chrono::steady_clock::now();
    if (tty) {
      if (pct != 100 && now - last->first < std::chrono::milliseconds(100)) return;
      std::fprintf(stderr, "\r%s: %3d%% (%s %s of %s)%s", job.c_str(), pct, what.c_str(),
                   what == "bytes" ? Bytes(done).c_str() : std::to_string(done).c_str(),
                   what == "bytes" ? Bytes(total).c_str() : std::to_string(total).c_str(),
                   pct == 100 ? "\n" : "");
    } else {
      if (pct / 10 == last->second / 10 && pct != 100) return;
      if (pct == 100 && last->second == 100) return;
      std::fprintf(stderr, "%s: %d%%\n", job.c_str(), pct);
    }
    last->first = now;
    last->second = pct;
  };
}

absl::StatusOr<std::unique_ptr<Zoo>> OpenZoo(bool create) {
  const std::string dir = absl::GetFlag(FLAGS_zoo);
  if (dir.empty()) return absl::InvalidArgumentError("--zoo DIR is required");
  return Zoo::Open(dir, create);
}

int Import(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: blockzoo import --zoo DIR SOURCE [--name N --tokenizer F]\n");
    return 2;
  }
  auto zoo = OpenZoo(/*create=*/true);
  if (!zoo.ok()) return Fail(zoo.status());
  blockzoo::ImportOptions opt;
  opt.name = absl::GetFlag(FLAGS_name);
  if (!absl::GetFlag(FLAGS_tokenizer).empty()) opt.tokenizer = absl::GetFlag(FLAGS_tokenizer);
  opt.replace = absl::GetFlag(FLAGS_replace);
  opt.progress = Progress("import " + args[0]);
  const std::string base = absl::GetFlag(FLAGS_base);
  auto r = base.empty() ? blockzoo::ImportModel(**zoo, args[0], opt)
                        : blockzoo::ImportPeftAdapter(**zoo, args[0], base, opt);
  if (!r.ok()) return Fail(r.status());
  std::printf("imported %s: %zu blocks (%d new, %d already in the zoo), %s, tokenizer %s\n",
              r->manifest.name.c_str(), r->manifest.chain.size(), r->blocks_written,
              r->blocks_shared, Bytes(r->manifest.bytes()).c_str(),
              r->manifest.tokenizer.empty() ? "none" : r->manifest.tokenizer_format.c_str());
  return 0;
}

// How many models reference each block id.
std::map<std::string, int> BlockUsers(const Zoo& zoo) {
  std::map<std::string, int> users;
  auto names = zoo.ListModels();
  if (!names.ok()) return users;
  for (const std::string& n : *names) {
    auto m = zoo.GetManifest(n);
    if (!m.ok()) continue;
    std::set<std::string> ids;
    for (const auto& e : m->chain) ids.insert(e.block);
    for (const auto& id : ids) ++users[id];
  }
  return users;
}

int List() {
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  auto names = (*zoo)->ListModels();
  if (!names.ok()) return Fail(names.status());
  std::printf("%-32s %-24s %7s %12s %s\n", "MODEL", "PARENT", "BLOCKS", "BYTES", "SOURCE");
  for (const std::string& n : *names) {
    auto m = (*zoo)->GetManifest(n);
    if (!m.ok()) {
      std::printf("%-32s (unreadable: %s)\n", n.c_str(), std::string(m.status().message()).c_str());
      continue;
    }
    const std::string source =
        m->synthetic ? absl::StrCat("synthetic (", m->provenance.value("recipe", "?"), ")")
                     : m->provenance.value("format", "?");
    std::printf("%-32s %-24s %7zu %12s %s\n", n.c_str(), m->parent.empty() ? "-" : m->parent.c_str(),
                m->chain.size(), Bytes(m->bytes()).c_str(), source.c_str());
  }
  return 0;
}

int Show(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: blockzoo show --zoo DIR NAME\n");
    return 2;
  }
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  auto m = (*zoo)->GetManifest(args[0]);
  if (!m.ok()) return Fail(m.status());
  const auto users = BlockUsers(**zoo);
  std::printf("model:     %s%s\n", m->name.c_str(), m->synthetic ? " (synthetic)" : "");
  std::printf("parent:    %s\n", m->parent.empty() ? "-" : m->parent.c_str());
  std::printf("family:    %s\n", m->family.DebugString().c_str());
  std::printf("tokenizer: %s %s\n", m->tokenizer_format.c_str(), m->tokenizer.c_str());
  std::printf("provenance: %s\n", m->provenance.dump().c_str());
  std::printf("chain (%zu blocks, %s):\n", m->chain.size(), Bytes(m->bytes()).c_str());
  for (const auto& e : m->chain) {
    const std::string pos = e.layer >= 0 ? absl::StrCat(runtime::BlockKindName(e.kind), " ", e.layer)
                                         : runtime::BlockKindName(e.kind);
    auto it = users.find(e.block);
    std::printf("  %-10s %s %10s  shared by %d model(s)\n", pos.c_str(), e.block.c_str(),
                Bytes(e.bytes).c_str(), it == users.end() ? 0 : it->second);
  }
  return 0;
}

int Stats() {
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  auto s = (*zoo)->Stats();
  if (!s.ok()) return Fail(s.status());
  std::printf("models:         %d\n", s->models);
  std::printf("blocks:         %d\n", s->blocks);
  std::printf("logical bytes:  %llu (%s, summed over models)\n",
              static_cast<unsigned long long>(s->logical_bytes), Bytes(s->logical_bytes).c_str());
  std::printf("physical bytes: %llu (%s, unique blocks)\n",
              static_cast<unsigned long long>(s->physical_bytes), Bytes(s->physical_bytes).c_str());
  std::printf("ratio:          %.2fx\n", s->ratio());
  return 0;
}

int Verify() {
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  auto r = (*zoo)->Verify(Progress("verify"));
  if (!r.ok()) return Fail(r.status());
  for (const auto& n : r->notes) std::printf("note: %s\n", n.c_str());
  for (const auto& e : r->errors) std::printf("ERROR: %s\n", e.c_str());
  std::printf("%s: %d models, %d blocks, %d tokenizers checked, %zu errors\n",
              r->ok() ? "ok" : "CORRUPT", r->models, r->blocks, r->tokenizers, r->errors.size());
  return r->ok() ? 0 : 1;
}

int Gc() {
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  auto lock = (*zoo)->LockForWrite();
  if (!lock.ok()) return Fail(lock.status());
  auto r = (*zoo)->Gc(*lock);
  if (!r.ok()) return Fail(r.status());
  std::printf("removed %d blocks, %d tokenizers, %d temporary files; freed %s\n", r->blocks_removed,
              r->tokenizers_removed, r->temporaries_removed, Bytes(r->bytes_freed).c_str());
  return 0;
}

int Remove(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: blockzoo rm --zoo DIR NAME\n");
    return 2;
  }
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  auto lock = (*zoo)->LockForWrite();
  if (!lock.ok()) return Fail(lock.status());
  if (auto s = (*zoo)->RemoveModel(*lock, args[0]); !s.ok()) return Fail(s);
  std::printf("removed %s (run gc to free blocks no other model uses)\n", args[0].c_str());
  return 0;
}

int Derive() {
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  blockzoo::DeriveOptions opt;
  opt.base = absl::GetFlag(FLAGS_from);
  opt.name = absl::GetFlag(FLAGS_name);
  if (opt.base.empty() || opt.name.empty()) {
    std::fprintf(stderr, "usage: blockzoo derive --zoo DIR --from BASE --name NEW [--recipe ...]\n");
    return 2;
  }
  const std::string recipe = absl::GetFlag(FLAGS_recipe);
  if (recipe == "partial") {
    opt.recipe = blockzoo::DeriveOptions::Recipe::kPartial;
  } else if (recipe == "full") {
    opt.recipe = blockzoo::DeriveOptions::Recipe::kFull;
  } else if (recipe == "lora") {
    opt.recipe = blockzoo::DeriveOptions::Recipe::kLora;
  } else {
    std::fprintf(stderr, "error: --recipe must be partial, full or lora\n");
    return 2;
  }
  opt.lora_rank = absl::GetFlag(FLAGS_lora_rank);
  opt.lora_alpha = static_cast<float>(absl::GetFlag(FLAGS_lora_alpha));
  opt.lora_targets = absl::StrSplit(absl::GetFlag(FLAGS_lora_targets), ',', absl::SkipEmpty());
  opt.merge = absl::GetFlag(FLAGS_merge);
  opt.top_layers = absl::GetFlag(FLAGS_layers);
  opt.kinds.clear();
  for (absl::string_view k : absl::StrSplit(absl::GetFlag(FLAGS_kinds), ',', absl::SkipEmpty())) {
    auto kind = blockzoo::ParseBlockKind(std::string(k));
    if (!kind.ok()) return Fail(kind.status());
    opt.kinds.push_back(*kind);
  }
  opt.rel_norm = absl::GetFlag(FLAGS_rel_norm);
  opt.seed = absl::GetFlag(FLAGS_seed);
  opt.replace = absl::GetFlag(FLAGS_replace);
  opt.progress = Progress("derive " + opt.name);
  auto r = blockzoo::DeriveModel(**zoo, opt);
  if (!r.ok()) return Fail(r.status());
  std::printf("derived %s from %s (synthetic, %s): %d blocks changed, %d shared\n",
              opt.name.c_str(), opt.base.c_str(), recipe.c_str(), r->blocks_written,
              r->blocks_shared);
  return 0;
}

absl::StatusOr<std::vector<std::string>> ReadParagraphs(const std::string& path) {
  if (path.empty()) return std::vector<std::string>{};
  ASSIGN_OR_RETURN(std::string text, blockzoo::ReadWholeFile(path, 64 << 20));
  return blockzoo::SplitParagraphs(text);
}

int Equiv(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: blockzoo equiv --zoo DIR MODEL [--calibration F --heldout F]\n");
    return 2;
  }
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  blockzoo::EquivOptions opt;
  opt.model = args[0];
  auto calib = ReadParagraphs(absl::GetFlag(FLAGS_calibration));
  auto held = ReadParagraphs(absl::GetFlag(FLAGS_heldout));
  if (!calib.ok()) return Fail(calib.status());
  if (!held.ok()) return Fail(held.status());
  opt.calibration = *calib;
  opt.heldout = *held;
  opt.include_skips = absl::GetFlag(FLAGS_skips);
  opt.include_reference = absl::GetFlag(FLAGS_include_self);
  opt.progress = Progress("equiv " + opt.model);
  auto r = blockzoo::EvaluateEquivalence(**zoo, opt);
  if (!r.ok()) return Fail(r.status());
  auto lock = (*zoo)->LockForWrite();
  if (!lock.ok()) return Fail(lock.status());
  auto path = blockzoo::StoreEquivRecord(**zoo, *lock, *r);
  if (!path.ok()) return Fail(path.status());
  std::printf("%s: %d calibration tokens, %d held-out tokens\n", r->model.c_str(),
              r->calibration_tokens, r->heldout_tokens);
  std::printf("%-8s %-22s %-10s %10s %10s %10s %8s %10s\n", "POSITION", "CANDIDATE", "FROM",
              "COS_DELTA", "COS_OUT", "REL_L2", "TOP1", "KL");
  for (const auto& e : r->entries) {
    const std::string pos = absl::StrCat(runtime::BlockKindName(e.kind), " ", e.layer);
    const std::string from = e.candidate == blockzoo::kIdentity ? "(skip)"
                             : e.candidate_models.empty()       ? "-"
                                                                : e.candidate_models[0];
    std::printf("%-8s %-22s %-10s %10.6f %10.6f %10.2e %8.4f %10.2e\n", pos.c_str(),
                e.candidate.substr(0, 22).c_str(), from.c_str(), e.cos_delta, e.cos_out,
                e.candidate == blockzoo::kIdentity ? e.rel_l2_out : e.rel_l2_delta, e.top1, e.kl);
  }
  std::printf("stored %s\n", path->c_str());
  return 0;
}

int Resolve(const std::vector<std::string>& args) {
  if (args.size() != 1) {
    std::fprintf(stderr, "usage: blockzoo resolve --zoo DIR MODEL [--policy --threshold]\n");
    return 2;
  }
  auto zoo = OpenZoo(false);
  if (!zoo.ok()) return Fail(zoo.status());
  blockzoo::ResolvePolicy p;
  const std::string mode = absl::GetFlag(FLAGS_policy);
  if (mode != "exact" && mode != "equivalent") {
    std::fprintf(stderr, "error: --policy must be exact or equivalent\n");
    return 2;
  }
  p.mode = mode == "exact" ? blockzoo::ResolvePolicy::Mode::kExact
                           : blockzoo::ResolvePolicy::Mode::kEquivalent;
  p.threshold = absl::GetFlag(FLAGS_threshold);
  p.allow_skip = absl::GetFlag(FLAGS_allow_skip);
  p.min_top1 = absl::GetFlag(FLAGS_min_top1);
  auto rc = blockzoo::ResolveChain(**zoo, args[0], p);
  if (!rc.ok()) return Fail(rc.status());
  for (const auto& b : rc->blocks) {
    const std::string pos = b.entry.layer >= 0
                                ? absl::StrCat(runtime::BlockKindName(b.entry.kind), " ", b.entry.layer)
                                : runtime::BlockKindName(b.entry.kind);
    std::printf("  %-10s %s%s\n", pos.c_str(), b.entry.block.c_str(),
                b.substituted ? absl::StrFormat("  <- from %s (score %.6f)", b.from_model, b.score).c_str()
                              : "");
  }
  std::printf("%zu blocks, %d substituted, %d skipped\n", rc->blocks.size(), rc->substituted,
              rc->skipped);
  return 0;
}

int Synth() {
  auto zoo = OpenZoo(/*create=*/true);
  if (!zoo.ok()) return Fail(zoo.status());
  const std::string name = absl::GetFlag(FLAGS_name);
  if (name.empty()) {
    std::fprintf(stderr, "usage: blockzoo synth --zoo DIR --name N [--shape --dtype --seed]\n");
    return 2;
  }
  const std::string shape = absl::GetFlag(FLAGS_shape);
  const runtime::ModelConfig c = shape == "small"    ? blockzoo::SmallConfig()
                                 : shape == "medium" ? blockzoo::MediumConfig()
                                                     : blockzoo::Llama110MConfig();
  if (shape != "small" && shape != "medium" && shape != "llama110m") {
    std::fprintf(stderr, "error: --shape must be llama110m, medium or small\n");
    return 2;
  }
  const std::string dt = absl::GetFlag(FLAGS_dtype);
  const auto dtype =
      runtime::ParseDType(dt, {runtime::DType::kF32, runtime::DType::kF16, runtime::DType::kBF16});
  if (!dtype.ok()) {
    std::fprintf(stderr, "error: --dtype %s\n", std::string(dtype.status().message()).c_str());
    return 2;
  }
  auto r = blockzoo::ImportSynthetic(**zoo, name, c, *dtype, absl::GetFlag(FLAGS_seed),
                                     Progress("synth " + name));
  if (!r.ok()) return Fail(r.status());
  std::printf("stored synthetic %s (%s, %s, random weights): %zu blocks, %s\n", name.c_str(),
              shape.c_str(), dt.c_str(), r->manifest.chain.size(), Bytes(r->manifest.bytes()).c_str());
  return 0;
}

}  // namespace

int RunZooCommand(const std::string& cmd, const std::vector<std::string>& args) {
  if (cmd == "import") return Import(args);
  if (cmd == "ls") return List();
  if (cmd == "show") return Show(args);
  if (cmd == "stats") return Stats();
  if (cmd == "verify") return Verify();
  if (cmd == "gc") return Gc();
  if (cmd == "rm") return Remove(args);
  if (cmd == "derive") return Derive();
  if (cmd == "equiv") return Equiv(args);
  if (cmd == "synth") return Synth();
  if (cmd == "resolve") return Resolve(args);
  std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
  return 2;
}

}  // namespace blockserve::server
