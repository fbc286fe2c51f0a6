#include "blockzoo/formats/hf_llama.h"

#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "blockzoo/file_util.h"
#include "blockzoo/formats/safetensors.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using Json = nlohmann::json;
namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxJson = 64 << 20;

absl::Status Bad(const std::string& source, const std::string& field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "': ", what));
}

absl::StatusOr<int64_t> GetInt(const Json& j, const std::string& source, const std::string& key,
                               std::optional<int64_t> dflt = std::nullopt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (dflt) return *dflt;
    return Bad(source, key, "missing");
  }
  if (!it->is_number_integer()) return Bad(source, key, "not an integer");
  const int64_t v = it->get<int64_t>();
  if (v <= 0 || v > (int64_t{1} << 24)) return Bad(source, key, "out of range");
  return v;
}

absl::StatusOr<double> GetNumber(const Json& j, const std::string& source, const std::string& key,
                                 double dflt) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return dflt;
  if (!it->is_number()) return Bad(source, key, "not a number");
  return it->get<double>();
}

// HF tensor name -> canonical name; empty when the tensor is not used by the forward pass.
std::string CanonicalName(const std::string& hf) {
  static const std::pair<const char*, const char*> kLayer[] = {
      {"self_attn.q_proj.weight", "wq"},      {"self_attn.k_proj.weight", "wk"},
      {"self_attn.v_proj.weight", "wv"},      {"self_attn.o_proj.weight", "wo"},
      {"mlp.gate_proj.weight", "w1"},         {"mlp.down_proj.weight", "w2"},
      {"mlp.up_proj.weight", "w3"},           {"input_layernorm.weight", "attention_norm"},
      {"post_attention_layernorm.weight", "ffn_norm"}};
  if (hf == "model.embed_tokens.weight") return "tok_embeddings";
  if (hf == "model.norm.weight") return "norm";
  if (hf == "lm_head.weight") return "output";
  constexpr absl::string_view kPrefix = "model.layers.";
  if (!absl::StartsWith(hf, kPrefix)) return "";
  const size_t dot = hf.find('.', kPrefix.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf.substr(kPrefix.size(), dot - kPrefix.size());
  if (layer.empty() || layer.size() > 5 || layer.find_first_not_of("0123456789") != std::string::npos) {
    return "";
  }
  const std::string rest = hf.substr(dot + 1);
  for (const auto& [from, to] : kLayer) {
    if (rest == from) return absl::StrCat("layers.", std::stoi(layer), ".", to);
  }
  return "";
}

}  // namespace

