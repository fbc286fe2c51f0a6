#include "blockzoo/manifest.h"

#include "absl/strings/str_cat.h"
#include "blockzoo/formats/safetensors.h"
#include "blockzoo/sha256.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using runtime::BlockKind;
using runtime::DType;
using runtime::ModelConfig;
using Json = nlohmann::json;

namespace {

constexpr int kManifestVersion = 1;

// Reads `obj[key]` as T with type checks; errors name the source and the field path.
class Fields {
 public:
  Fields(const Json& obj, std::string source, std::string path)
      : obj_(obj), source_(std::move(source)), path_(std::move(path)) {}

  absl::Status Bad(const std::string& key, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field '", path_, path_.empty() ? "" : ".", key, "': ", what));
  }
  const Json* Find(const std::string& key) const {
    auto it = obj_.find(key);
    return it == obj_.end() ? nullptr : &*it;
  }
  absl::StatusOr<int64_t> Int(const std::string& key, int64_t lo, int64_t hi) const {
    const Json* v = Find(key);
    if (v == nullptr) return Bad(key, "missing");
    if (!v->is_number_integer()) return Bad(key, "not an integer");
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) return Bad(key, absl::StrCat("out of range [", lo, ", ", hi, "]"));
    return x;
  }
  absl::StatusOr<double> Number(const std::string& key) const {
    const Json* v = Find(key);
    if (v == nullptr) return Bad(key, "missing");
    if (!v->is_number()) return Bad(key, "not a number");
    return v->get<double>();
  }
  absl::StatusOr<std::string> String(const std::string& key, bool required = true) const {
    const Json* v = Find(key);
    if (v == nullptr) {
      if (required) return Bad(key, "missing");
      return std::string();
    }
    if (!v->is_string()) return Bad(key, "not a string");
    return v->get<std::string>();
  }
  absl::StatusOr<bool> Bool(const std::string& key, bool dflt) const {
    const Json* v = Find(key);
    if (v == nullptr) return dflt;
    if (!v->is_boolean()) return Bad(key, "not a boolean");
    return v->get<bool>();
  }

 private:
  const Json& obj_;
  std::string source_, path_;
};

}  // namespace

uint64_t Manifest::bytes() const {
  uint64_t n = 0;
  for (const ChainEntry& e : chain) n += e.bytes;
  return n;
}

bool IsModelNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-';
}

bool IsValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 128 || name[0] == '.') return false;
  for (char c : name) {
    if (!IsModelNameChar(c)) return false;
  }
  return true;
}

std::vector<std::pair<BlockKind, int>> ExpectedChain(const ModelConfig& c) {
  std::vector<std::pair<BlockKind, int>> out = {{BlockKind::kEmbed, -1}};
  for (int l = 0; l < c.n_layers; ++l) {
    out.emplace_back(BlockKind::kAttn, l);
    out.emplace_back(BlockKind::kFfn, l);
  }
  out.emplace_back(BlockKind::kHead, -1);
  return out;
}

Json BlockHparams(BlockKind kind, const ModelConfig& c) {
  switch (kind) {
    case BlockKind::kEmbed:
      return {{"vocab_size", c.vocab_size}, {"dim", c.dim}};
    case BlockKind::kAttn:
      return {{"dim", c.dim},
              {"n_heads", c.n_heads},
              {"n_kv_heads", c.n_kv_heads},
              {"norm_eps", static_cast<double>(c.norm_eps)},
              {"rope_theta", static_cast<double>(c.rope_theta)},
              {"rope_style", runtime::RopeStyleName(c.rope_style)}};
    case BlockKind::kFfn:
      return {{"dim", c.dim},
              {"hidden_dim", c.hidden_dim},
              {"norm_eps", static_cast<double>(c.norm_eps)}};
    case BlockKind::kHead:
      return {{"vocab_size", c.vocab_size},
              {"dim", c.dim},
              {"norm_eps", static_cast<double>(c.norm_eps)}};
  }
  return Json::object();
}

Json FamilyToJson(const ModelConfig& c) {
  return {{"architecture", "llama"},
          {"dim", c.dim},
          {"hidden_dim", c.hidden_dim},
          {"n_layers", c.n_layers},
          {"n_heads", c.n_heads},
          {"n_kv_heads", c.n_kv_heads},
          {"vocab_size", c.vocab_size},
          {"max_seq_len", c.max_seq_len},
          {"norm_eps", static_cast<double>(c.norm_eps)},
          {"rope_theta", static_cast<double>(c.rope_theta)},
          {"rope_style", runtime::RopeStyleName(c.rope_style)},
          {"tied_embeddings", c.tied_embeddings}};
}

