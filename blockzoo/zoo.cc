#include "blockzoo/zoo.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "blockzoo/model_loader.h"
#include "blockzoo/sha256.h"
#include "runtime/lora.h"
#include "runtime/mapped_file.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using runtime::BlockKind;
using runtime::ModelConfig;
using runtime::Tensor;
namespace fs = std::filesystem;

namespace {

constexpr char kBlockFormat[] = "blockserve-block-v1";
constexpr size_t kMaxManifestBytes = 64 << 20;

// Block-local tensor names and shapes of each kind for a family.
std::map<std::string, std::vector<int64_t>> BlockShapes(BlockKind kind, const ModelConfig& c) {
  const int64_t d = c.dim, kv = c.kv_dim(), h = c.hidden_dim, v = c.vocab_size;
  switch (kind) {
    case BlockKind::kEmbed:
      return {{"tok_embeddings", {v, d}}};
    case BlockKind::kAttn:
      return {{"attention_norm", {d}}, {"wq", {d, d}}, {"wk", {kv, d}}, {"wv", {kv, d}},
              {"wo", {d, d}}};
    case BlockKind::kFfn:
      return {{"ffn_norm", {d}}, {"w1", {h, d}}, {"w2", {d, h}}, {"w3", {h, d}}};
    case BlockKind::kHead:
      return {{"norm", {d}}, {"output", {v, d}}};
  }
  return {};
}

absl::Status CheckBlockTensors(BlockKind kind, const ModelConfig& c, const BlockTensors& t,
                               const std::string& source) {
  const auto shapes = BlockShapes(kind, c);
  if (t.size() != shapes.size()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", runtime::BlockKindName(kind),
                                                   " block has ", t.size(), " tensors, expected ",
                                                   shapes.size()));
  }
  for (const auto& [name, shape] : shapes) {
    auto it = t.find(name);
    if (it == t.end()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", runtime::BlockKindName(kind),
                                                     " block lacks tensor '", name, "'"));
    }
    if (it->second.shape() != shape || it->second.dtype() == runtime::DType::kI32) {
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": tensor '", name, "' is ", it->second.ShapeString(), " ",
                       runtime::DTypeName(it->second.dtype()), ", expected [",
                       absl::StrJoin(shape, ", "), "] floating point"));
    }
  }
  return absl::OkStatus();
}

constexpr char kLoraKind[] = "lora";

nlohmann::json LoraHparams(BlockKind attaches_to, const ModelConfig& c, float alpha) {
  nlohmann::json j = BlockHparams(attaches_to, c);
  j["attaches_to"] = runtime::BlockKindName(attaches_to);
  j["alpha"] = static_cast<double>(alpha);
  return j;
}

std::string TokenizerExt(const std::string& format) {
  if (format == "llama2c") return ".bin";
  if (format == "hf-json") return ".json";
  if (format == "sentencepiece") return ".model";
  return ".gguf";
}

absl::Status MakeDirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return absl::UnavailableError(absl::StrCat(path, ": cannot create: ", ec.message()));
  return absl::OkStatus();
}

