#include "blockzoo/formats/peft.h"

#include <cmath>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "blockzoo/file_util.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using runtime::BlockKind;
namespace fs = std::filesystem;

namespace {

absl::Status Bad(const std::string& source, const std::string& field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "': ", what));
}

// "q_proj" -> (attn, "wq"), ...
bool MapModule(const std::string& module, BlockKind* kind, std::string* target) {
  static const std::map<std::string, std::pair<BlockKind, const char*>> kMap = {
      {"self_attn.q_proj", {BlockKind::kAttn, "wq"}}, {"self_attn.k_proj", {BlockKind::kAttn, "wk"}},
      {"self_attn.v_proj", {BlockKind::kAttn, "wv"}}, {"self_attn.o_proj", {BlockKind::kAttn, "wo"}},
      {"mlp.gate_proj", {BlockKind::kFfn, "w1"}},      {"mlp.down_proj", {BlockKind::kFfn, "w2"}},
      {"mlp.up_proj", {BlockKind::kFfn, "w3"}}};
  auto it = kMap.find(module);
  if (it == kMap.end()) return false;
  *kind = it->second.first;
  *target = it->second.second;
  return true;
}

}  // namespace

absl::Status ParsePeftConfig(const std::string& text, const std::string& cfg_path,
                             PeftAdapter* out) {
  out->config = nlohmann::json::parse(text, nullptr, false);
  const auto& c = out->config;
  if (c.is_discarded() || !c.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(cfg_path, ": not a JSON object"));
  }
  if (c.contains("peft_type") && c["peft_type"] != "LORA") {
    return Bad(cfg_path, "peft_type", "only LORA adapters are supported");
  }
  if (!c.contains("r") || !c["r"].is_number_integer() || c["r"].get<int64_t>() < 1 ||
      c["r"].get<int64_t>() > 4096) {
    return Bad(cfg_path, "r", "missing or not a rank in [1, 4096]");
  }
  out->rank = c["r"].get<int>();
  if (!c.contains("lora_alpha") || !c["lora_alpha"].is_number()) {
    return Bad(cfg_path, "lora_alpha", "missing or not a number");
  }
  out->alpha = c["lora_alpha"].get<float>();
  // Flags: absent, null or a boolean (json::value() would throw on another type).
  auto flag = [&](const char* key, bool* v) {
    *v = false;
    if (!c.contains(key) || c[key].is_null()) return absl::OkStatus();
    if (!c[key].is_boolean()) return Bad(cfg_path, key, "must be true or false");
    *v = c[key].get<bool>();
    return absl::OkStatus();
  };
  bool rslora = false, fan_in_fan_out = false;
  RETURN_IF_ERROR(flag("use_rslora", &rslora));
  RETURN_IF_ERROR(flag("fan_in_fan_out", &fan_in_fan_out));
  if (rslora) out->alpha *= std::sqrt(static_cast<float>(out->rank));
  if (fan_in_fan_out) return Bad(cfg_path, "fan_in_fan_out", "not supported");
  if (c.contains("bias") && c["bias"] != "none") return Bad(cfg_path, "bias", "must be \"none\"");
  for (const char* key : {"rank_pattern", "alpha_pattern", "modules_to_save"}) {
    if (c.contains(key) && !c[key].is_null() && !c[key].empty()) {
      return Bad(cfg_path, key, std::string(key) == "modules_to_save"
                                    ? "fully trained extra modules are not supported"
                                    : "per-module ranks/alphas are not supported");
    }
  }
  return absl::OkStatus();
}

absl::Status MapPeftTensors(const std::string& source, PeftAdapter* out) {
  constexpr absl::string_view kPrefix = "base_model.model.model.layers.";
  for (const auto& entry : out->file.tensors) {
    // A plain reference, not a structured binding: clang 14 cannot capture bindings in a lambda.
    const std::string& name = entry.first;
    const runtime::Tensor& t = entry.second;
    // base_model.model.model.layers.<L>.<module>.lora_<A|B>[.<adapter>].weight
    auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", name, "': ", what));
    };
    if (!absl::StartsWith(name, kPrefix)) return bad("not a LoRA weight of a decoder layer");
    std::vector<std::string> parts = absl::StrSplit(name.substr(kPrefix.size()), '.');
    if (parts.size() < 5 || parts.back() != "weight") return bad("unexpected name");
    if (parts[0].empty() || parts[0].size() > 5 ||
        parts[0].find_first_not_of("0123456789") != std::string::npos) {
      return bad("bad layer index");
    }
    const int layer = std::stoi(parts[0]);
    const std::string module = parts[1] + "." + parts[2];
    const std::string ab = parts[3];
    if (ab != "lora_A" && ab != "lora_B") return bad("neither lora_A nor lora_B");
    if (parts.size() > 6) return bad("unexpected name");
    BlockKind kind;
    std::string target;
    if (!MapModule(module, &kind, &target)) return bad(absl::StrCat("unsupported module ", module));
    auto& block = out->blocks[{kind, layer}];
    if (!block.emplace(target + "." + ab, t).second) return bad("appears twice");
  }
  if (out->blocks.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": no LoRA tensors"));
  return absl::OkStatus();
}

absl::StatusOr<PeftAdapter> LoadPeftAdapter(const std::string& dir) {
  const fs::path root(dir);
  const std::string cfg_path = (root / "adapter_config.json").string();
  ASSIGN_OR_RETURN(std::string text, ReadWholeFile(cfg_path, 16 << 20));
  PeftAdapter out;
  RETURN_IF_ERROR(ParsePeftConfig(text, cfg_path, &out));
  const fs::path weights = root / "adapter_model.safetensors";
  std::error_code ec;
  if (!fs::exists(weights, ec)) {
    return absl::NotFoundError(absl::StrCat(
        weights.string(), ": missing (only safetensors adapters are read, not adapter_model.bin)"));
  }
  ASSIGN_OR_RETURN(out.file, ReadSafetensors(weights.string()));
  RETURN_IF_ERROR(MapPeftTensors(weights.string(), &out));
  return out;
}

}  // namespace blockserve::blockzoo
