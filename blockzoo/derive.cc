#include "blockzoo/derive.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "blockzoo/sha256.h"
#include "runtime/dtype.h"
#include "runtime/lora.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using runtime::BlockKind;
using runtime::DType;
using runtime::Tensor;

namespace {

// A per-tensor seed from the recipe seed, the chain position and the tensor name.
uint64_t TensorSeed(uint64_t seed, size_t position, const std::string& name) {
  const std::string key = absl::StrCat(seed, "/", position, "/", name);
  const std::string h = Sha256Hex(key.data(), key.size());
  return std::stoull(h.substr(0, 16), nullptr, 16);
}

// Writes f32 values into a tensor of `dtype`.
Tensor FromF32(const std::vector<float>& x, DType dtype, std::vector<int64_t> shape) {
  Tensor out = Tensor::Zeros(dtype, std::move(shape));
  for (size_t i = 0; i < x.size(); ++i) {
    switch (dtype) {
      case DType::kF16:
        out.mutable_data<uint16_t>()[i] = runtime::FloatToHalf(x[i]);
        break;
      case DType::kBF16:
        out.mutable_data<uint16_t>()[i] = runtime::FloatToBF16(x[i]);
        break;
      default:
        out.mutable_data<float>()[i] = x[i];
    }
  }
  return out;
}

std::vector<float> ToF32(const Tensor& t) {
  std::vector<float> x(static_cast<size_t>(t.numel()));
  runtime::ConvertToF32(t.dtype(), t.raw(), x.size(), x.data());
  return x;
}

double FrobeniusNorm(const Tensor& t) {
  double s = 0.0;
  for (float v : ToF32(t)) s += static_cast<double>(v) * v;
  return std::sqrt(s);
}

// Random LoRA factors for `w` [out, in] with ||alpha/rank * B A|| = rel_norm * ||W||.
std::pair<Tensor, Tensor> RandomLora(const Tensor& w, int rank, float alpha, double rel_norm,
                                     uint64_t seed) {
  const int64_t out = w.dim(0), in = w.dim(1);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  Tensor a = Tensor::Zeros(DType::kF32, {rank, in});
  Tensor b = Tensor::Zeros(DType::kF32, {out, rank});
  for (int64_t i = 0; i < rank * in; ++i) a.mutable_data<float>()[i] = normal(rng) / std::sqrt(in);
  std::vector<double> bd(out * rank);
  for (double& v : bd) v = normal(rng);
  // ||B A||_F^2 = sum_ij (B^T B)_ij (A A^T)_ij, without forming B A.
  std::vector<double> gb(rank * rank, 0.0), ga(rank * rank, 0.0);
  const float* ap = a.data<float>();
  for (int i = 0; i < rank; ++i) {
    for (int j = 0; j < rank; ++j) {
      for (int64_t o = 0; o < out; ++o) gb[i * rank + j] += bd[o * rank + i] * bd[o * rank + j];
      for (int64_t k = 0; k < in; ++k) {
        ga[i * rank + j] += static_cast<double>(ap[i * in + k]) * ap[j * in + k];
      }
    }
  }
  double ba2 = 0.0;
  for (int i = 0; i < rank * rank; ++i) ba2 += gb[i] * ga[i];
  const double scale = alpha / rank;
  const double c = ba2 > 0.0 ? rel_norm * FrobeniusNorm(w) / (scale * std::sqrt(ba2)) : 0.0;
  for (int64_t i = 0; i < out * rank; ++i) b.mutable_data<float>()[i] = static_cast<float>(c * bd[i]);
  return {std::move(a), std::move(b)};
}

}  // namespace

Tensor MergeLora(const Tensor& w, const Tensor& a, const Tensor& b, float scale) {
  const int64_t out = w.dim(0), in = w.dim(1), rank = a.dim(0);
  std::vector<float> x = ToF32(w);
  const float* ap = a.data<float>();
  const float* bp = b.data<float>();
  for (int64_t o = 0; o < out; ++o) {
    for (int64_t i = 0; i < in; ++i) {
      double d = 0.0;
      for (int64_t k = 0; k < rank; ++k) d += static_cast<double>(bp[o * rank + k]) * ap[k * in + i];
      x[o * in + i] = static_cast<float>(x[o * in + i] + scale * d);
    }
  }
  return FromF32(x, w.dtype(), w.shape());
}

Tensor PerturbTensor(const Tensor& w, double rel_norm, uint64_t seed) {
  const size_t n = static_cast<size_t>(w.numel());
  std::vector<float> x = ToF32(w);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::vector<double> noise(n);
  double wn = 0.0, nn = 0.0;
  for (size_t i = 0; i < n; ++i) {
    noise[i] = normal(rng);
    wn += static_cast<double>(x[i]) * x[i];
    nn += noise[i] * noise[i];
  }
  const double scale = nn > 0.0 ? rel_norm * std::sqrt(wn) / std::sqrt(nn) : 0.0;
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(x[i] + scale * noise[i]);
  return FromF32(x, w.dtype(), w.shape());
}