// Regular files directly under `dir` (empty when it does not exist).
std::vector<fs::directory_entry> Files(const std::string& dir) {
  std::vector<fs::directory_entry> out;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) out.push_back(*it);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> BlockFiles(const std::string& blocks_dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (fs::directory_iterator it(blocks_dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (!it->is_directory(ec)) continue;
    for (const auto& f : Files(it->path().string())) out.push_back(f.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

bool IsTemp(const fs::path& p) { return absl::StartsWith(p.filename().string(), kTempPrefix); }

}  // namespace

std::string BlockId(const std::string& kind, const std::string& hparams_json,
                    const BlockTensors& tensors) {
  Sha256 h;
  h.Update(absl::StrCat(kBlockFormat, "\n", kind, "\n", hparams_json, "\n"));
  for (const auto& [name, t] : tensors) {
    h.Update(absl::StrCat(name, "\n", SafetensorsDType(t.dtype()), " ",
                          absl::StrJoin(t.shape(), ","), " ", t.nbytes(), "\n"));
    h.Update(t.raw(), t.nbytes());
  }
  return h.HexDigest();
}

absl::StatusOr<std::unique_ptr<Zoo>> Zoo::Open(const std::string& dir, bool create) {
  if (dir.empty()) return absl::InvalidArgumentError("zoo directory not given");
  if (create) {
    for (const char* sub : {"blocks", "models", "tokenizers"}) {
      RETURN_IF_ERROR(MakeDirs((fs::path(dir) / sub).string()));
    }
  }
  std::error_code ec;
  if (!fs::is_directory(fs::path(dir) / "models", ec)) {
    return absl::NotFoundError(absl::StrCat(dir, ": not a block zoo (no models/ directory)"));
  }
  return std::unique_ptr<Zoo>(new Zoo(dir));
}

std::string Zoo::BlockPath(const std::string& id) const {
  return (fs::path(dir_) / "blocks" / id.substr(0, 2) / (id + ".safetensors")).string();
}
std::string Zoo::ManifestPath(const std::string& name) const {
  return (fs::path(dir_) / "models" / (name + ".json")).string();
}
std::string Zoo::TokenizerPath(const std::string& id, const std::string& format) const {
  return (fs::path(dir_) / "tokenizers" / (id + TokenizerExt(format))).string();
}

absl::StatusOr<FileLock> Zoo::LockForWrite() const {
  return FileLock::Acquire((fs::path(dir_) / ".lock").string(), FileLock::Mode::kExclusive);
}

absl::StatusOr<PutBlockResult> Zoo::PutBlock(const FileLock&, BlockKind kind,
                                             const ModelConfig& family,
                                             const BlockTensors& tensors) const {
  RETURN_IF_ERROR(CheckBlockTensors(kind, family, tensors,
                                    absl::StrCat(runtime::BlockKindName(kind), " block")));
  return PutBlockFile(runtime::BlockKindName(kind), BlockHparams(kind, family).dump(), tensors);
}

absl::StatusOr<PutBlockResult> Zoo::PutLora(const FileLock&, const ModelConfig& family,
                                            const LoraBlock& lora) const {
  // Building the run-time adapter checks every name and shape.
  RETURN_IF_ERROR(runtime::LoraAdapter::Create(lora.attaches_to, family, lora.tensors, lora.alpha,
                                               "LoRA block")
                      .status());
  return PutBlockFile(kLoraKind, LoraHparams(lora.attaches_to, family, lora.alpha).dump(),
                      lora.tensors);
}

absl::StatusOr<PutBlockResult> Zoo::PutBlockFile(const std::string& kind,
                                                 const std::string& hparams,
                                                 const BlockTensors& tensors) const {
  PutBlockResult r;
  r.id = BlockId(kind, hparams, tensors);
  for (const auto& [name, t] : tensors) r.tensors[name] = {t.dtype(), t.shape()};
  const std::string path = BlockPath(r.id);
  std::map<std::string, const Tensor*> ordered;
  for (const auto& [name, t] : tensors) ordered[name] = &t;
  const std::string header = SafetensorsHeader(
      ordered, {{"blockserve.format", kBlockFormat},
                {"blockserve.kind", kind},
                {"blockserve.hparams", hparams}});
  r.bytes = header.size();
  for (const auto& [name, t] : tensors) r.bytes += t.nbytes();
  std::error_code ec;
  if (fs::exists(path, ec)) {
    // Content-addressed: a complete file of this id holds these bytes (verify checks hashes).
    if (fs::file_size(path, ec) == r.bytes) {
      r.existed = true;
      return r;
    }
  }
  RETURN_IF_ERROR(MakeDirs(fs::path(path).parent_path().string()));
  ASSIGN_OR_RETURN(AtomicFileWriter w, AtomicFileWriter::Create(path));
  RETURN_IF_ERROR(w.Write(header));
  for (const auto& [name, t] : ordered) RETURN_IF_ERROR(w.Write(t->raw(), t->nbytes()));
  RETURN_IF_ERROR(w.Commit());
  return r;
}

absl::StatusOr<std::string> Zoo::PutTokenizer(const FileLock&, const std::string& bytes,
                                              const std::string& format) const {
  const std::string id = Sha256Hex(bytes.data(), bytes.size());
  const std::string path = TokenizerPath(id, format);
  std::error_code ec;
  if (fs::exists(path, ec) && fs::file_size(path, ec) == bytes.size()) return id;
  RETURN_IF_ERROR(WriteFileAtomic(path, bytes));
  return id;
}

absl::Status Zoo::PutManifest(const FileLock&, const Manifest& m, bool replace) const {
  if (!IsValidModelName(m.name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid model name '", m.name, "': use 1-128 of A-Z a-z 0-9 . _ - (not starting with .)"));
  }
  if (!replace && HasModel(m.name)) {
    return absl::AlreadyExistsError(
        absl::StrCat("model '", m.name, "' already exists in ", dir_, " (rm it first)"));
  }
  for (const ChainEntry& e : m.chain) {
    for (const std::string& id : {e.block, e.lora}) {
      if (id.empty()) continue;
      std::error_code ec;
      if (!fs::exists(BlockPath(id), ec)) {
        return absl::FailedPreconditionError(absl::StrCat("block ", id, " is not in the zoo"));
      }
    }
  }
  if (!m.tokenizer.empty() && !fs::exists(TokenizerPath(m.tokenizer, m.tokenizer_format))) {
    return absl::FailedPreconditionError(absl::StrCat("tokenizer ", m.tokenizer, " missing"));
  }
  // Round-trip through the parser so that nothing unreadable is ever written.
  const std::string text = SerializeManifest(m);
  RETURN_IF_ERROR(ParseManifest(text, ManifestPath(m.name)).status());
  return WriteFileAtomic(ManifestPath(m.name), text);
}

absl::Status Zoo::RemoveModel(const FileLock&, const std::string& name) const {
  if (!IsValidModelName(name) || !HasModel(name)) {
    return absl::NotFoundError(absl::StrCat("no model '", name, "' in ", dir_));
  }
  if (::unlink(ManifestPath(name).c_str()) != 0) {
    return absl::UnavailableError(absl::StrCat(ManifestPath(name), ": ", std::strerror(errno)));
  }
  return FsyncDir((fs::path(dir_) / "models").string());
}

absl::StatusOr<std::vector<std::string>> Zoo::ListModels() const {
  std::vector<std::string> out;
  for (const auto& f : Files((fs::path(dir_) / "models").string())) {
    const fs::path& p = f.path();
    if (p.extension() != ".json" || IsTemp(p)) continue;
    const std::string name = p.stem().string();
    if (IsValidModelName(name)) out.push_back(name);
  }
  return out;
}

bool Zoo::HasModel(const std::string& name) const {
  std::error_code ec;
  return IsValidModelName(name) && fs::exists(ManifestPath(name), ec);
}

absl::StatusOr<Manifest> Zoo::GetManifest(const std::string& name) const {
  if (!IsValidModelName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid model name '", name, "'"));
  }
  const std::string path = ManifestPath(name);
  auto text = ReadWholeFile(path, kMaxManifestBytes);
  if (absl::IsNotFound(text.status())) {
    return absl::NotFoundError(absl::StrCat("no model '", name, "' in ", dir_));
  }
  RETURN_IF_ERROR(text.status());
  ASSIGN_OR_RETURN(Manifest m, ParseManifest(*text, path));
  if (m.name != name) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field 'name' is '", m.name, "', not the file's name"));
  }
  return m;
}

absl::StatusOr<SafetensorsFile> Zoo::MapBlock(const std::string& id, bool verify_hash) const {
  if (!IsHexId(id)) return absl::InvalidArgumentError(absl::StrCat("bad block id '", id, "'"));
  const std::string path = BlockPath(id);
  ASSIGN_OR_RETURN(SafetensorsFile f, ReadSafetensors(path));
  if (f.metadata["blockserve.format"] != kBlockFormat) {
    return absl::DataLossError(absl::StrCat(path, ": not a blockserve block"));
  }
  if (verify_hash) {
    const std::string actual =
        BlockId(f.metadata["blockserve.kind"], f.metadata["blockserve.hparams"], f.tensors);
    if (actual != id) {
      return absl::DataLossError(absl::StrCat(path, ": content hash is ", actual, " (corrupt block)"));
    }
  }
  return f;
}

absl::StatusOr<SafetensorsFile> Zoo::ReadBlock(const std::string& id, const ChainEntry* expect,
                                               bool verify_hash) const {
  ASSIGN_OR_RETURN(SafetensorsFile f, MapBlock(id, verify_hash));
  const std::string path = BlockPath(id);
  auto bad = [&](auto&&... what) {
    return absl::DataLossError(absl::StrCat(path, ": ", what...));
  };
  auto kind = ParseBlockKind(f.metadata["blockserve.kind"]);
  if (!kind.ok()) return bad("metadata blockserve.kind: ", kind.status().message());
  if (expect != nullptr) {
    if (*kind != expect->kind) {
      return bad("block is ", runtime::BlockKindName(*kind), ", the manifest says ",
                 runtime::BlockKindName(expect->kind));
    }
    if (f.file->size() != expect->bytes) {
      return bad(f.file->size(), " bytes, the manifest says ", expect->bytes);
    }
    if (f.tensors.size() != expect->tensors.size()) return bad("tensor count differs from manifest");
    for (const auto& [name, spec] : expect->tensors) {
      auto it = f.tensors.find(name);
      if (it == f.tensors.end()) return bad("tensor '", name, "' missing");
      if (it->second.dtype() != spec.dtype || it->second.shape() != spec.shape) {
        return bad("tensor '", name, "' is ", SafetensorsDType(it->second.dtype()), " ",
                   it->second.ShapeString(), ", the manifest says ", SafetensorsDType(spec.dtype),
                   " [", absl::StrJoin(spec.shape, ", "), "]");
      }
    }
  }
  return f;
}

absl::StatusOr<LoraBlock> Zoo::ReadLora(const std::string& id, BlockKind kind,
                                        const ModelConfig& family, bool verify_hash) const {
  ASSIGN_OR_RETURN(SafetensorsFile f, MapBlock(id, verify_hash));
  const std::string path = BlockPath(id);
  if (f.metadata["blockserve.kind"] != kLoraKind) {
    return absl::DataLossError(absl::StrCat(path, ": not a LoRA block"));
  }
  const auto hp = nlohmann::json::parse(f.metadata["blockserve.hparams"], nullptr, false);
  if (hp.is_discarded() || !hp.is_object() || !hp.contains("alpha") || !hp["alpha"].is_number()) {
    return absl::DataLossError(absl::StrCat(path, ": metadata blockserve.hparams lacks alpha"));
  }
  LoraBlock out;
  out.attaches_to = kind;
  out.alpha = hp["alpha"].get<float>();
  if (hp.dump() != LoraHparams(kind, family, out.alpha).dump()) {
    return absl::FailedPreconditionError(absl::StrCat(
        path, ": LoRA block made for ", hp.dump(), ", not a ", runtime::BlockKindName(kind),
        " block of this family"));
  }
  out.tensors = std::move(f.tensors);
  return out;
}

absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> Zoo::LoadTokenizer(const Manifest& m) const {
  if (m.tokenizer.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("model '", m.name, "' has no tokenizer"));
  }
  return LoadTokenizerFile(TokenizerPath(m.tokenizer, m.tokenizer_format), m.family.vocab_size);
}

absl::StatusOr<ZooStats> Zoo::Stats() const {
  ZooStats s;
  ASSIGN_OR_RETURN(auto names, ListModels());
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(Manifest m, GetManifest(name));
    ++s.models;
    s.logical_bytes += m.bytes();
  }
  std::error_code ec;
  for (const std::string& f : BlockFiles((fs::path(dir_) / "blocks").string())) {
    if (IsTemp(f)) continue;
    ++s.blocks;
    s.physical_bytes += fs::file_size(f, ec);
  }
  return s;
}

absl::StatusOr<VerifyReport> Zoo::Verify(const ProgressFn& progress) const {
  VerifyReport r;
  std::set<std::string> referenced, tokenizers;
  ASSIGN_OR_RETURN(auto names, ListModels());
  for (const std::string& name : names) {
    auto m = GetManifest(name);
    ++r.models;
    if (!m.ok()) {
      r.errors.push_back(std::string(m.status().message()));
      continue;
    }
    for (const ChainEntry& e : m->chain) {
      referenced.insert(e.block);
      if (!e.lora.empty()) referenced.insert(e.lora);
      std::error_code ec;
      if (!fs::exists(BlockPath(e.block), ec)) {
        r.errors.push_back(absl::StrCat(ManifestPath(name), ": block ", e.block, " (",
                                        runtime::BlockKindName(e.kind), ") is missing"));
        continue;
      }
      auto f = ReadBlock(e.block, &e, /*verify_hash=*/false);
      if (!f.ok()) r.errors.push_back(std::string(f.status().message()));
      if (!e.lora.empty()) {
        auto l = ReadLora(e.lora, e.kind, m->family, /*verify_hash=*/false);
        if (!l.ok()) {
          r.errors.push_back(absl::StrCat(ManifestPath(name), ": LoRA of ",
                                          runtime::BlockKindName(e.kind), " ", e.layer, ": ",
                                          l.status().message()));
        }
      }
    }
    if (!m->tokenizer.empty()) {
      const std::string path = TokenizerPath(m->tokenizer, m->tokenizer_format);
      tokenizers.insert(path);
      auto file = runtime::MappedFile::Open(path);
      if (!file.ok()) {
        r.errors.push_back(absl::StrCat(ManifestPath(name), ": tokenizer: ",
                                        file.status().message()));
      }
    }
  }
  const auto blocks = BlockFiles((fs::path(dir_) / "blocks").string());
  uint64_t done = 0;
  for (const std::string& f : blocks) {
    const fs::path p(f);
    if (progress) progress("blocks", done++, blocks.size());
    if (IsTemp(p)) {
      r.notes.push_back(absl::StrCat(f, ": temporary file of an interrupted write (gc removes it)"));
      continue;
    }
    ++r.blocks;
    const std::string id = p.stem().string();
    if (!IsHexId(id) || p.extension() != ".safetensors" ||
        p.parent_path().filename().string() != id.substr(0, 2)) {
      r.errors.push_back(absl::StrCat(f, ": unexpected file in blocks/"));
      continue;
    }
    auto b = MapBlock(id, /*verify_hash=*/true);
    if (!b.ok()) r.errors.push_back(std::string(b.status().message()));
    if (!referenced.count(id)) {
      r.notes.push_back(absl::StrCat(f, ": not referenced by any model (gc removes it)"));
    }
  }
  if (progress) progress("blocks", blocks.size(), blocks.size());
  for (const auto& f : Files((fs::path(dir_) / "tokenizers").string())) {
    const fs::path& p = f.path();
    if (IsTemp(p)) {
      r.notes.push_back(absl::StrCat(p.string(), ": temporary file (gc removes it)"));
      continue;
    }
    ++r.tokenizers;
    auto file = runtime::MappedFile::Open(p.string());
    if (!file.ok()) {
      r.errors.push_back(std::string(file.status().message()));
      continue;
    }
    if (Sha256Hex((*file)->data(), (*file)->size()) != p.stem().string()) {
      r.errors.push_back(absl::StrCat(p.string(), ": content hash does not match its name"));
    }
  }
  for (const auto& f : Files((fs::path(dir_) / "models").string())) {
    if (IsTemp(f.path())) {
      r.notes.push_back(absl::StrCat(f.path().string(), ": temporary file (gc removes it)"));
    }
  }
  return r;
}

absl::StatusOr<GcReport> Zoo::Gc(const FileLock&) const {
  GcReport r;
  std::set<std::string> referenced, tokenizers;
  ASSIGN_OR_RETURN(auto names, ListModels());
  for (const std::string& name : names) {
    // A manifest that cannot be read keeps everything: never delete what it might reference.
    ASSIGN_OR_RETURN(Manifest m, GetManifest(name));
    for (const ChainEntry& e : m.chain) {
      referenced.insert(e.block);
      if (!e.lora.empty()) referenced.insert(e.lora);
    }
    if (!m.tokenizer.empty()) tokenizers.insert(TokenizerPath(m.tokenizer, m.tokenizer_format));
  }
  std::error_code ec;
  auto remove = [&](const fs::path& p) {
    const uint64_t size = fs::file_size(p, ec);
    if (fs::remove(p, ec)) r.bytes_freed += size;
    return !ec;
  };
  // The lock is held: no writer is alive, so every temporary is garbage.
  for (const char* sub : {"models", "tokenizers"}) {
    for (const auto& f : Files((fs::path(dir_) / sub).string())) {
      if (IsTemp(f.path()) && remove(f.path())) ++r.temporaries_removed;
    }
  }
  for (const std::string& f : BlockFiles((fs::path(dir_) / "blocks").string())) {
    const fs::path p(f);
    if (IsTemp(p)) {
      if (remove(p)) ++r.temporaries_removed;
    } else if (!referenced.count(p.stem().string())) {
      if (remove(p)) ++r.blocks_removed;
    }
  }
  for (const auto& f : Files((fs::path(dir_) / "tokenizers").string())) {
    if (!IsTemp(f.path()) && !tokenizers.count(f.path().string()) && remove(f.path())) {
      ++r.tokenizers_removed;
    }
  }
  return r;
}

absl::StatusOr<std::vector<BlockTensors>> SplitIntoBlocks(const runtime::ModelWeights& w) {
  const ModelConfig& c = w.config;
  RETURN_IF_ERROR(c.Validate(w.source));
  std::vector<BlockTensors> out;
  auto take = [&](BlockTensors& b, const std::string& local, const std::string& canonical,
                  BlockKind kind) -> absl::Status {
    ASSIGN_OR_RETURN(const Tensor* t, w.Get(canonical, BlockShapes(kind, c)[local]));
    b[local] = *t;
    return absl::OkStatus();
  };
  BlockTensors embed;
  RETURN_IF_ERROR(take(embed, "tok_embeddings", "tok_embeddings", BlockKind::kEmbed));
  out.push_back(std::move(embed));
  for (int l = 0; l < c.n_layers; ++l) {
    BlockTensors attn, ffn;
    for (const char* n : {"attention_norm", "wq", "wk", "wv", "wo"}) {
      RETURN_IF_ERROR(take(attn, n, runtime::LayerTensor(l, n), BlockKind::kAttn));
    }
    for (const char* n : {"ffn_norm", "w1", "w2", "w3"}) {
      RETURN_IF_ERROR(take(ffn, n, runtime::LayerTensor(l, n), BlockKind::kFfn));
    }
    out.push_back(std::move(attn));
    out.push_back(std::move(ffn));
  }
  BlockTensors head;
  RETURN_IF_ERROR(take(head, "norm", "norm", BlockKind::kHead));
  RETURN_IF_ERROR(take(head, "output", c.tied_embeddings ? "tok_embeddings" : "output",
                       BlockKind::kHead));
  out.push_back(std::move(head));
  return out;
}

}  // namespace blockserve::blockzoo