absl::StatusOr<runtime::ModelConfig> ParseHfConfig(const std::string& text,
                                                   const std::string& source) {
  const Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  auto mt = j.find("model_type");
  if (mt == j.end() || !mt->is_string() || (*mt != "llama" && *mt != "mistral")) {
    return Bad(source, "model_type", "must be \"llama\" (Llama-family models are supported)");
  }
  if (auto act = j.find("hidden_act"); act != j.end() && (!act->is_string() || *act != "silu")) {
    return Bad(source, "hidden_act", "only silu is supported");
  }
  if (auto rs = j.find("rope_scaling"); rs != j.end() && !rs->is_null()) {
    return Bad(source, "rope_scaling", "RoPE scaling is not supported");
  }
  for (const char* bias : {"attention_bias", "mlp_bias"}) {
    if (auto b = j.find(bias); b != j.end() && b->is_boolean() && b->get<bool>()) {
      return Bad(source, bias, "biases are not supported");
    }
  }
  runtime::ModelConfig c;
  ASSIGN_OR_RETURN(c.dim, GetInt(j, source, "hidden_size"));
  ASSIGN_OR_RETURN(c.hidden_dim, GetInt(j, source, "intermediate_size"));
  ASSIGN_OR_RETURN(c.n_layers, GetInt(j, source, "num_hidden_layers"));
  ASSIGN_OR_RETURN(c.n_heads, GetInt(j, source, "num_attention_heads"));
  ASSIGN_OR_RETURN(c.n_kv_heads, GetInt(j, source, "num_key_value_heads", c.n_heads));
  ASSIGN_OR_RETURN(c.vocab_size, GetInt(j, source, "vocab_size"));
  ASSIGN_OR_RETURN(c.max_seq_len, GetInt(j, source, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(double eps, GetNumber(j, source, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(double theta, GetNumber(j, source, "rope_theta", 10000.0));
  if (auto hd = j.find("head_dim"); hd != j.end() && !hd->is_null()) {
    if (!hd->is_number_integer() || hd->get<int64_t>() * c.n_heads != c.dim) {
      return Bad(source, "head_dim", "must equal hidden_size / num_attention_heads");
    }
  }
  c.norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  c.rope_style = runtime::RopeStyle::kRotateHalf;
  if (auto tie = j.find("tie_word_embeddings"); tie != j.end()) {
    if (!tie->is_boolean()) return Bad(source, "tie_word_embeddings", "not a boolean");
    c.tied_embeddings = tie->get<bool>();
  }
  RETURN_IF_ERROR(c.Validate(source));
  return c;
}

absl::StatusOr<HfModel> LoadHfLlama(const std::string& dir) {
  const fs::path root(dir);
  const std::string config_path = (root / "config.json").string();
  ASSIGN_OR_RETURN(std::string config_text, ReadWholeFile(config_path, kMaxJson));
  HfModel out;
  ASSIGN_OR_RETURN(out.weights.config, ParseHfConfig(config_text, config_path));
  out.weights.source = dir;

  // Shard files: from the index when there is one, else model.safetensors.
  std::vector<std::string> shards;
  const fs::path index_path = root / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    ASSIGN_OR_RETURN(std::string text, ReadWholeFile(index_path.string(), kMaxJson));
    const Json index = Json::parse(text, nullptr, false);
    auto wm = index.is_object() ? index.find("weight_map") : index.end();
    if (index.is_discarded() || !index.is_object() || wm == index.end() || !wm->is_object()) {
      return Bad(index_path.string(), "weight_map", "missing or not an object");
    }
    std::set<std::string> unique;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it->is_string()) return Bad(index_path.string(), "weight_map." + it.key(), "not a file");
      const std::string file = it->get<std::string>();
      // Plain file names only: an index must not point outside the model directory.
      if (file.empty() || file.find('/') != std::string::npos || file == "." || file == ".." ||
          file.find('\0') != std::string::npos) {
        return Bad(index_path.string(), "weight_map." + it.key(),
                   absl::StrCat("'", file, "' is not a file name in the model directory"));
      }
      unique.insert(file);
    }
    shards.assign(unique.begin(), unique.end());
  } else {
    shards.push_back("model.safetensors");
  }
  for (const std::string& shard : shards) {
    ASSIGN_OR_RETURN(SafetensorsFile f, ReadSafetensors((root / shard).string()));
    for (auto& [name, t] : f.tensors) {
      const std::string canonical = CanonicalName(name);
      if (canonical.empty()) continue;  // e.g. rotary_emb.inv_freq: recomputed from the config
      if (!out.weights.tensors.emplace(canonical, t).second) {
        return absl::InvalidArgumentError(
            absl::StrCat((root / shard).string(), ": tensor '", name, "' appears twice"));
      }
    }
  }
  if (out.weights.config.tied_embeddings) {
    out.weights.tensors.erase("output");
  } else if (!out.weights.tensors.count("output")) {
    // Some exports tie without saying so in config.json.
    out.weights.config.tied_embeddings = true;
  }
  for (const char* tok : {"tokenizer.model", "tokenizer.json"}) {
    if (fs::exists(root / tok, ec)) {
      out.tokenizer = (root / tok).string();
      break;
    }
  }
  return out;
}

}  // namespace blockserve::blockzoo
