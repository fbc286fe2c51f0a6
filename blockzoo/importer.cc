#include "blockzoo/importer.h"

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "blockzoo/file_util.h"
#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "blockzoo/formats/hf_llama.h"
#include "blockzoo/formats/llama2c.h"
#include "blockzoo/formats/peft.h"
#include "blockzoo/model_loader.h"
#include "blockzoo/synthetic.h"
#include "nlohmann/json.hpp"
#include "runtime/mapped_file.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

namespace fs = std::filesystem;
using runtime::BlockKind;

namespace {

constexpr size_t kMaxTokenizerBytes = size_t{256} << 20;

// Reads a tokenizer file and checks that it loads and fits the model's vocabulary.
absl::StatusOr<TokenizerBytes> ReadTokenizer(const std::string& path, int vocab_size) {
  RETURN_IF_ERROR(LoadTokenizerFile(path, vocab_size).status());
  TokenizerBytes t;
  ASSIGN_OR_RETURN(t.bytes, ReadWholeFile(path, kMaxTokenizerBytes));
  t.format = TokenizerFormatForPath(path);
  return t;
}

// tokenizer_config.json's chat template: a string, or a list of named templates ("default"
// taken); "" when there is none.
absl::StatusOr<std::string> HfChatTemplate(const std::string& dir) {
  const std::string path = (fs::path(dir) / "tokenizer_config.json").string();
  std::error_code ec;
  if (!fs::exists(path, ec)) return std::string();
  ASSIGN_OR_RETURN(std::string text, ReadWholeFile(path, kMaxTokenizerBytes));
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  auto it = j.find("chat_template");
  if (it == j.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const auto& e : *it) {
      if (e.is_object() && e.value("name", "") == "default" && e.contains("template") &&
          e["template"].is_string()) {
        return e["template"].get<std::string>();
      }
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": chat_template must be a string or a list with a \"default\" entry"));
}

// The tokenizer.* keys of a GGUF as a tensor-free GGUF.
TokenizerBytes GgufTokenizerBytes(const GgufFile& g) {
  std::map<std::string, GgufValue> kv;
  for (const auto& [key, value] : g.kv) {
    if (key.rfind("tokenizer.", 0) == 0) kv.emplace(key, value);
  }
  return {SerializeGgufMetadata(kv), "gguf"};
}

}  // namespace

std::string ModelNameFromPath(const std::string& path) {
  fs::path p(path);
  while (!p.empty() && p.filename().empty()) p = p.parent_path();  // trailing '/'
  std::string name = fs::is_directory(p) ? p.filename().string() : p.stem().string();
  for (char& c : name) {
    if (!IsModelNameChar(c)) c = '-';
  }
  while (!name.empty() && name[0] == '.') name.erase(0, 1);
  if (name.size() > 128) name.resize(128);
  return name.empty() ? "model" : name;
}

absl::StatusOr<ImportResult> StoreModel(const Zoo& zoo, const FileLock& lock,
                                        const runtime::ModelWeights& w,
                                        const std::optional<TokenizerBytes>& tokenizer,
                                        Manifest tmpl, bool replace, const ProgressFn& progress) {
  if (!IsValidModelName(tmpl.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid model name '", tmpl.name, "': use 1-128 of A-Z a-z 0-9 . _ - (not starting with .)"));
  }
  if (!replace && zoo.HasModel(tmpl.name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("model '", tmpl.name, "' already exists in ", zoo.dir(), " (rm it first)"));
  }
  ASSIGN_OR_RETURN(std::vector<BlockTensors> blocks, SplitIntoBlocks(w));
  const auto kinds = ExpectedChain(w.config);
  ImportResult r;
  r.manifest = std::move(tmpl);
  r.manifest.family = w.config;
  uint64_t total = 0, done = 0;
  for (const BlockTensors& b : blocks) {
    for (const auto& [name, t] : b) total += t.nbytes();
  }
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (progress) progress("bytes", done, total);
    ASSIGN_OR_RETURN(PutBlockResult put, zoo.PutBlock(lock, kinds[i].first, w.config, blocks[i]));
    (put.existed ? r.blocks_shared : r.blocks_written)++;
    ChainEntry e;
    e.kind = kinds[i].first;
    e.layer = kinds[i].second;
    e.block = put.id;
    e.bytes = put.bytes;
    e.tensors = std::move(put.tensors);
    r.manifest.chain.push_back(std::move(e));
    for (const auto& [name, t] : blocks[i]) done += t.nbytes();
  }
  if (progress) progress("bytes", total, total);
  if (tokenizer) {
    ASSIGN_OR_RETURN(r.manifest.tokenizer, zoo.PutTokenizer(lock, tokenizer->bytes, tokenizer->format));
    r.manifest.tokenizer_format = tokenizer->format;
  }
  RETURN_IF_ERROR(zoo.PutManifest(lock, r.manifest, replace));
  return r;
}

