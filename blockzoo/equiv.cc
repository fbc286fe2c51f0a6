#include "blockzoo/equiv.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "blockzoo/sha256.h"
#include "blockzoo/zoo_model.h"
#include "runtime/device.h"
#include "runtime/sampler.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using runtime::Batch;
using runtime::Block;
using runtime::BlockKind;
using Json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr char kEquivFormat[] = "blockserve-equivalence";

// Blocks of `kind` from models of families `a` and `b` can stand in for each other: the
// hyper-parameters the block's computation depends on agree (context length and head tying,
// for instance, do not matter to an attn or ffn block).
bool Interchangeable(BlockKind kind, const runtime::ModelConfig& a, const runtime::ModelConfig& b) {
  return BlockHparams(kind, a) == BlockHparams(kind, b);
}

std::string UnitKey(const ChainEntry& e) { return e.lora.empty() ? e.block : e.block + "+" + e.lora; }

// A fresh instance of the unit `e` at `layer` (its LoRA attached under kModelAdapterKey).
absl::StatusOr<std::shared_ptr<Block>> LoadUnitAt(const Zoo& zoo, ChainEntry e, int layer,
                                                  const runtime::ModelConfig& family) {
  e.layer = layer;
  return LoadUnit(zoo, e, family, {}, /*verify_hash=*/false);
}

// One span per text, each with `adapter`, sequence ids from `first`.
Batch MakeBatch(const std::vector<std::vector<int32_t>>& seqs, runtime::SeqId first,
                runtime::SeqSpan::Logits logits, int32_t adapter) {
  Batch b;
  for (size_t i = 0; i < seqs.size(); ++i) {
    b.Add(first + static_cast<runtime::SeqId>(i), 0, seqs[i].data(),
          static_cast<int>(seqs[i].size()), logits, adapter);
  }
  return b;
}

void Release(Block& block, const Batch& b) {
  for (const auto& s : b.spans) block.ReleaseSequence(s.seq);
}

struct Similarity {
  double cos = 0, rel_l2 = 0;
};

// Mean per-token cosine and global relative L2 of (a - base) against (b - base), rows of `dim`
// (base null: the vectors themselves).
Similarity Compare(const float* a, const float* b, const float* base, size_t rows, int dim) {
  double cos_sum = 0, diff2 = 0, ref2 = 0;
  for (size_t r = 0; r < rows; ++r) {
    double dot = 0, na = 0, nb = 0;
    for (int j = 0; j < dim; ++j) {
      const size_t i = r * dim + j;
      const double x = a[i] - (base ? base[i] : 0.0f);
      const double y = b[i] - (base ? base[i] : 0.0f);
      dot += x * y;
      na += x * x;
      nb += y * y;
      diff2 += (x - y) * (x - y);
    }
    ref2 += nb;
    cos_sum += (na == 0 && nb == 0) ? 1.0 : (na == 0 || nb == 0) ? 0.0 : dot / std::sqrt(na * nb);
  }
  return {rows ? cos_sum / rows : 0.0, ref2 > 0 ? std::sqrt(diff2 / ref2) : 0.0};
}

