#include "blockzoo/formats/gguf_model.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "runtime/status_macros.h"
#include "runtime/tokenizer/byte_level_bpe.h"
#include "runtime/tokenizer/sentencepiece_bpe.h"

namespace blockserve::blockzoo {
namespace {

using runtime::DType;
using runtime::ModelConfig;
using runtime::ModelWeights;

// GGUF tensor name -> canonical name ("" = not a weight we use).
std::string CanonicalName(const std::string& g) {
  static const std::pair<const char*, const char*> kGlobal[] = {
      {"token_embd.weight", "tok_embeddings"},
      {"output_norm.weight", "norm"},
      {"output.weight", "output"},
  };
  for (const auto& [from, to] : kGlobal) {
    if (g == from) return to;
  }
  static const std::pair<const char*, const char*> kLayer[] = {
      {"attn_norm.weight", "attention_norm"}, {"attn_q.weight", "wq"},
      {"attn_k.weight", "wk"},                {"attn_v.weight", "wv"},
      {"attn_output.weight", "wo"},           {"ffn_norm.weight", "ffn_norm"},
      {"ffn_gate.weight", "w1"},              {"ffn_down.weight", "w2"},
      {"ffn_up.weight", "w3"},
  };
  int layer = -1;
  int consumed = 0;
  if (std::sscanf(g.c_str(), "blk.%d.%n", &layer, &consumed) != 1 || layer < 0) return "";
  const std::string rest = g.substr(consumed);
  for (const auto& [from, to] : kLayer) {
    if (rest == from) return runtime::LayerTensor(layer, to);
  }
  return "";
}

absl::StatusOr<int> IntKey(const GgufFile& f, const std::string& key, int64_t dflt, bool required) {
  auto v = f.GetInt(key);
  if (!v.ok()) {
    if (!required && absl::IsNotFound(v.status())) return static_cast<int>(dflt);
    return v.status();
  }
  if (*v < 0 || *v > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrCat(f.source, ": GGUF key '", key, "' = ", *v, " out of range"));
  }
  return static_cast<int>(*v);
}

absl::StatusOr<ModelConfig> ReadConfig(const GgufFile& f) {
  ASSIGN_OR_RETURN(std::string arch, f.GetString("general.architecture"));
  if (arch != "llama") {
    return absl::UnimplementedError(
        absl::StrCat(f.source, ": GGUF architecture '", arch, "' is not supported (llama only)"));
  }
  ModelConfig c;
  ASSIGN_OR_RETURN(c.dim, IntKey(f, "llama.embedding_length", 0, true));
  ASSIGN_OR_RETURN(c.hidden_dim, IntKey(f, "llama.feed_forward_length", 0, true));
  ASSIGN_OR_RETURN(c.n_layers, IntKey(f, "llama.block_count", 0, true));
  ASSIGN_OR_RETURN(c.n_heads, IntKey(f, "llama.attention.head_count", 0, true));
  ASSIGN_OR_RETURN(c.n_kv_heads, IntKey(f, "llama.attention.head_count_kv", c.n_heads, false));
  ASSIGN_OR_RETURN(c.max_seq_len, IntKey(f, "llama.context_length", 2048, false));
  auto eps = f.GetFloat("llama.attention.layer_norm_rms_epsilon");
  if (eps.ok()) c.norm_eps = static_cast<float>(*eps);
  else if (!absl::IsNotFound(eps.status())) return eps.status();
  auto theta = f.GetFloat("llama.rope.freq_base");
  if (theta.ok()) c.rope_theta = static_cast<float>(*theta);
  else if (!absl::IsNotFound(theta.status())) return theta.status();
  // llama.cpp's "llama" graph uses interleaved-pair RoPE; HF converters permute Q/K to match.
  c.rope_style = runtime::RopeStyle::kInterleaved;
  if (c.n_heads > 0) {
    ASSIGN_OR_RETURN(int rope_dims, IntKey(f, "llama.rope.dimension_count", c.dim / c.n_heads, false));
    if (rope_dims != c.dim / c.n_heads) {
      return absl::UnimplementedError(absl::StrCat(f.source, ": partial RoPE (dimension_count ",
                                                   rope_dims, ") is not supported"));
    }
  }
  return c;
}

}  // namespace

