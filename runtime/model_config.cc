#include "runtime/model_config.h"

#include "absl/strings/str_cat.h"

namespace blockserve::runtime {

const char* RopeStyleName(RopeStyle s) {
  return s == RopeStyle::kInterleaved ? "interleaved" : "rotate_half";
}

absl::Status ModelConfig::Validate(const std::string& source) const {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": invalid model config: ", what,
                                                   " (", DebugString(), ")"));
  };
  constexpr int kMax = 1 << 20;
  if (dim <= 0 || dim > kMax) return bad("dim out of range");
  if (hidden_dim <= 0 || hidden_dim > kMax) return bad("hidden_dim out of range");
  if (n_layers <= 0 || n_layers > 4096) return bad("n_layers out of range");
  if (n_heads <= 0 || n_heads > dim || dim % n_heads != 0) return bad("n_heads must divide dim");
  if (n_kv_heads <= 0 || n_kv_heads > n_heads || n_heads % n_kv_heads != 0) {
    return bad("n_kv_heads must divide n_heads");
  }
  if (head_dim() % 2 != 0) return bad("head_dim must be even for RoPE");
  if (vocab_size <= 0 || vocab_size > (1 << 24)) return bad("vocab_size out of range");
  if (max_seq_len <= 0 || max_seq_len > (1 << 24)) return bad("max_seq_len out of range");
  if (!(norm_eps > 0.0f && norm_eps < 1.0f)) return bad("norm_eps out of range");
  if (!(rope_theta > 1.0f && rope_theta < 1e12f)) return bad("rope_theta out of range");
  return absl::OkStatus();
}

std::string ModelConfig::DebugString() const {
  return absl::StrCat("dim=", dim, " hidden_dim=", hidden_dim, " n_layers=", n_layers,
                      " n_heads=", n_heads, " n_kv_heads=", n_kv_heads, " vocab=", vocab_size,
                      " seq_len=", max_seq_len, " eps=", norm_eps, " theta=", rope_theta,
                      " rope=", RopeStyleName(rope_style), " tied=", tied_embeddings);
}

}  // namespace blockserve::runtime