// Top-1 agreement and mean KL(P_ref || P_sub) over rows of `vocab` logits.
std::pair<double, double> Agreement(const std::vector<float>& ref, const std::vector<float>& sub,
                                    int vocab) {
  const size_t rows = ref.size() / vocab;
  double agree = 0, kl = 0;
  std::vector<double> lp(vocab), lq(vocab);
  auto log_softmax = [&](const float* x, std::vector<double>& out) {
    double mx = x[0];
    for (int i = 1; i < vocab; ++i) mx = std::max(mx, static_cast<double>(x[i]));
    double s = 0;
    for (int i = 0; i < vocab; ++i) s += std::exp(x[i] - mx);
    const double lse = mx + std::log(s);
    for (int i = 0; i < vocab; ++i) out[i] = x[i] - lse;
  };
  for (size_t r = 0; r < rows; ++r) {
    const float* p = ref.data() + r * vocab;
    const float* q = sub.data() + r * vocab;
    agree += runtime::Argmax(p, vocab) == runtime::Argmax(q, vocab);
    log_softmax(p, lp);
    log_softmax(q, lq);
    for (int i = 0; i < vocab; ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  }
  return {rows ? agree / rows : 0.0, rows ? kl / rows : 0.0};
}

std::vector<std::vector<int32_t>> Encode(const runtime::Tokenizer& tok,
                                         const std::vector<std::string>& texts, int max_len,
                                         int* total) {
  std::vector<std::vector<int32_t>> out;
  *total = 0;
  for (const std::string& t : texts) {
    auto ids = tok.Encode(t, /*add_bos=*/true);
    if (static_cast<int>(ids.size()) > max_len) ids.resize(max_len);
    if (ids.empty()) continue;
    *total += static_cast<int>(ids.size());
    out.push_back(std::move(ids));
  }
  return out;
}

std::string TextsSha(const std::vector<std::string>& texts) {
  Sha256 h;
  for (const auto& t : texts) {
    h.Update(absl::StrCat(t.size(), ":"));
    h.Update(t);
  }
  return h.HexDigest();
}

}  // namespace

std::vector<std::string> SplitParagraphs(const std::string& text) {
  std::vector<std::string> out;
  for (absl::string_view p : absl::StrSplit(text, "\n\n", absl::SkipWhitespace())) {
    out.emplace_back(absl::StripAsciiWhitespace(p));
  }
  return out;
}