absl::StatusOr<ModelWeights> GgufToWeights(const GgufFile& f, const uint8_t* data,
                                           std::shared_ptr<const void> owner) {
  ModelWeights w;
  w.source = f.source;
  ASSIGN_OR_RETURN(w.config, ReadConfig(f));
  for (const GgufTensorInfo& t : f.tensors) {
    const std::string name = CanonicalName(t.name);
    if (name.empty()) continue;
    DType dtype;
    switch (t.ggml_type) {
      case 0: dtype = DType::kF32; break;
      case 1: dtype = DType::kF16; break;
      case 30: dtype = DType::kBF16; break;
      default:
        return absl::UnimplementedError(absl::StrCat(f.source, ": tensor '", t.name,
                                                     "' has ggml type ", t.ggml_type,
                                                     " (only F32, F16 and BF16 are supported)"));
    }
    std::vector<int64_t> shape(t.ne.rbegin(), t.ne.rend());  // [ne1][ne0] = [out][in]
    w.tensors[name] = runtime::Tensor::View(dtype, std::move(shape), data + t.offset, owner);
  }
  auto emb = w.tensors.find("tok_embeddings");
  if (emb == w.tensors.end() || emb->second.rank() != 2) {
    return absl::InvalidArgumentError(absl::StrCat(f.source, ": missing 2-D token_embd.weight"));
  }
  w.config.vocab_size = static_cast<int>(std::min<int64_t>(emb->second.dim(0), 1 << 30));
  w.config.tied_embeddings = w.tensors.count("output") == 0;
  RETURN_IF_ERROR(w.config.Validate(f.source));
  return w;
}

absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> GgufTokenizer(const GgufFile& f) {
  ASSIGN_OR_RETURN(std::string model, f.GetString("tokenizer.ggml.model"));
  const GgufValue* tokens = f.Find("tokenizer.ggml.tokens");
  if (tokens == nullptr || tokens->type != GgufType::kArray ||
      tokens->elem_type != GgufType::kString || tokens->strings.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.source, ": GGUF key 'tokenizer.ggml.tokens' missing or not strings"));
  }
  auto special = [&](const char* key) -> int32_t {
    auto v = f.GetInt(key);
    return v.ok() && *v >= 0 && *v < static_cast<int64_t>(tokens->strings.size())
               ? static_cast<int32_t>(*v) : -1;
  };
  const int32_t bos = special("tokenizer.ggml.bos_token_id");
  const int32_t eos = special("tokenizer.ggml.eos_token_id");
  if (model == "llama") {
    const GgufValue* scores = f.Find("tokenizer.ggml.scores");
    std::vector<runtime::SentencePieceBpe::Piece> pieces(tokens->strings.size());
    for (size_t i = 0; i < pieces.size(); ++i) {
      pieces[i].text = absl::StrReplaceAll(tokens->strings[i], {{"\xE2\x96\x81", " "}});
      if (scores != nullptr && i < scores->floats.size()) {
        pieces[i].score = static_cast<float>(scores->floats[i]);
      }
    }
    return std::unique_ptr<runtime::Tokenizer>(
        std::make_unique<runtime::SentencePieceBpe>(std::move(pieces), bos, eos));
  }
  if (model == "gpt2") {
    const GgufValue* merges = f.Find("tokenizer.ggml.merges");
    static const std::vector<std::string> kNone;
    ASSIGN_OR_RETURN(auto bpe, runtime::ByteLevelBpe::Create(
                                   tokens->strings, merges != nullptr ? merges->strings : kNone,
                                   bos, eos, f.source));
    return std::unique_ptr<runtime::Tokenizer>(std::move(bpe));
  }
  return absl::UnimplementedError(
      absl::StrCat(f.source, ": tokenizer model '", model, "' is not supported"));
}

}  // namespace blockserve::blockzoo
