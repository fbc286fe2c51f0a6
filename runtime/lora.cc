#include "runtime/lora.h"

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::runtime {

bool LoraAdapter::TargetShape(BlockKind kind, const ModelConfig& c, const std::string& name,
                              int* in, int* out) {
  const std::map<std::string, std::pair<int, int>> attn = {
      {"wq", {c.dim, c.dim}}, {"wk", {c.dim, c.kv_dim()}}, {"wv", {c.dim, c.kv_dim()}},
      {"wo", {c.dim, c.dim}}};
  const std::map<std::string, std::pair<int, int>> ffn = {
      {"w1", {c.dim, c.hidden_dim}}, {"w2", {c.hidden_dim, c.dim}}, {"w3", {c.dim, c.hidden_dim}}};
  const auto& table = kind == BlockKind::kAttn ? attn : ffn;
  if (kind != BlockKind::kAttn && kind != BlockKind::kFfn) return false;
  auto it = table.find(name);
  if (it == table.end()) return false;
  *in = it->second.first;
  *out = it->second.second;
  return true;
}

absl::StatusOr<std::shared_ptr<const LoraAdapter>> LoraAdapter::Create(
    BlockKind kind, const ModelConfig& c, const std::map<std::string, Tensor>& tensors,
    float alpha, const std::string& source) {
  auto bad = [&](auto&&... what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": LoRA: ", what...));
  };
  auto out = std::make_shared<LoraAdapter>();
  out->kind_ = kind;
  for (const auto& [name, t] : tensors) {
    const size_t dot = name.rfind('.');
    const std::string target = name.substr(0, dot == std::string::npos ? 0 : dot);
    const std::string part = dot == std::string::npos ? name : name.substr(dot + 1);
    int in = 0, outd = 0;
    if (!TargetShape(kind, c, target, &in, &outd) || (part != "lora_A" && part != "lora_B")) {
      return bad("tensor '", name, "' is not <target>.lora_A|lora_B of a ", BlockKindName(kind),
                 " block");
    }
    if (part == "lora_B") continue;  // handled with its A
    auto b = tensors.find(target + ".lora_B");
    if (b == tensors.end()) return bad("'", target, ".lora_B' missing");
    const Tensor& a = t;
    if (a.rank() != 2 || a.dim(1) != in || a.dim(0) < 1 || a.dim(0) > 4096) {
      return bad("'", name, "' is ", a.ShapeString(), ", expected [rank, ", in, "]");
    }
    const int rank = static_cast<int>(a.dim(0));
    if (b->second.rank() != 2 || b->second.dim(0) != outd || b->second.dim(1) != rank) {
      return bad("'", target, ".lora_B' is ", b->second.ShapeString(), ", expected [", outd, ", ",
                 rank, "]");
    }
    if (out->rank_ != 0 && out->rank_ != rank) return bad("targets differ in rank");
    out->rank_ = rank;
    LoraProjection p;
    ASSIGN_OR_RETURN(p.a, PackedLinear::Pack({&a}, DType::kF32));
    ASSIGN_OR_RETURN(p.b, PackedLinear::Pack({&b->second}, DType::kF32));
    p.scale = alpha / static_cast<float>(rank);
    out->proj_.emplace(target, std::move(p));
  }
  for (const auto& [name, t] : tensors) {
    if (name.size() > 7 && name.compare(name.size() - 7, 7, ".lora_B") == 0 &&
        !out->proj_.count(name.substr(0, name.size() - 7))) {
      return bad("'", name, "' has no lora_A");
    }
  }
  if (out->proj_.empty()) return bad("no target projections");
  return std::shared_ptr<const LoraAdapter>(std::move(out));
}

const LoraProjection* LoraAdapter::Find(const std::string& target) const {
  auto it = proj_.find(target);
  return it == proj_.end() ? nullptr : &it->second;
}

size_t LoraAdapter::bytes() const {
  size_t n = 0;
  for (const auto& [name, p] : proj_) n += p.a.bytes() + p.b.bytes();
  return n;
}

absl::Status AdapterTable::Attach(BlockKind kind, int32_t key,
                                  std::shared_ptr<const LoraAdapter> a) {
  if (key == 0) return absl::InvalidArgumentError("adapter key 0 means 'no adapter'");
  if (a == nullptr || a->kind() != kind) {
    return absl::InvalidArgumentError(
        absl::StrCat("a LoRA adapter for ", a ? BlockKindName(a->kind()) : "nothing",
                     " cannot attach to a ", BlockKindName(kind), " block"));
  }
  adapters_[key] = std::move(a);
  return absl::OkStatus();
}

void AdapterTable::Apply(const BlockIo& io, const std::string& target, ExecContext& ctx,
                         const float* x, float* y, int ldy, int col0) const {
  if (adapters_.empty()) return;
  int row = 0;
  for (size_t i = 0; i < io.spans.size();) {
    const int32_t key = io.spans[i].adapter;
    const int first = row;
    while (i < io.spans.size() && io.spans[i].adapter == key) row += io.spans[i++].len;
    auto it = key == 0 ? adapters_.end() : adapters_.find(key);
    if (it == adapters_.end()) continue;
    const LoraProjection* p = it->second->Find(target);
    if (p == nullptr) continue;
    const int rows = row - first, in = p->a.in_features(), rank = p->a.out_features(), out = p->b.out_features();
    float* tmp = ctx.Scratch(4, static_cast<size_t>(rows) * rank);
    float* d = ctx.Scratch(5, static_cast<size_t>(rows) * out);
    p->a.Forward(ctx.pool(), x + static_cast<size_t>(first) * in, rows, tmp);
    p->b.Forward(ctx.pool(), tmp, rows, d);
    for (int r = 0; r < rows; ++r) {
      float* yr = y + static_cast<size_t>(first + r) * ldy + col0;
      const float* dr = d + static_cast<size_t>(r) * out;
      for (int j = 0; j < out; ++j) yr[j] += p->scale * dr[j];
    }
  }
}

}  // namespace blockserve::runtime
