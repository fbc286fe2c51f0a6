// Hyper-parameters of a Llama-family model: the "family" whose blocks are interchangeable.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "kernels/cpu/rope.h"

namespace blockserve::runtime {

using kernels::RopeStyle;

struct ModelConfig {
  int dim = 0;          // hidden size
  int hidden_dim = 0;   // FFN inner size
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int vocab_size = 0;
  int max_seq_len = 0;  // context length
  float norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  RopeStyle rope_style = RopeStyle::kInterleaved;
  bool tied_embeddings = false;

  int head_dim() const { return n_heads > 0 ? dim / n_heads : 0; }
  int kv_dim() const { return n_heads > 0 ? dim / n_heads * n_kv_heads : 0; }

  // Rejects shapes that cannot run (zero or negative sizes, heads not dividing dim, ...).
  // `source` names the file or manifest in the message.
  absl::Status Validate(const std::string& source) const;
  std::string DebugString() const;
};

const char* RopeStyleName(RopeStyle s);

}  // namespace blockserve::runtime