namespace {

// HF's q/k row order (rotate-half) back to llama2.c's interleaved order, for B [out, r].
runtime::Tensor UnpermuteRows(const runtime::Tensor& b, int n_heads) {
  const int64_t rows = b.dim(0), cols = b.dim(1), hd = rows / n_heads;
  const size_t row_bytes = cols * runtime::DTypeSize(b.dtype());
  runtime::Tensor out = runtime::Tensor::Zeros(b.dtype(), b.shape());
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < hd / 2; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(static_cast<char*>(out.mutable_raw()) + (h * hd + 2 * i + j) * row_bytes,
                    static_cast<const char*>(b.raw()) + (h * hd + j * (hd / 2) + i) * row_bytes,
                    row_bytes);
      }
    }
  }
  return out;
}

}  // namespace

absl::StatusOr<ImportResult> ImportPeftAdapter(const Zoo& zoo, const std::string& dir,
                                               const std::string& base, const ImportOptions& opt) {
  ASSIGN_OR_RETURN(PeftAdapter peft, LoadPeftAdapter(dir));
  ASSIGN_OR_RETURN(FileLock lock, zoo.LockForWrite());
  ASSIGN_OR_RETURN(Manifest m, zoo.GetManifest(base));
  const std::string name = opt.name.empty() ? ModelNameFromPath(dir) : opt.name;
  if (!opt.replace && zoo.HasModel(name)) {
    return absl::AlreadyExistsError(absl::StrCat("model '", name, "' already exists"));
  }
  ImportResult r;
  r.manifest = m;
  r.manifest.name = name;
  r.manifest.parent = base;
  r.manifest.synthetic = false;
  std::error_code ec;
  r.manifest.provenance = {{"source", fs::absolute(dir, ec).string()},
                           {"format", "peft"},
                           {"importer", "blockzoo import"},
                           {"rank", peft.rank},
                           {"alpha", peft.alpha},
                           {"adapter_config", peft.config}};
  size_t done = 0;
  for (auto& [key, tensors] : peft.blocks) {
    if (opt.progress) opt.progress("blocks", done++, peft.blocks.size());
    const auto [kind, layer] = key;
    if (layer >= m.family.n_layers) {
      return absl::InvalidArgumentError(absl::StrCat(dir, ": adapter has layer ", layer,
                                                     ", the base has ", m.family.n_layers));
    }
    LoraBlock lora;
    lora.attaches_to = kind;
    lora.alpha = peft.alpha;
    for (auto& [tname, t] : tensors) {
      const bool qk_b = tname == "wq.lora_B" || tname == "wk.lora_B";
      if (qk_b && m.family.rope_style == runtime::RopeStyle::kInterleaved && t.rank() == 2) {
        lora.tensors[tname] =
            UnpermuteRows(t, tname == "wq.lora_B" ? m.family.n_heads : m.family.n_kv_heads);
      } else {
        lora.tensors[tname] = t;
      }
    }
    ASSIGN_OR_RETURN(PutBlockResult put, zoo.PutLora(lock, m.family, lora));
    (put.existed ? r.blocks_shared : r.blocks_written)++;
    for (ChainEntry& e : r.manifest.chain) {
      if (e.kind == kind && e.layer == layer) e.lora = put.id;
    }
  }
  if (opt.progress) opt.progress("blocks", peft.blocks.size(), peft.blocks.size());
  RETURN_IF_ERROR(zoo.PutManifest(lock, r.manifest, opt.replace));
  return r;
}

