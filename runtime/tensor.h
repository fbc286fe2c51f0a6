// A typed, shaped view of bytes that keeps its storage alive (an owned aligned buffer or a
// memory-mapped file). Immutable shape; the data may be written through mutable_data().
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "runtime/dtype.h"

namespace blockserve::runtime {

class Tensor {
 public:
  Tensor() = default;

  // Zero-filled, 64-byte aligned, owned storage.
  static Tensor Zeros(DType dtype, std::vector<int64_t> shape);
  // A view of `data` kept alive by `owner` (may be null when the caller guarantees lifetime).
  static Tensor View(DType dtype, std::vector<int64_t> shape, const void* data,
                     std::shared_ptr<const void> owner);

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * DTypeSize(dtype_); }
  bool empty() const { return data_ == nullptr; }

  const void* raw() const { return data_; }
  void* mutable_raw() { return const_cast<void*>(data_); }
  template <typename T>
  const T* data() const {
    return static_cast<const T*>(data_);
  }
  template <typename T>
  T* mutable_data() {
    return static_cast<T*>(const_cast<void*>(data_));
  }

  std::string ShapeString() const;  // e.g. "[512, 64]"

 private:
  DType dtype_ = DType::kF32;
  std::vector<int64_t> shape_;
  const void* data_ = nullptr;
  std::shared_ptr<const void> owner_;
};

// Owned f32 copy of any floating tensor (used for norm weights and calibration).
Tensor ToF32Tensor(const Tensor& t);

// Aligned owned buffer for packed weights and scratch, zero-filled unless `zeroed` is false
// (for a caller that writes every byte itself: skips a pass over fresh memory).
std::shared_ptr<void> AllocateAligned(size_t bytes, bool zeroed = true);

}  // namespace blockserve::runtime
