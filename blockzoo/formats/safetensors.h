// safetensors (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length,
// a JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the
// tensor bytes. Reading maps the file and checks every offset, size and shape; writing is
// deterministic (names sorted, data 64-byte aligned) so equal content gives equal files.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/mapped_file.h"
#include "runtime/tensor.h"

namespace blockserve::blockzoo {

struct SafetensorsFile {
  std::map<std::string, runtime::Tensor> tensors;  // views into the mapping
  std::map<std::string, std::string> metadata;
  std::shared_ptr<const runtime::MappedFile> file;
};

// Parses `size` bytes at `data` (kept alive by `owner`); `source` names the file in errors.
absl::StatusOr<SafetensorsFile> ParseSafetensors(const uint8_t* data, size_t size,
                                                 std::shared_ptr<const void> owner,
                                                 const std::string& source);
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// The header (length prefix included, padded so the data starts 64-byte aligned) for tensors
// written in the order of `tensors` (a std::map: sorted by name), one after another.
std::string SafetensorsHeader(const std::map<std::string, const runtime::Tensor*>& tensors,
                              const std::map<std::string, std::string>& metadata);

// "F32", "F16", "BF16", "I32".
const char* SafetensorsDType(runtime::DType t);

}  // namespace blockserve::blockzoo