absl::StatusOr<EquivRecord> EvaluateEquivalence(const Zoo& zoo, const EquivOptions& opt) {
  ASSIGN_OR_RETURN(ZooModel ref, LoadZooModel(zoo, opt.model, {}, /*verify_hash=*/true));
  if (!ref.tokenizer) {
    return absl::FailedPreconditionError(absl::StrCat("model '", opt.model, "' has no tokenizer"));
  }
  const Manifest& m = ref.manifest;
  const runtime::ModelConfig& family = m.family;
  const auto calib_texts = opt.calibration.empty() ? SplitParagraphs(DefaultCalibrationText())
                                                   : opt.calibration;
  const auto held_texts = opt.heldout.empty() ? SplitParagraphs(DefaultHeldoutText()) : opt.heldout;
  EquivRecord rec;
  rec.model = opt.model;
  rec.calibration_sha256 = TextsSha(calib_texts);
  rec.heldout_sha256 = TextsSha(held_texts);
  const auto calib = Encode(*ref.tokenizer, calib_texts, family.max_seq_len, &rec.calibration_tokens);
  const auto held = Encode(*ref.tokenizer, held_texts, family.max_seq_len, &rec.heldout_tokens);
  if (calib.empty() || held.empty()) {
    return absl::InvalidArgumentError("calibration and held-out text must not be empty");
  }
  runtime::CpuDevice cpu(opt.threads > 0 ? opt.threads : runtime::DefaultThreadCount());
  runtime::ExecContext ctx(&cpu);
  const auto& blocks = ref.chain->blocks();
  const int dim = family.dim, vocab = family.vocab_size;

  // Capture every block's input on the calibration text.
  runtime::SeqId next_seq = 1;
  std::vector<std::vector<float>> inputs(blocks.size());
  Batch cb = MakeBatch(calib, next_seq, runtime::SeqSpan::Logits::kNone, ref.adapter);
  next_seq += calib.size();
  for (size_t i = 0; i < blocks.size(); ++i) {
    inputs[i] = cb.hidden;
    RETURN_IF_ERROR(blocks[i]->Forward(cb, ctx));
  }
  for (const auto& s : cb.spans) ref.chain->ReleaseSequence(s.seq);
  // Reference logits on the held-out text.
  Batch hb = MakeBatch(held, next_seq, runtime::SeqSpan::Logits::kAll, ref.adapter);
  RETURN_IF_ERROR(ref.chain->Forward(hb, ctx));
  for (const auto& s : hb.spans) ref.chain->ReleaseSequence(s.seq);
  next_seq += held.size();
  const std::vector<float> ref_logits = hb.logits;

  // Candidates: what other models with interchangeable blocks hold at each position.
  std::vector<std::map<std::string, std::pair<ChainEntry, std::vector<std::string>>>> cands(
      m.chain.size());
  ASSIGN_OR_RETURN(auto names, zoo.ListModels());
  for (const std::string& name : names) {
    if (name == opt.model) continue;
    auto other = zoo.GetManifest(name);
    if (!other.ok() || other->chain.size() != m.chain.size()) continue;
    for (size_t p = 0; p < m.chain.size(); ++p) {
      const ChainEntry& e = other->chain[p];
      if (e.kind != BlockKind::kAttn && e.kind != BlockKind::kFfn) continue;
      if (!Interchangeable(e.kind, other->family, family)) continue;
      if (UnitKey(e) == UnitKey(m.chain[p])) continue;
      auto& slot = cands[p][UnitKey(e)];
      slot.first = e;
      slot.second.push_back(name);
    }
  }
  size_t total = 0, done = 0;
  for (size_t p = 0; p < m.chain.size(); ++p) {
    const BlockKind k = m.chain[p].kind;
    if (k == BlockKind::kAttn || k == BlockKind::kFfn) {
      total += cands[p].size() + opt.include_skips + opt.include_reference;
    }
  }
  for (size_t p = 0; p < m.chain.size(); ++p) {
    const ChainEntry& own = m.chain[p];
    if (own.kind != BlockKind::kAttn && own.kind != BlockKind::kFfn) continue;
    const std::vector<float>& x = inputs[p];
    const std::vector<float>& y = inputs[p + 1];  // the reference block's output
    const size_t rows = x.size() / dim;
    std::vector<std::pair<std::string, const std::pair<ChainEntry, std::vector<std::string>>*>> list;
    if (opt.include_skips) list.emplace_back(kIdentity, nullptr);
    const std::pair<ChainEntry, std::vector<std::string>> self{own, {opt.model}};
    if (opt.include_reference) list.emplace_back(UnitKey(own), &self);
    for (const auto& [key, slot] : cands[p]) list.emplace_back(key, &slot);
    for (const auto& [key, slot] : list) {
      if (opt.progress) opt.progress("candidates", done++, total);
      EquivEntry e;
      e.position = static_cast<int>(p);
      e.kind = own.kind;
      e.layer = own.layer;
      e.reference = UnitKey(own);
      e.candidate = key;
      std::shared_ptr<Block> block;
      std::vector<float> yc = x;
      if (slot != nullptr) {
        e.candidate_models = slot->second;
        ASSIGN_OR_RETURN(block, LoadUnitAt(zoo, slot->first, own.layer, family));
        Batch b = MakeBatch(calib, next_seq, runtime::SeqSpan::Logits::kNone,
                            slot->first.lora.empty() ? 0 : kModelAdapterKey);
        next_seq += calib.size();
        b.hidden = x;
        RETURN_IF_ERROR(block->Forward(b, ctx));
        Release(*block, b);
        yc = std::move(b.hidden);
      }
      const Similarity d = Compare(yc.data(), y.data(), x.data(), rows, dim);
      const Similarity o = Compare(yc.data(), y.data(), nullptr, rows, dim);
      e.cos_delta = slot == nullptr ? 0.0 : d.cos;
      e.rel_l2_delta = d.rel_l2;
      e.cos_out = o.cos;
      e.rel_l2_out = o.rel_l2;
      // The whole model with only this position changed, on held-out text.
      std::vector<std::shared_ptr<Block>> sub;
      for (size_t i = 0; i < blocks.size(); ++i) {
        if (i != p) {
          sub.push_back(blocks[i]);
        } else if (block) {
          sub.push_back(block);
        }
      }
      ASSIGN_OR_RETURN(runtime::Chain chain, runtime::Chain::Create(family, std::move(sub)));
      // Spans carry the model's adapter key; a substitute with its own LoRA uses the same key.
      Batch h = MakeBatch(held, next_seq, runtime::SeqSpan::Logits::kAll,
                          ref.adapter != 0 ? ref.adapter
                          : (slot && !slot->first.lora.empty()) ? kModelAdapterKey
                                                                 : 0);
      next_seq += held.size();
      RETURN_IF_ERROR(chain.Forward(h, ctx));
      for (const auto& s : h.spans) chain.ReleaseSequence(s.seq);
      std::tie(e.top1, e.kl) = Agreement(ref_logits, h.logits, vocab);
      rec.entries.push_back(std::move(e));
    }
  }
  if (opt.progress) opt.progress("candidates", total, total);
  return rec;
}

