// Equivalence evaluation (`blockzoo equiv`) and the chain resolver.
//
// For a reference model, calibration text is run through its chain and each attn/ffn block's
// input activations X are captured. Every candidate for that chain position — the distinct
// blocks other models of the same family have there, and the identity (skipping the sub-layer)
// — is fed the same X and compared with the reference block's output Y:
//   cos_delta / rel_l2_delta: the sub-layer's contribution (Y - X), the score substitutions are
//     judged by (a residual stream hides differences in the output itself);
//   cos_out / rel_l2_out: the outputs including the residual, the score skips are judged by.
// Each candidate is also substituted alone into the whole model on held-out text: top-1
// next-token agreement and mean KL(P_ref || P_sub) against the unsubstituted model.
// Records are stored in the zoo (equivalence/<sha256>.json), never assumed.
#pragma once

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockzoo/zoo.h"
#include "runtime/chain.h"

namespace blockserve::blockzoo {

// The built-in calibration and held-out texts (blockzoo/data/*.txt, compiled in): our own short
// stories, one per paragraph.
const std::string& DefaultCalibrationText();
const std::string& DefaultHeldoutText();
// Paragraphs (blank-line separated) of `text`.
std::vector<std::string> SplitParagraphs(const std::string& text);

inline constexpr char kIdentity[] = "identity";

struct EquivEntry {
  int position = 0;  // index in the chain
  runtime::BlockKind kind = runtime::BlockKind::kAttn;
  int layer = 0;
  std::string reference;   // block id (+ "+" LoRA id)
  std::string candidate;   // block id (+ "+" LoRA id), or "identity"
  std::vector<std::string> candidate_models;  // models that have the candidate here
  double cos_delta = 0, rel_l2_delta = 0, cos_out = 0, rel_l2_out = 0;
  double top1 = 0, kl = 0;  // whole model on held-out text, this substitution alone
};

struct EquivRecord {
  std::string model;
  std::string calibration_sha256, heldout_sha256;
  int calibration_tokens = 0, heldout_tokens = 0;
  std::vector<EquivEntry> entries;
};

struct EquivOptions {
  std::string model;
  std::vector<std::string> calibration;  // texts; empty: the built-in set
  std::vector<std::string> heldout;      // texts; empty: the built-in set
  bool include_skips = true;
  bool include_reference = false;  // also score the model's own block (a sanity check: exactly 1)
  int threads = 0;
  ProgressFn progress;
};

absl::StatusOr<EquivRecord> EvaluateEquivalence(const Zoo& zoo, const EquivOptions& opt);

nlohmann::json EquivToJson(const EquivRecord& r);
absl::StatusOr<EquivRecord> EquivFromJson(const std::string& text, const std::string& source);
// Stores `r` content-addressed; returns its path.
absl::StatusOr<std::string> StoreEquivRecord(const Zoo& zoo, const FileLock& lock,
                                             const EquivRecord& r);
// Every stored record of `model` (unreadable records are errors naming the file).
absl::StatusOr<std::vector<EquivRecord>> LoadEquivRecords(const Zoo& zoo, const std::string& model);

struct ResolvePolicy {
  enum class Mode { kExact, kEquivalent } mode = Mode::kExact;
  double threshold = 0.99;  // minimum cos_delta of a substitute (cos_out of a skip)
  bool allow_skip = false;
  double min_top1 = 0.0;    // and at least this whole-model top-1 agreement
};

struct ResolvedBlock {
  ChainEntry entry;        // what runs (block, lora, tensors)
  bool substituted = false;
  std::string from_model;  // where a substitute comes from
  double score = 1.0;
};

struct ResolvedChain {
  std::vector<ResolvedBlock> blocks;  // skipped sub-layers are absent
  int substituted = 0, skipped = 0;
};

// The chain of `model` under `policy`: `exact` returns the model's own chain; `equivalent`
// substitutes, per position, the measured candidate that passes the thresholds and is shared by
// the most models (more sharing, bigger batches), or drops the sub-layer when skips are allowed
// and pass. Positions without measurements keep their own block.
absl::StatusOr<ResolvedChain> ResolveChain(const Zoo& zoo, const std::string& model,
                                           const ResolvePolicy& policy);

// Builds the runnable chain of a resolved chain (LoRA blocks attached under kModelAdapterKey).
absl::StatusOr<runtime::Chain> BuildResolvedChain(const Zoo& zoo, const Manifest& m,
                                                  const ResolvedChain& rc);

}  // namespace blockserve::blockzoo
