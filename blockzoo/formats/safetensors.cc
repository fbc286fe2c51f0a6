#include "blockzoo/formats/safetensors.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {
namespace {

using runtime::DType;
using runtime::Tensor;

constexpr uint64_t kMaxHeader = uint64_t{100} << 20;  // the format's own limit
constexpr int kMaxRank = 8;

std::optional<DType> ParseDType(const std::string& s) {
  if (s == "F32") return DType::kF32;
  if (s == "F16") return DType::kF16;
  if (s == "BF16") return DType::kBF16;
  if (s == "I32") return DType::kI32;
  return std::nullopt;
}

}  // namespace

const char* SafetensorsDType(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
  }
  return "?";
}

absl::StatusOr<SafetensorsFile> ParseSafetensors(const uint8_t* data, size_t size,
                                                 std::shared_ptr<const void> owner,
                                                 const std::string& source) {
  auto bad = [&](auto&&... what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": safetensors: ", what...));
  };
  if (size < 8) return bad("file of ", size, " bytes is too short for the header length");
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | data[i];
  if (header_len > kMaxHeader || header_len > size - 8) {
    return bad("header length ", header_len, " exceeds the file (", size, " bytes) or 100 MiB");
  }
  const auto* hbegin = reinterpret_cast<const char*>(data + 8);
  nlohmann::json header = nlohmann::json::parse(hbegin, hbegin + header_len, nullptr, false);
  if (header.is_discarded() || !header.is_object()) return bad("header is not a JSON object");
  const uint8_t* base = data + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  SafetensorsFile out;
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return bad("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return bad("__metadata__.", m.key(), " is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (name.empty() || name.size() > 1024) return bad("tensor name of length ", name.size());
    if (!v.is_object()) return bad("tensor '", name, "' entry is not an object");
    const auto dt = v.find("dtype");
    const auto sh = v.find("shape");
    const auto off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return bad("tensor '", name, "': missing dtype");
    const auto dtype = ParseDType(dt->get<std::string>());
    if (!dtype) {
      return bad("tensor '", name, "': unsupported dtype ", dt->get<std::string>(),
                 " (F32, F16, BF16, I32 are)");
    }
    if (sh == v.end() || !sh->is_array() || sh->size() > kMaxRank) {
      return bad("tensor '", name, "': shape missing or of rank > ", kMaxRank);
    }
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return bad("tensor '", name, "': shape entry not a count");
      const uint64_t n = d.get<uint64_t>();
      if (n > (uint64_t{1} << 40) || (n != 0 && numel > (uint64_t{1} << 44) / n)) {
        return bad("tensor '", name, "': shape too large");
      }
      numel *= n;
      shape.push_back(static_cast<int64_t>(n));
    }
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned()) {
      return bad("tensor '", name, "': data_offsets must be [begin, end]");
    }
    const uint64_t b = (*off)[0].get<uint64_t>(), e = (*off)[1].get<uint64_t>();
    if (b > e || e > data_size) {
      return bad("tensor '", name, "': data_offsets [", b, ", ", e, "] outside the ", data_size,
                 " data bytes");
    }
    if (e - b != numel * runtime::DTypeSize(*dtype)) {
      return bad("tensor '", name, "': ", e - b, " bytes for shape of ", numel, " elements of ",
                 dt->get<std::string>());
    }
    ranges.emplace_back(b, e);
    out.tensors[name] = Tensor::View(*dtype, std::move(shape), base + b, owner);
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].first < ranges[i - 1].second) return bad("tensors overlap in the data");
  }
  return out;
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  ASSIGN_OR_RETURN(auto file, runtime::MappedFile::Open(path));
  ASSIGN_OR_RETURN(SafetensorsFile out, ParseSafetensors(file->data(), file->size(), file, path));
  out.file = std::move(file);
  return out;
}

std::string SafetensorsHeader(const std::map<std::string, const Tensor*>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  nlohmann::json h = nlohmann::json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    h[name] = {{"dtype", SafetensorsDType(t->dtype())},
               {"shape", t->shape()},
               {"data_offsets", {offset, offset + t->nbytes()}}};
    offset += t->nbytes();
  }
  std::string json = h.dump();
  json.append((64 - (8 + json.size()) % 64) % 64, ' ');
  std::string out(8, '\0');
  uint64_t n = json.size();
  for (int i = 0; i < 8; ++i, n >>= 8) out[i] = static_cast<char>(n & 0xff);
  return out + json;
}

}  // namespace blockserve::blockzoo