// LoRA for chain entry `e` (position `i`): attaches a LoRA block, or with `merge` replaces the
// block by W + delta. False when no target falls in this block.
absl::StatusOr<bool> DeriveLoraEntry(const Zoo& zoo, const FileLock& lock,
                                     const runtime::ModelConfig& family, const DeriveOptions& opt,
                                     size_t i, ChainEntry& e) {
  if (e.kind != BlockKind::kAttn && e.kind != BlockKind::kFfn) return false;
  ASSIGN_OR_RETURN(SafetensorsFile f, zoo.ReadBlock(e.block, &e, /*verify_hash=*/false));
  LoraBlock lora;
  lora.attaches_to = e.kind;
  lora.alpha = opt.lora_alpha;
  BlockTensors merged = f.tensors;
  const float scale = opt.lora_alpha / opt.lora_rank;
  for (const std::string& target : opt.lora_targets) {
    int in = 0, out = 0;
    if (!runtime::LoraAdapter::TargetShape(e.kind, family, target, &in, &out)) continue;
    const Tensor& w = f.tensors.at(target);
    auto [a, b] = RandomLora(w, opt.lora_rank, opt.lora_alpha, opt.rel_norm,
                             TensorSeed(opt.seed, i, target + ".lora"));
    merged[target] = MergeLora(w, a, b, scale);
    lora.tensors[target + ".lora_A"] = std::move(a);
    lora.tensors[target + ".lora_B"] = std::move(b);
  }
  if (lora.tensors.empty()) return false;
  if (opt.merge) {
    ASSIGN_OR_RETURN(PutBlockResult put, zoo.PutBlock(lock, e.kind, family, merged));
    e.block = put.id;
    e.bytes = put.bytes;
    e.tensors = std::move(put.tensors);
  } else {
    ASSIGN_OR_RETURN(PutBlockResult put, zoo.PutLora(lock, family, lora));
    e.lora = put.id;
  }
  return true;
}

absl::StatusOr<ImportResult> DeriveModel(const Zoo& zoo, const DeriveOptions& opt) {
  if (!(opt.rel_norm >= 0.0 && opt.rel_norm < 100.0)) {
    return absl::InvalidArgumentError("--rel_norm must be in [0, 100)");
  }
  ASSIGN_OR_RETURN(FileLock lock, zoo.LockForWrite());
  ASSIGN_OR_RETURN(Manifest base, zoo.GetManifest(opt.base));
  const int layers = base.family.n_layers;
  if (opt.recipe == DeriveOptions::Recipe::kPartial &&
      (opt.top_layers < 1 || opt.top_layers > layers)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--layers ", opt.top_layers, ": the base has ", layers, " layers"));
  }
  if (!opt.replace && zoo.HasModel(opt.name)) {
    return absl::AlreadyExistsError(absl::StrCat("model '", opt.name, "' already exists"));
  }
  ImportResult r;
  r.manifest = base;
  r.manifest.name = opt.name;
  r.manifest.parent = base.name;
  r.manifest.synthetic = true;
  nlohmann::json kinds = nlohmann::json::array();
  for (BlockKind k : opt.kinds) kinds.push_back(runtime::BlockKindName(k));
  r.manifest.provenance = {
      {"importer", "blockzoo derive"},
      {"synthetic", true},
      {"recipe", opt.recipe == DeriveOptions::Recipe::kPartial ? "partial"
                 : opt.recipe == DeriveOptions::Recipe::kFull  ? "full"
                                                               : (opt.merge ? "lora-merged" : "lora")},
      {"rel_norm", opt.rel_norm},
      {"seed", opt.seed},
      {"base", base.name}};
  if (opt.recipe == DeriveOptions::Recipe::kPartial) {
    r.manifest.provenance["top_layers"] = opt.top_layers;
    r.manifest.provenance["kinds"] = kinds;
  }
  if (opt.recipe == DeriveOptions::Recipe::kLora) {
    if (opt.lora_rank < 1 || opt.lora_rank > 4096) {
      return absl::InvalidArgumentError("--lora_rank must be in [1, 4096]");
    }
    r.manifest.provenance["rank"] = opt.lora_rank;
    r.manifest.provenance["alpha"] = opt.lora_alpha;
    r.manifest.provenance["targets"] = opt.lora_targets;
    for (const std::string& t : opt.lora_targets) {
      int in = 0, out = 0;
      if (!runtime::LoraAdapter::TargetShape(BlockKind::kAttn, base.family, t, &in, &out) &&
          !runtime::LoraAdapter::TargetShape(BlockKind::kFfn, base.family, t, &in, &out)) {
        return absl::InvalidArgumentError(
            absl::StrCat("LoRA target '", t, "': use wq, wk, wv, wo, w1, w2 or w3"));
      }
    }
  }
  for (size_t i = 0; i < r.manifest.chain.size(); ++i) {
    ChainEntry& e = r.manifest.chain[i];
    if (opt.progress) opt.progress("blocks", i, r.manifest.chain.size());
    if (opt.recipe == DeriveOptions::Recipe::kLora) {
      ASSIGN_OR_RETURN(bool changed, DeriveLoraEntry(zoo, lock, base.family, opt, i, e));
      (changed ? r.blocks_written : r.blocks_shared)++;
      continue;
    }
    bool change = true;
    if (opt.recipe == DeriveOptions::Recipe::kPartial) {
      change = e.layer >= layers - opt.top_layers &&
               std::find(opt.kinds.begin(), opt.kinds.end(), e.kind) != opt.kinds.end();
    }
    if (!change) {
      ++r.blocks_shared;
      continue;
    }
    ASSIGN_OR_RETURN(SafetensorsFile f, zoo.ReadBlock(e.block, &e, /*verify_hash=*/false));
    BlockTensors changed;
    for (const auto& [name, t] : f.tensors) {
      changed[name] = PerturbTensor(t, opt.rel_norm, TensorSeed(opt.seed, i, name));
    }
    ASSIGN_OR_RETURN(PutBlockResult put, zoo.PutBlock(lock, e.kind, base.family, changed));
    (put.existed ? r.blocks_shared : r.blocks_written)++;
    e.block = put.id;
    e.bytes = put.bytes;
  }
  if (opt.progress) opt.progress("blocks", r.manifest.chain.size(), r.manifest.chain.size());
  RETURN_IF_ERROR(zoo.PutManifest(lock, r.manifest, opt.replace));
  return r;
}

}  // namespace blockserve::blockzoo
