#include "blockzoo/importer.h"

#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "blockzoo/file_util.h"
#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"
#include "blockzoo/formats/hf_llama.h"
#include "blockzoo/formats/llama2c.h"
#include "blockzoo/model_loader.h"
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
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) c = '-';
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
    format = "huggingface";
    ASSIGN_OR_RETURN(HfModel hf, LoadHfLlama(source));
    weights = std::move(hf.weights);
    if (!tokenizer_path) tokenizer_path = hf.tokenizer;
  } else {
    ASSIGN_OR_RETURN(auto file, runtime::MappedFile::Open(source));
    if (file->size() >= 4 && std::memcmp(file->data(), "GGUF", 4) == 0) {
      format = "gguf";
      ASSIGN_OR_RETURN(GgufFile g, ParseGguf(file->data(), file->size(), source));
      ASSIGN_OR_RETURN(weights, GgufToWeights(g, file->data(), file));
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