Json EquivToJson(const EquivRecord& r) {
  Json entries = Json::array();
  for (const EquivEntry& e : r.entries) {
    entries.push_back({{"position", e.position},
                       {"kind", runtime::BlockKindName(e.kind)},
                       {"layer", e.layer},
                       {"reference", e.reference},
                       {"candidate", e.candidate},
                       {"candidate_models", e.candidate_models},
                       {"cos_delta", e.cos_delta},
                       {"rel_l2_delta", e.rel_l2_delta},
                       {"cos_out", e.cos_out},
                       {"rel_l2_out", e.rel_l2_out},
                       {"top1", e.top1},
                       {"kl", e.kl}});
  }
  return {{"format", kEquivFormat},
          {"version", 1},
          {"model", r.model},
          {"calibration_sha256", r.calibration_sha256},
          {"heldout_sha256", r.heldout_sha256},
          {"calibration_tokens", r.calibration_tokens},
          {"heldout_tokens", r.heldout_tokens},
          {"entries", entries}};
}

absl::StatusOr<EquivRecord> EquivFromJson(const std::string& text, const std::string& source) {
  const Json j = Json::parse(text, nullptr, false);
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", what));
  };
  if (j.is_discarded() || !j.is_object() || j.value("format", "") != kEquivFormat) {
    return bad("not a blockserve equivalence record");
  }
  EquivRecord r;
  try {
    r.model = j.at("model").get<std::string>();
    r.calibration_sha256 = j.at("calibration_sha256").get<std::string>();
    r.heldout_sha256 = j.at("heldout_sha256").get<std::string>();
    r.calibration_tokens = j.at("calibration_tokens").get<int>();
    r.heldout_tokens = j.at("heldout_tokens").get<int>();
    for (const Json& e : j.at("entries")) {
      EquivEntry x;
      x.position = e.at("position").get<int>();
      auto kind = ParseBlockKind(e.at("kind").get<std::string>());
      if (!kind.ok()) return bad(kind.status().message());
      x.kind = *kind;
      x.layer = e.at("layer").get<int>();
      x.reference = e.at("reference").get<std::string>();
      x.candidate = e.at("candidate").get<std::string>();
      x.candidate_models = e.at("candidate_models").get<std::vector<std::string>>();
      x.cos_delta = e.at("cos_delta").get<double>();
      x.rel_l2_delta = e.at("rel_l2_delta").get<double>();
      x.cos_out = e.at("cos_out").get<double>();
      x.rel_l2_out = e.at("rel_l2_out").get<double>();
      x.top1 = e.at("top1").get<double>();
      x.kl = e.at("kl").get<double>();
      r.entries.push_back(std::move(x));
    }
  } catch (const Json::exception& ex) {
    return bad(absl::StrCat("malformed record: ", ex.what()));
  }
  return r;
}

absl::StatusOr<std::string> StoreEquivRecord(const Zoo& zoo, const FileLock&,
                                             const EquivRecord& r) {
  const std::string text = EquivToJson(r).dump(1) + "\n";
  const fs::path dir = fs::path(zoo.dir()) / "equivalence";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(dir.string(), ": ", ec.message()));
  const std::string path = (dir / (Sha256Hex(text.data(), text.size()) + ".json")).string();
  RETURN_IF_ERROR(WriteFileAtomic(path, text));
  return path;
}

absl::StatusOr<std::vector<EquivRecord>> LoadEquivRecords(const Zoo& zoo, const std::string& model) {
  std::vector<EquivRecord> out;
  const fs::path dir = fs::path(zoo.dir()) / "equivalence";
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const fs::path p = it->path();
    if (p.extension() != ".json" || p.filename().string().rfind(".tmp-", 0) == 0) continue;
    ASSIGN_OR_RETURN(std::string text, ReadWholeFile(p.string(), 256 << 20));
    ASSIGN_OR_RETURN(EquivRecord r, EquivFromJson(text, p.string()));
    if (r.model == model) out.push_back(std::move(r));
  }
  return out;
}

