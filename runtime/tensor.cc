#include "runtime/tensor.h"

#include <sys/mman.h>

#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernels/cpu/convert.h"

namespace blockserve::runtime {

const char* DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kF16:
      return "f16";
    case DType::kBF16:
      return "bf16";
    case DType::kI32:
      return "i32";
  }
  return "?";
}

absl::StatusOr<DType> ParseDType(std::string_view name, std::initializer_list<DType> allowed) {
  std::vector<std::string> names;
  for (DType t : allowed) {
    if (name == DTypeName(t)) return t;
    names.push_back(DTypeName(t));
  }
  std::string list = names.empty() ? "" : names.back();
  if (names.size() > 1) {
    list = absl::StrCat(absl::StrJoin(names.begin(), names.end() - 1, ", "), " or ", list);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("must be ", list, ", got '", std::string(name), "'"));
}

void ConvertToF32(DType t, const void* src, size_t n, float* dst) {
  switch (t) {
    case DType::kF32:
      kernels::ToF32(kernels::WeightType::kF32, src, n, dst);
      return;
    case DType::kF16:
      kernels::ToF32(kernels::WeightType::kF16, src, n, dst);
      return;
    case DType::kBF16:
      kernels::ToF32(kernels::WeightType::kBF16, src, n, dst);
      return;
    case DType::kI32: {
      const auto* s = static_cast<const int32_t*>(src);
      for (size_t i = 0; i < n; ++i) dst[i] = static_cast<float>(s[i]);
      return;
    }
  }
}

std::shared_ptr<void> AllocateAligned(size_t bytes, bool zeroed) {
  // Large buffers (weights, KV pools) go on transparent huge pages: streaming hundreds of MB of
  // weights per decode step otherwise takes a TLB miss every 4 KiB.
  constexpr size_t kHuge = size_t{2} << 20;
  const size_t align = bytes >= 2 * kHuge ? kHuge : 64;
  const size_t rounded = bytes == 0 ? align : (bytes + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
  if (p == nullptr) throw std::bad_alloc();
  if (align == kHuge) madvise(p, rounded, MADV_HUGEPAGE);  // advisory: failure is harmless
  if (zeroed) std::memset(p, 0, rounded);
  return std::shared_ptr<void>(p, [](void* q) { std::free(q); });
}

Tensor Tensor::Zeros(DType dtype, std::vector<int64_t> shape) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  auto buf = AllocateAligned(t.nbytes());
  t.data_ = buf.get();
  t.owner_ = std::move(buf);
  return t;
}

Tensor Tensor::View(DType dtype, std::vector<int64_t> shape, const void* data,
                    std::shared_ptr<const void> owner) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.data_ = data;
  t.owner_ = std::move(owner);
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  for (int64_t d : shape_) n *= d;
  return n;
}

std::string Tensor::ShapeString() const { return "[" + absl::StrJoin(shape_, ", ") + "]"; }

Tensor ToF32Tensor(const Tensor& t) {
  Tensor out = Tensor::Zeros(DType::kF32, t.shape());
  ConvertToF32(t.dtype(), t.raw(), static_cast<size_t>(t.numel()), out.mutable_data<float>());
  return out;
}

}  // namespace blockserve::runtime