absl::StatusOr<ModelConfig> FamilyFromJson(const Json& j, const std::string& source) {
  if (!j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'family' is not an object"));
  }
  Fields f(j, source, "family");
  ModelConfig c;
  ASSIGN_OR_RETURN(std::string arch, f.String("architecture"));
  if (arch != "llama") return f.Bad("architecture", "only 'llama' is supported");
  constexpr int64_t kMax = int64_t{1} << 24;
  ASSIGN_OR_RETURN(c.dim, f.Int("dim", 1, kMax));
  ASSIGN_OR_RETURN(c.hidden_dim, f.Int("hidden_dim", 1, kMax));
  ASSIGN_OR_RETURN(c.n_layers, f.Int("n_layers", 1, 4096));
  ASSIGN_OR_RETURN(c.n_heads, f.Int("n_heads", 1, kMax));
  ASSIGN_OR_RETURN(c.n_kv_heads, f.Int("n_kv_heads", 1, kMax));
  ASSIGN_OR_RETURN(c.vocab_size, f.Int("vocab_size", 1, kMax));
  ASSIGN_OR_RETURN(c.max_seq_len, f.Int("max_seq_len", 1, kMax));
  ASSIGN_OR_RETURN(double eps, f.Number("norm_eps"));
  ASSIGN_OR_RETURN(double theta, f.Number("rope_theta"));
  c.norm_eps = static_cast<float>(eps);
  c.rope_theta = static_cast<float>(theta);
  ASSIGN_OR_RETURN(std::string rope, f.String("rope_style"));
  if (rope == "interleaved") {
    c.rope_style = runtime::RopeStyle::kInterleaved;
  } else if (rope == "rotate_half") {
    c.rope_style = runtime::RopeStyle::kRotateHalf;
  } else {
    return f.Bad("rope_style", "must be 'interleaved' or 'rotate_half'");
  }
  ASSIGN_OR_RETURN(c.tied_embeddings, f.Bool("tied_embeddings", false));
  RETURN_IF_ERROR(c.Validate(source));
  return c;
}

absl::StatusOr<BlockKind> ParseBlockKind(const std::string& s) {
  for (BlockKind k : {BlockKind::kEmbed, BlockKind::kAttn, BlockKind::kFfn, BlockKind::kHead}) {
    if (s == runtime::BlockKindName(k)) return k;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown block kind '", s, "'"));
}

absl::StatusOr<DType> ParseDTypeName(const std::string& s) {
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kI32}) {
    if (s == SafetensorsDType(t)) return t;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown dtype '", s, "'"));
}

std::string SerializeManifest(const Manifest& m) {
  Json chain = Json::array();
  for (const ChainEntry& e : m.chain) {
    Json tensors = Json::object();
    for (const auto& [name, spec] : e.tensors) {
      tensors[name] = {{"dtype", SafetensorsDType(spec.dtype)}, {"shape", spec.shape}};
    }
    Json j = {{"kind", runtime::BlockKindName(e.kind)},
              {"block", e.block},
              {"bytes", e.bytes},
              {"tensors", tensors}};
    if (e.layer >= 0) j["layer"] = e.layer;
    if (!e.lora.empty()) j["lora"] = e.lora;
    chain.push_back(std::move(j));
  }
  Json j = {{"format", "blockserve-model"},
            {"version", kManifestVersion},
            {"name", m.name},
            {"family", FamilyToJson(m.family)},
            {"chain", chain},
            {"synthetic", m.synthetic},
            {"provenance", m.provenance}};
  if (!m.tokenizer.empty()) {
    j["tokenizer"] = {{"id", m.tokenizer}, {"format", m.tokenizer_format}};
  }
  if (!m.parent.empty()) j["parent"] = m.parent;
  if (!m.chat_template.empty()) j["chat_template"] = m.chat_template;
  return j.dump(1) + "\n";
}

