// The block zoo on disk: content-addressed, append-only, crash-safe.
//   <dir>/blocks/<id[0:2]>/<id>.safetensors   one block (kind, hyper-parameters in __metadata__)
//   <dir>/models/<name>.json                  manifests (written last)
//   <dir>/tokenizers/<id>.<ext>               tokenizer files, addressed by SHA-256 of the bytes
//   <dir>/.lock                               writers hold it exclusively (flock)
// Writers (import, derive, rm, gc) hold the exclusive lock for their whole run; every file is
// written to a temporary name, fsync'ed and renamed, so readers (which take no lock) see a model
// only once all of its blocks exist. gc runs under the same lock and removes only blocks that no
// manifest references and temporaries of dead writers.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockzoo/file_util.h"
#include "blockzoo/formats/safetensors.h"
#include "blockzoo/manifest.h"
#include "runtime/model_weights.h"
#include "runtime/tokenizer/tokenizer.h"

namespace blockserve::blockzoo {

// Progress of a long job: `done` of `total` units of `what`.
using ProgressFn = std::function<void(const std::string& what, uint64_t done, uint64_t total)>;

// The tensors of one block under their block-local names (tok_embeddings; attention_norm, wq,
// wk, wv, wo; ffn_norm, w1, w2, w3; norm, output).
using BlockTensors = std::map<std::string, runtime::Tensor>;

// Content id of a block: SHA-256 over a format tag, the kind, the kind's family hyper-parameters
// and every tensor's name, dtype, shape and bytes (in name order).
std::string BlockId(const std::string& kind, const std::string& hparams_json,
                    const BlockTensors& tensors);

// A LoRA block: "<target>.lora_A" [rank, in] / "<target>.lora_B" [out, rank] tensors for the
// projections of one attn or ffn block, and alpha (delta = alpha / rank * B A).
struct LoraBlock {
  runtime::BlockKind attaches_to = runtime::BlockKind::kAttn;
  float alpha = 1.0f;
  BlockTensors tensors;
};

struct PutBlockResult {
  std::string id;
  uint64_t bytes = 0;    // file size
  bool existed = false;  // deduplicated: an identical block was already stored
  std::map<std::string, TensorSpec> tensors;
};

struct ZooStats {
  int models = 0;
  int blocks = 0;             // block files on disk
  uint64_t logical_bytes = 0;   // summed over models (what separate copies would take)
  uint64_t physical_bytes = 0;  // unique block files
  double ratio() const {
    return physical_bytes == 0 ? 0.0 : static_cast<double>(logical_bytes) / physical_bytes;
  }
};

struct VerifyReport {
  int models = 0, blocks = 0, tokenizers = 0;
  std::vector<std::string> errors;  // each names the file and what is wrong
  std::vector<std::string> notes;   // harmless findings (stale temporaries, unreferenced blocks)
  bool ok() const { return errors.empty(); }
};

struct GcReport {
  int blocks_removed = 0, tokenizers_removed = 0, temporaries_removed = 0;
  uint64_t bytes_freed = 0;
};

class Zoo {
 public:
  // Opens the zoo at `dir`; with `create`, makes the directories of an empty zoo if needed.
  static absl::StatusOr<std::unique_ptr<Zoo>> Open(const std::string& dir, bool create);

  const std::string& dir() const { return dir_; }
  std::string BlockPath(const std::string& id) const;
  std::string ManifestPath(const std::string& name) const;
  std::string TokenizerPath(const std::string& id, const std::string& format) const;

  // ---- writers: take the lock first and pass it as proof ----
  absl::StatusOr<FileLock> LockForWrite() const;

  // Stores a block (or finds the identical one). Tensors must match the family's shapes.
  absl::StatusOr<PutBlockResult> PutBlock(const FileLock& lock, runtime::BlockKind kind,
                                          const runtime::ModelConfig& family,
                                          const BlockTensors& tensors) const;
  absl::StatusOr<PutBlockResult> PutLora(const FileLock& lock, const runtime::ModelConfig& family,
                                         const LoraBlock& lora) const;
  // Stores tokenizer bytes (`format` as in Manifest::tokenizer_format); returns the id.
  absl::StatusOr<std::string> PutTokenizer(const FileLock& lock, const std::string& bytes,
                                           const std::string& format) const;
  // Writes the manifest after checking that every block and the tokenizer it names exist.
  absl::Status PutManifest(const FileLock& lock, const Manifest& m, bool replace) const;
  absl::Status RemoveModel(const FileLock& lock, const std::string& name) const;
  absl::StatusOr<GcReport> Gc(const FileLock& lock) const;

  // ---- readers: no lock; what they see is always complete ----
  absl::StatusOr<std::vector<std::string>> ListModels() const;
  absl::StatusOr<Manifest> GetManifest(const std::string& name) const;
  bool HasModel(const std::string& name) const;
  // Maps a block file; checks its tensors against `expect` (a manifest entry) when given, and
  // its content hash when `verify_hash`.
  absl::StatusOr<SafetensorsFile> ReadBlock(const std::string& id, const ChainEntry* expect,
                                            bool verify_hash) const;
  // Maps a LoRA block and checks it fits a `kind` block of `family`.
  absl::StatusOr<LoraBlock> ReadLora(const std::string& id, runtime::BlockKind kind,
                                     const runtime::ModelConfig& family, bool verify_hash) const;
  absl::StatusOr<std::unique_ptr<runtime::Tokenizer>> LoadTokenizer(const Manifest& m) const;

  absl::StatusOr<ZooStats> Stats() const;
  // Checks every manifest, every block (hash included) and every tokenizer.
  absl::StatusOr<VerifyReport> Verify(const ProgressFn& progress) const;

 private:
  explicit Zoo(std::string dir) : dir_(std::move(dir)) {}
  absl::StatusOr<PutBlockResult> PutBlockFile(const std::string& kind, const std::string& hparams,
                                              const BlockTensors& tensors) const;
  // Maps block `id` and checks its format tag and (when `verify_hash`) its content hash.
  absl::StatusOr<SafetensorsFile> MapBlock(const std::string& id, bool verify_hash) const;
  std::string dir_;
};

// The blocks of a model in canonical names (runtime::ModelWeights) -> per chain entry tensors.
absl::StatusOr<std::vector<BlockTensors>> SplitIntoBlocks(const runtime::ModelWeights& w);

}  // namespace blockserve::blockzoo