absl::StatusOr<ResolvedChain> ResolveChain(const Zoo& zoo, const std::string& model,
                                           const ResolvePolicy& policy) {
  ASSIGN_OR_RETURN(Manifest m, zoo.GetManifest(model));
  ResolvedChain rc;
  for (const ChainEntry& e : m.chain) rc.blocks.push_back({e, false, "", 1.0});
  if (policy.mode == ResolvePolicy::Mode::kExact) return rc;

  // The most conservative measurement of each (position, candidate) over all records made
  // against the model's current blocks.
  struct Score {
    double block = 2.0, top1 = 2.0;
  };
  std::map<std::pair<int, std::string>, Score> scores;
  ASSIGN_OR_RETURN(auto records, LoadEquivRecords(zoo, model));
  for (const EquivRecord& r : records) {
    for (const EquivEntry& e : r.entries) {
      if (e.position < 0 || e.position >= static_cast<int>(m.chain.size()) ||
          e.reference != UnitKey(m.chain[e.position])) {
        continue;  // measured against blocks the model no longer has
      }
      Score& s = scores[{e.position, e.candidate}];
      s.block = std::min(s.block, e.candidate == kIdentity ? e.cos_out : e.cos_delta);
      s.top1 = std::min(s.top1, e.top1);
    }
  }
  // Current users of each unit at each position, and one manifest entry to load it from.
  std::map<std::pair<int, std::string>, std::pair<int, std::pair<ChainEntry, std::string>>> users;
  ASSIGN_OR_RETURN(auto names, zoo.ListModels());
  for (const std::string& name : names) {
    auto other = zoo.GetManifest(name);
    if (!other.ok() || other->chain.size() != m.chain.size()) continue;
    for (size_t p = 0; p < other->chain.size(); ++p) {
      if (!Interchangeable(other->chain[p].kind, other->family, m.family)) continue;
      auto& u = users[{static_cast<int>(p), UnitKey(other->chain[p])}];
      if (u.first++ == 0) u.second = {other->chain[p], name};
    }
  }
  std::vector<ResolvedBlock> out;
  for (size_t p = 0; p < m.chain.size(); ++p) {
    ResolvedBlock best = rc.blocks[p];
    const int pos = static_cast<int>(p);
    auto passes = [&](const std::string& cand) {
      auto it = scores.find({pos, cand});
      return it != scores.end() && it->second.block >= policy.threshold &&
             it->second.top1 >= policy.min_top1;
    };
    if (policy.allow_skip && passes(kIdentity)) {
      ++rc.skipped;
      continue;
    }
    int best_users = users[{pos, UnitKey(m.chain[p])}].first;
    for (const auto& [key, score] : scores) {
      if (key.first != pos || key.second == kIdentity || !passes(key.second)) continue;
      auto u = users.find({pos, key.second});
      if (u == users.end() || u->second.first <= best_users) continue;
      best_users = u->second.first;
      best.entry = u->second.second.first;
      best.entry.layer = m.chain[p].layer;
      best.substituted = true;
      best.from_model = u->second.second.second;
      best.score = score.block;
    }
    rc.substituted += best.substituted;
    out.push_back(std::move(best));
  }
  rc.blocks = std::move(out);
  return rc;
}

absl::StatusOr<runtime::Chain> BuildResolvedChain(const Zoo& zoo, const Manifest& m,
                                                  const ResolvedChain& rc) {
  std::vector<std::shared_ptr<Block>> blocks;
  for (const ResolvedBlock& b : rc.blocks) {
    ASSIGN_OR_RETURN(auto block, LoadUnit(zoo, b.entry, m.family, {}, /*verify_hash=*/false));
    blocks.push_back(std::move(block));
  }
  return runtime::Chain::Create(m.family, std::move(blocks));
}

}  // namespace blockserve::blockzoo