absl::StatusOr<ImportResult> ImportSynthetic(const Zoo& zoo, const std::string& name,
                                             const runtime::ModelConfig& config,
                                             runtime::DType dtype, uint64_t seed,
                                             const ProgressFn& progress) {
  RETURN_IF_ERROR(config.Validate("synthetic model"));
  const runtime::ModelWeights w = MakeSyntheticWeights(config, dtype, seed);
  Manifest tmpl;
  tmpl.name = name;
  tmpl.synthetic = true;
  tmpl.provenance = {{"importer", "blockzoo synth"},
                     {"synthetic", true},
                     {"recipe", "random"},
                     {"dtype", runtime::DTypeName(dtype)},
                     {"seed", seed}};
  ASSIGN_OR_RETURN(FileLock lock, zoo.LockForWrite());
  return StoreModel(zoo, lock, w, std::nullopt, std::move(tmpl), /*replace=*/false, progress);
}

absl::StatusOr<ImportResult> ImportModel(const Zoo& zoo, const std::string& source,
                                         const ImportOptions& opt) {
  Manifest tmpl;
  tmpl.name = opt.name.empty() ? ModelNameFromPath(source) : opt.name;
  std::error_code ec;
  const std::string abs_source = fs::absolute(source, ec).string();
  runtime::ModelWeights weights;
  std::optional<TokenizerBytes> tokenizer;
  std::optional<std::string> tokenizer_path = opt.tokenizer;
  std::string format;
  if (fs::is_directory(source, ec)) {
    if (fs::exists(fs::path(source) / "adapter_config.json", ec)) {
      return absl::InvalidArgumentError(absl::StrCat(
          source, " is a PEFT adapter: import it with --base MODEL (the zoo model it adapts)"));
    }
    format = "huggingface";
    ASSIGN_OR_RETURN(HfModel hf, LoadHfLlama(source));
    ASSIGN_OR_RETURN(tmpl.chat_template, HfChatTemplate(source));
    weights = std::move(hf.weights);
    if (!tokenizer_path) tokenizer_path = hf.tokenizer;
  } else {
    ASSIGN_OR_RETURN(auto file, runtime::MappedFile::Open(source));
    if (file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0) {
      format = "gguf";
      ASSIGN_OR_RETURN(GgufFile g, ParseGguf(file->data(), file->size(), source));
      ASSIGN_OR_RETURN(weights, GgufToWeights(g, file->data(), file));
      tmpl.chat_template = g.GetString("tokenizer.chat_template").value_or("");
      if (!tokenizer_path && g.Find("tokenizer.ggml.model") != nullptr) {
        RETURN_IF_ERROR(GgufTokenizer(g).status());
        tokenizer = GgufTokenizerBytes(g);
      }
    } else {
      format = "llama2c";
      ASSIGN_OR_RETURN(weights, ParseLlama2c(file));
      if (!tokenizer_path) tokenizer_path = FindTokenizerNextTo(source, weights.config.vocab_size);
    }
  }
  if (tokenizer_path) {
    ASSIGN_OR_RETURN(tokenizer, ReadTokenizer(*tokenizer_path, weights.config.vocab_size));
  }
  tmpl.provenance = {{"source", abs_source}, {"format", format}, {"importer", "blockzoo import"}};
  if (tokenizer_path) tmpl.provenance["tokenizer_source"] = fs::absolute(*tokenizer_path, ec).string();
  ASSIGN_OR_RETURN(FileLock lock, zoo.LockForWrite());
  return StoreModel(zoo, lock, weights, tokenizer, std::move(tmpl), opt.replace, opt.progress);
}

}  // namespace blockserve::blockzoo
