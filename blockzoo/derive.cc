#include "blockzoo/derive.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/strings/str_cat.h"
#include "blockzoo/sha256.h"
#include "runtime/dtype.h"
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

}  // namespace

Tensor PerturbTensor(const Tensor& w, double rel_norm, uint64_t seed) {
  const size_t n = static_cast<size_t>(w.numel());
  std::vector<float> x(n);
  runtime::ConvertToF32(w.dtype(), w.raw(), n, x.data());
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
  Tensor out = Tensor::Zeros(w.dtype(), w.shape());
  for (size_t i = 0; i < n; ++i) {
    const float v = static_cast<float>(x[i] + scale * noise[i]);
    switch (w.dtype()) {
      case DType::kF16:
        out.mutable_data<uint16_t>()[i] = runtime::FloatToHalf(v);
        break;
      case DType::kBF16:
        out.mutable_data<uint16_t>()[i] = runtime::FloatToBF16(v);
        break;
      default:
        out.mutable_data<float>()[i] = v;
    }
  }
  return out;
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
      {"recipe", opt.recipe == DeriveOptions::Recipe::kPartial ? "partial" : "full"},
      {"rel_norm", opt.rel_norm},
      {"seed", opt.seed},
      {"base", base.name}};
  if (opt.recipe == DeriveOptions::Recipe::kPartial) {
    r.manifest.provenance["top_layers"] = opt.top_layers;
    r.manifest.provenance["kinds"] = kinds;
  }
  for (size_t i = 0; i < r.manifest.chain.size(); ++i) {
    ChainEntry& e = r.manifest.chain[i];
    if (opt.progress) opt.progress("blocks", i, r.manifest.chain.size());
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
