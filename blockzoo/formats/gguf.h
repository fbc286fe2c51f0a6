// GGUF (v2, v3) container parser: metadata key/values and tensor infos, every count, length and
// offset checked against the file size. Tensor data stays in the mapped file.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/mapped_file.h"

namespace blockserve::blockzoo {

enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

struct GgufValue {
  GgufType type = GgufType::kU8;
  GgufType elem_type = GgufType::kU8;  // arrays only
  int64_t i = 0;                       // integer and bool scalars
  double f = 0.0;                      // float scalars
  std::string s;                       // strings
  std::vector<int64_t> ints;           // integer/bool arrays
  std::vector<double> floats;          // float arrays
  std::vector<std::string> strings;    // string arrays
};

struct GgufTensorInfo {
  std::string name;
  std::vector<uint64_t> ne;  // ne[0] is the fastest-varying (input) dimension
  uint32_t ggml_type = 0;    // 0 F32, 1 F16, 30 BF16 (others are quantised: unsupported)
  uint64_t offset = 0;       // from the start of the file (already resolved)
  uint64_t nbytes = 0;       // 0 for unsupported types
};

struct GgufFile {
  uint32_t version = 0;
  std::map<std::string, GgufValue> kv;
  std::vector<GgufTensorInfo> tensors;
  std::string source;

  const GgufValue* Find(const std::string& key) const;
  // Integer scalar `key`, or an error naming the file and key (missing, wrong type).
  absl::StatusOr<int64_t> GetInt(const std::string& key) const;
  absl::StatusOr<double> GetFloat(const std::string& key) const;
  absl::StatusOr<std::string> GetString(const std::string& key) const;
};

// A GGUF v3 file holding only the metadata `kv` (no tensors): how the zoo stores a GGUF's
// tokenizer (its tokenizer.* keys) so that the GGUF tokenizer loader reads it back unchanged.
std::string SerializeGgufMetadata(const std::map<std::string, GgufValue>& kv);

absl::StatusOr<GgufFile> ParseGguf(const uint8_t* data, size_t size, const std::string& source);

}  // namespace blockserve::blockzoo
