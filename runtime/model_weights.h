// A model as loaded from a file: its config and named tensors (views into the mapped file).
// Canonical tensor names (shapes [out][in], row-major):
//   tok_embeddings [vocab][dim]; output [vocab][dim] (absent when tied); norm [dim];
//   layers.N.{attention_norm [dim], wq [dim][dim], wk [kv_dim][dim], wv [kv_dim][dim],
//             wo [dim][dim], ffn_norm [dim], w1 [hidden][dim], w2 [dim][hidden],
//             w3 [hidden][dim]}
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model_config.h"
#include "runtime/tensor.h"

namespace blockserve::runtime {

struct ModelWeights {
  ModelConfig config;
  std::map<std::string, Tensor> tensors;
  std::string source;  // file the weights came from, for error messages

  // The tensor `name` with exactly `shape`, or an error naming the source, tensor and shapes.
  absl::StatusOr<const Tensor*> Get(const std::string& name,
                                    const std::vector<int64_t>& shape) const;
};

std::string LayerTensor(int layer, absl::string_view suffix);  // "layers.3.wq"

}  // namespace blockserve::runtime
