#include "blockzoo/formats/llama2c.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {
namespace {

using runtime::DType;
using runtime::LayerTensor;
using runtime::ModelConfig;
using runtime::ModelWeights;
using runtime::Tensor;

constexpr uint32_t kMagicV1 = 0x616b3432;  // "ak42"

struct Header {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

// Lays tensors out one after another from `offset`, checking that each fits the file.
class Cursor {
 public:
  Cursor(const uint8_t* data, size_t size, size_t offset, const std::string& source,
         std::shared_ptr<const void> owner, ModelWeights* out)
      : data_(data), size_(size), off_(offset), source_(source), owner_(std::move(owner)),
        out_(out) {}

  absl::Status Take(const std::string& name, std::vector<int64_t> shape) {
    uint64_t n = 1;
    for (int64_t d : shape) n *= static_cast<uint64_t>(d);  // dims <= 2^24: no overflow
    const uint64_t bytes = n * 4;
    if (bytes > size_ - off_) {
      return absl::InvalidArgumentError(absl::StrCat(
          source_, ": truncated llama2.c checkpoint: tensor '", name, "' needs ", bytes,
          " bytes at offset ", off_, " but the file has ", size_, " bytes"));
    }
    if (!name.empty()) {
      out_->tensors[name] = Tensor::View(DType::kF32, std::move(shape), data_ + off_, owner_);
    }
    off_ += bytes;
    return absl::OkStatus();
  }
  size_t offset() const { return off_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t off_;
  const std::string& source_;
  std::shared_ptr<const void> owner_;
  ModelWeights* out_;
};

absl::Status TakeLayers(Cursor& c, const ModelConfig& cfg, absl::string_view name,
                        std::vector<int64_t> shape) {
  for (int l = 0; l < cfg.n_layers; ++l) RETURN_IF_ERROR(c.Take(LayerTensor(l, name), shape));
  return absl::OkStatus();
}

absl::Status TakeAttnMatrices(Cursor& c, const ModelConfig& cfg) {
  const int64_t d = cfg.dim, kv = cfg.kv_dim();
  RETURN_IF_ERROR(TakeLayers(c, cfg, "wq", {d, d}));
  RETURN_IF_ERROR(TakeLayers(c, cfg, "wk", {kv, d}));
  RETURN_IF_ERROR(TakeLayers(c, cfg, "wv", {kv, d}));
  return TakeLayers(c, cfg, "wo", {d, d});
}

absl::Status TakeFfnMatrices(Cursor& c, const ModelConfig& cfg) {
  const int64_t d = cfg.dim, h = cfg.hidden_dim;
  RETURN_IF_ERROR(TakeLayers(c, cfg, "w1", {h, d}));
  RETURN_IF_ERROR(TakeLayers(c, cfg, "w2", {d, h}));
  return TakeLayers(c, cfg, "w3", {h, d});
}

ModelConfig ToConfig(const Header& h) {
  ModelConfig c;
  c.dim = h.dim;
  c.hidden_dim = h.hidden_dim;
  c.n_layers = h.n_layers;
  c.n_heads = h.n_heads;
  c.n_kv_heads = h.n_kv_heads;
  c.vocab_size = h.vocab_size < 0 ? -h.vocab_size : h.vocab_size;
  c.max_seq_len = h.seq_len;
  c.rope_style = runtime::RopeStyle::kInterleaved;
  c.tied_embeddings = h.vocab_size > 0;
  return c;
}

absl::Status CheckEnd(const Cursor& c, size_t size, const std::string& source) {
  if (c.offset() != size) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": llama2.c checkpoint has ",
                                                   size - c.offset(),
                                                   " unexpected trailing bytes (expected ",
                                                   c.offset(), " bytes in all, got ", size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelWeights> ParseLlama2cBytes(const uint8_t* data, size_t size,
                                               const std::string& source,
                                               std::shared_ptr<const void> owner) {
  uint32_t magic = 0;
  if (size >= 4) std::memcpy(&magic, data, 4);
  const bool v1 = magic == kMagicV1;
  const size_t header_bytes = v1 ? 256 : sizeof(Header);
  if (size < header_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": file too short for a llama2.c header (", size, " bytes)"));
  }
  Header h;
  bool shared = true;
  if (v1) {
    int32_t version = 0;
    std::memcpy(&version, data + 4, 4);
    if (version != 1) {
      return absl::UnimplementedError(absl::StrCat(
          source, ": llama2.c export version ", version, " is not supported (only 0 and 1)"));
    }
    std::memcpy(&h, data + 8, sizeof(h));
    shared = data[8 + sizeof(h)] != 0;
    if (h.vocab_size < 0) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": negative vocab_size in v1 header"));
    }
    if (!shared) h.vocab_size = -h.vocab_size;
  } else {
    std::memcpy(&h, data, sizeof(h));
  }
  ModelWeights w;
  w.source = source;
  w.config = ToConfig(h);
  RETURN_IF_ERROR(w.config.Validate(source));
  const ModelConfig& cfg = w.config;
  const int64_t d = cfg.dim;
  Cursor c(data, size, header_bytes, source, std::move(owner), &w);
  if (v1) {
    RETURN_IF_ERROR(TakeLayers(c, cfg, "attention_norm", {d}));
    RETURN_IF_ERROR(TakeLayers(c, cfg, "ffn_norm", {d}));
    RETURN_IF_ERROR(c.Take("norm", {d}));
    RETURN_IF_ERROR(c.Take("tok_embeddings", {cfg.vocab_size, d}));
    RETURN_IF_ERROR(TakeAttnMatrices(c, cfg));
    RETURN_IF_ERROR(TakeFfnMatrices(c, cfg));
  } else {
    RETURN_IF_ERROR(c.Take("tok_embeddings", {cfg.vocab_size, d}));
    RETURN_IF_ERROR(TakeLayers(c, cfg, "attention_norm", {d}));
    RETURN_IF_ERROR(TakeAttnMatrices(c, cfg));
    RETURN_IF_ERROR(TakeLayers(c, cfg, "ffn_norm", {d}));
    RETURN_IF_ERROR(TakeFfnMatrices(c, cfg));
    RETURN_IF_ERROR(c.Take("norm", {d}));
    // Unused legacy RoPE tables freq_cis_real and freq_cis_imag.
    RETURN_IF_ERROR(c.Take("", {cfg.max_seq_len, cfg.head_dim() / 2}));
    RETURN_IF_ERROR(c.Take("", {cfg.max_seq_len, cfg.head_dim() / 2}));
  }
  if (!cfg.tied_embeddings) RETURN_IF_ERROR(c.Take("output", {cfg.vocab_size, d}));
  RETURN_IF_ERROR(CheckEnd(c, size, source));
  return w;
}

absl::StatusOr<ModelWeights> ParseLlama2c(std::shared_ptr<const runtime::MappedFile> file) {
  const uint8_t* data = file->data();
  const size_t size = file->size();
  const std::string path = file->path();
  return ParseLlama2cBytes(data, size, path, std::move(file));
}

}  // namespace blockserve::blockzoo
