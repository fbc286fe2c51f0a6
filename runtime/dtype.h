// Storage element types and scalar conversions (f32 compute everywhere on CPU).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"

#include "kernels/half.h"

namespace blockserve::runtime {

enum class DType : uint8_t { kF32, kF16, kBF16, kI32 };

constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF16:
    case DType::kBF16:
      return 2;
    default:
      return 4;
  }
}

const char* DTypeName(DType t);

// The dtype DTypeName gives `name` ("f32", "f16", "bf16"), if it is one of `allowed`; otherwise
// InvalidArgument listing them ("must be f32 or bf16, got 'f8'").
absl::StatusOr<DType> ParseDType(std::string_view name, std::initializer_list<DType> allowed);

using kernels::BF16ToFloat;
using kernels::FloatToBF16;
using kernels::FloatToHalf;
using kernels::HalfToFloat;

// Converts `n` elements of `src` (of type `t`, not kI32) to f32.
void ConvertToF32(DType t, const void* src, size_t n, float* dst);

}  // namespace blockserve::runtime
