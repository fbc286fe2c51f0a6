#include "runtime/backend.h"

#include <cstring>
#include <new>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/matmul.h"
#include "runtime/blocks/blocks.h"
#include "runtime/tensor.h"

namespace blockserve::runtime {

namespace {

class CpuStream final : public Stream {
 public:
  absl::Status Synchronize() override { return absl::OkStatus(); }  // work ran when queued
};

}  // namespace

std::string CpuBackend::name() const { return absl::StrCat("cpu (matmul ", kernels::MatmulIsa(), ")"); }

absl::StatusOr<Buffer> CpuBackend::Allocate(size_t bytes) {
  std::shared_ptr<void> mem;
  try {
    mem = AllocateAligned(bytes, /*zeroed=*/false);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of host memory allocating ", bytes, " bytes"));
  }
  used_ += bytes;
  // The accounting goes with the memory.
  std::shared_ptr<void> counted(mem.get(), [mem, bytes, this](void*) mutable {
    used_ -= bytes;
    mem.reset();
  });
  return Buffer(std::move(counted), bytes);
}

void CpuBackend::CopyToDevice(void* dst, const void* src, size_t bytes) {
  if (dst != src) std::memcpy(dst, src, bytes);
}

void CpuBackend::CopyToHost(void* dst, const void* src, size_t bytes) {
  if (dst != src) std::memcpy(dst, src, bytes);
}

void CpuBackend::CopyOnDevice(void* dst, const void* src, size_t bytes) {
  if (dst != src) std::memmove(dst, src, bytes);
}

void CpuBackend::GatherRows(void* dst, const void* src, const int32_t* index, int rows,
                            size_t row_bytes) {
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (int i = 0; i < rows; ++i) std::memcpy(d + i * row_bytes, s + index[i] * row_bytes, row_bytes);
}

void CpuBackend::ScatterRows(void* dst, const void* src, const int32_t* index, int rows,
                             size_t row_bytes) {
  auto* d = static_cast<uint8_t*>(dst);
  const auto* s = static_cast<const uint8_t*>(src);
  for (int i = 0; i < rows; ++i) std::memcpy(d + index[i] * row_bytes, s + i * row_bytes, row_bytes);
}

Stream& CpuBackend::stream() {
  static CpuStream s;
  return s;
}

absl::StatusOr<std::shared_ptr<Block>> CpuBackend::MakeBlock(BlockKind kind, const ModelWeights& w,
                                                             int layer, const BlockOptions& opt) {
  BlockOptions o = opt;
  o.backend = this;
  switch (kind) {
    case BlockKind::kEmbed: return MakeEmbedBlock(w, o);
    case BlockKind::kAttn: return MakeAttnBlock(w, layer, o);
    case BlockKind::kFfn: return MakeFfnBlock(w, layer, o);
    case BlockKind::kHead: return MakeHeadBlock(w, o);
  }
  return absl::InvalidArgumentError("unknown block kind");
}

CpuBackend& DefaultCpuBackend() {
  static CpuBackend* backend = new CpuBackend();  // never destroyed: blocks may outlive main
  return *backend;
}

}  // namespace blockserve::runtime
