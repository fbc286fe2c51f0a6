#include "tests/testing/hf_export.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "blockzoo/formats/safetensors.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace blockserve::testing {

using runtime::Tensor;

namespace {

// HF's permute(w, n_heads, rows, cols): within each head, row 2i + j moves to j * hd/2 + i.
Tensor PermuteForRotateHalf(const Tensor& w, int n_heads) {
  const int64_t rows = w.dim(0), cols = w.dim(1), hd = rows / n_heads;
  const size_t row_bytes = cols * runtime::DTypeSize(w.dtype());
  Tensor out = Tensor::Zeros(w.dtype(), w.shape());
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t from = h * hd + 2 * i + j, to = h * hd + j * (hd / 2) + i;
        std::memcpy(static_cast<char*>(out.mutable_raw()) + to * row_bytes,
                    static_cast<const char*>(w.raw()) + from * row_bytes, row_bytes);
      }
    }
  }
  return out;
}

absl::Status WriteFile(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

}  // namespace

absl::Status ExportHfLlama(const runtime::ModelWeights& w, const std::string& dir, int shards,
                           const std::string& tokenizer_model) {
  const runtime::ModelConfig& c = w.config;
  std::filesystem::create_directories(dir);
  std::map<std::string, Tensor> hf;
  auto get = [&](const std::string& name) { return w.tensors.at(name); };
  hf["model.embed_tokens.weight"] = get("tok_embeddings");
  hf["model.norm.weight"] = get("norm");
  if (!c.tied_embeddings) hf["lm_head.weight"] = get("output");
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = absl::StrCat("model.layers.", l, ".");
    auto lt = [&](const char* n) { return get(runtime::LayerTensor(l, n)); };
    hf[p + "self_attn.q_proj.weight"] = PermuteForRotateHalf(lt("wq"), c.n_heads);
    hf[p + "self_attn.k_proj.weight"] = PermuteForRotateHalf(lt("wk"), c.n_kv_heads);
    hf[p + "self_attn.v_proj.weight"] = lt("wv");
    hf[p + "self_attn.o_proj.weight"] = lt("wo");
    hf[p + "mlp.gate_proj.weight"] = lt("w1");
    hf[p + "mlp.down_proj.weight"] = lt("w2");
    hf[p + "mlp.up_proj.weight"] = lt("w3");
    hf[p + "input_layernorm.weight"] = lt("attention_norm");
    hf[p + "post_attention_layernorm.weight"] = lt("ffn_norm");
  }
  // Older converters saved the rotary inverse frequencies; importers must skip them.
  Tensor inv_freq = Tensor::Zeros(runtime::DType::kF32, {c.head_dim() / 2});
  hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = inv_freq;

  // Round-robin the tensors over the shards.
  std::vector<std::map<std::string, const Tensor*>> parts(shards);
  nlohmann::json weight_map = nlohmann::json::object();
  int i = 0;
  for (const auto& [name, t] : hf) {
    const int s = i++ % shards;
    parts[s][name] = &t;
    weight_map[name] = shards == 1 ? "model.safetensors"
                                   : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
  }
  for (int s = 0; s < shards; ++s) {
    std::string bytes = blockzoo::SafetensorsHeader(parts[s], {{"format", "pt"}});
    for (const auto& [name, t] : parts[s]) {
      bytes.append(static_cast<const char*>(t->raw()), t->nbytes());
    }
    const std::string file = shards == 1 ? "model.safetensors"
                                         : absl::StrFormat("model-%05d-of-%05d.safetensors", s + 1, shards);
    RETURN_IF_ERROR(WriteFile(dir + "/" + file, bytes));
  }
  if (shards > 1) {
    nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}};
    RETURN_IF_ERROR(WriteFile(dir + "/model.safetensors.index.json", index.dump(2)));
  }
  nlohmann::json config = {{"architectures", {"LlamaForCausalLM"}},
                           {"model_type", "llama"},
                           {"hidden_size", c.dim},
                           {"intermediate_size", c.hidden_dim},
                           {"num_hidden_layers", c.n_layers},
                           {"num_attention_heads", c.n_heads},
                           {"num_key_value_heads", c.n_kv_heads},
                           {"vocab_size", c.vocab_size},
                           {"max_position_embeddings", c.max_seq_len},
                           {"rms_norm_eps", c.norm_eps},
                           {"rope_theta", c.rope_theta},
                           {"rope_scaling", nullptr},
                           {"hidden_act", "silu"},
                           {"tie_word_embeddings", c.tied_embeddings},
                           {"torch_dtype", "float32"},
                           {"bos_token_id", 1},
                           {"eos_token_id", 2}};
  RETURN_IF_ERROR(WriteFile(dir + "/config.json", config.dump(2)));
  if (!tokenizer_model.empty()) {
    std::filesystem::copy_file(tokenizer_model, dir + "/tokenizer.model",
                               std::filesystem::copy_options::overwrite_existing);
  }
  return absl::OkStatus();
}

}  // namespace blockserve::testing
