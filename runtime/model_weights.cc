#include "runtime/model_weights.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace blockserve::runtime {

absl::StatusOr<const Tensor*> ModelWeights::Get(const std::string& name,
                                                const std::vector<int64_t>& shape) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": missing tensor '", name, "'"));
  }
  if (it->second.shape() != shape) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": tensor '", name, "' has shape ",
                                                   it->second.ShapeString(), ", expected [",
                                                   absl::StrJoin(shape, ", "), "]"));
  }
  if (it->second.dtype() == DType::kI32) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": tensor '", name, "' is i32, expected a float type"));
  }
  return &it->second;
}

std::string LayerTensor(int layer, absl::string_view suffix) {
  return absl::StrCat("layers.", layer, ".", suffix);
}

}  // namespace blockserve::runtime