absl::StatusOr<Manifest> ParseManifest(const std::string& text, const std::string& source) {
  const Json j = Json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  Fields f(j, source, "");
  Manifest m;
  ASSIGN_OR_RETURN(std::string format, f.String("format"));
  if (format != "blockserve-model") return f.Bad("format", "not 'blockserve-model'");
  ASSIGN_OR_RETURN(int64_t version, f.Int("version", 1, 1000));
  if (version != kManifestVersion) {
    return f.Bad("version", absl::StrCat("version ", version, " is not supported (", kManifestVersion,
                                         " is)"));
  }
  ASSIGN_OR_RETURN(m.name, f.String("name"));
  if (!IsValidModelName(m.name)) return f.Bad("name", "not a valid model name");
  const Json* family = f.Find("family");
  if (family == nullptr) return f.Bad("family", "missing");
  ASSIGN_OR_RETURN(m.family, FamilyFromJson(*family, source));
  ASSIGN_OR_RETURN(m.parent, f.String("parent", /*required=*/false));
  if (!m.parent.empty() && !IsValidModelName(m.parent)) return f.Bad("parent", "not a model name");
  ASSIGN_OR_RETURN(m.synthetic, f.Bool("synthetic", false));
  ASSIGN_OR_RETURN(m.chat_template, f.String("chat_template", /*required=*/false));
  if (const Json* p = f.Find("provenance"); p != nullptr) {
    if (!p->is_object()) return f.Bad("provenance", "not an object");
    m.provenance = *p;
  }
  if (const Json* t = f.Find("tokenizer"); t != nullptr) {
    if (!t->is_object()) return f.Bad("tokenizer", "not an object");
    Fields tf(*t, source, "tokenizer");
    ASSIGN_OR_RETURN(m.tokenizer, tf.String("id"));
    ASSIGN_OR_RETURN(m.tokenizer_format, tf.String("format"));
    if (!IsHexId(m.tokenizer)) return tf.Bad("id", "not a 64-digit hex id");
    if (m.tokenizer_format != "llama2c" && m.tokenizer_format != "hf-json" &&
        m.tokenizer_format != "sentencepiece" && m.tokenizer_format != "gguf") {
      return tf.Bad("format", "must be llama2c, hf-json, sentencepiece or gguf");
    }
  }
  const Json* chain = f.Find("chain");
  if (chain == nullptr || !chain->is_array()) return f.Bad("chain", "missing or not an array");
  const auto expected = ExpectedChain(m.family);
  if (chain->size() != expected.size()) {
    return f.Bad("chain", absl::StrCat(chain->size(), " entries, the family needs ",
                                       expected.size()));
  }
  for (size_t i = 0; i < chain->size(); ++i) {
    const Json& e = (*chain)[i];
    const std::string path = absl::StrCat("chain[", i, "]");
    if (!e.is_object()) return f.Bad(path, "not an object");
    Fields ef(e, source, path);
    ChainEntry entry;
    ASSIGN_OR_RETURN(std::string kind, ef.String("kind"));
    auto k = ParseBlockKind(kind);
    if (!k.ok()) return ef.Bad("kind", k.status().message());
    entry.kind = *k;
    entry.layer = -1;
    if (ef.Find("layer") != nullptr) {
      ASSIGN_OR_RETURN(entry.layer, ef.Int("layer", 0, m.family.n_layers - 1));
    }
    if (entry.kind != expected[i].first || entry.layer != expected[i].second) {
      return ef.Bad("kind", absl::StrCat("expected ", runtime::BlockKindName(expected[i].first),
                                         expected[i].second >= 0 ? " of layer " : "",
                                         expected[i].second >= 0
                                             ? std::to_string(expected[i].second)
                                             : std::string()));
    }
    ASSIGN_OR_RETURN(entry.block, ef.String("block"));
    if (!IsHexId(entry.block)) return ef.Bad("block", "not a 64-digit hex id");
    ASSIGN_OR_RETURN(entry.lora, ef.String("lora", /*required=*/false));
    if (!entry.lora.empty() && !IsHexId(entry.lora)) return ef.Bad("lora", "not a hex id");
    ASSIGN_OR_RETURN(int64_t bytes, ef.Int("bytes", 1, int64_t{1} << 50));
    entry.bytes = static_cast<uint64_t>(bytes);
    const Json* tensors = ef.Find("tensors");
    if (tensors == nullptr || !tensors->is_object() || tensors->empty()) {
      return ef.Bad("tensors", "missing or empty");
    }
    for (auto it = tensors->begin(); it != tensors->end(); ++it) {
      Fields tf(it.value(), source, absl::StrCat(path, ".tensors.", it.key()));
      if (!it.value().is_object()) return tf.Bad("", "not an object");
      TensorSpec spec;
      ASSIGN_OR_RETURN(std::string dt, tf.String("dtype"));
      auto dtype = ParseDTypeName(dt);
      if (!dtype.ok()) return tf.Bad("dtype", dtype.status().message());
      spec.dtype = *dtype;
      const Json* shape = tf.Find("shape");
      if (shape == nullptr || !shape->is_array() || shape->size() > 8) {
        return tf.Bad("shape", "missing or not an array of at most 8 sizes");
      }
      for (const Json& d : *shape) {
        if (!d.is_number_unsigned() || d.get<uint64_t>() > (uint64_t{1} << 40)) {
          return tf.Bad("shape", "entries must be sizes");
        }
        spec.shape.push_back(d.get<int64_t>());
      }
      entry.tensors[it.key()] = std::move(spec);
    }
    m.chain.push_back(std::move(entry));
  }
  return m;
}

}  // namespace blockserve::blockzoo
