#include "runtime/device.h"

#include <malloc.h>

#include <mutex>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/matmul.h"
#if defined(BLOCKSERVE_HAVE_CUDA)
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace blockserve::runtime {

namespace {

// Every forward pass allocates and frees the same buffers (batches, logits, block scratch, a
// few MiB). glibc's defaults hand freed memory back to the kernel (trim, or munmap of large
// chunks), so each step faulted it in again and the kernel zeroed it (transparent huge pages:
// 2 MiB at a time) — ~10% of a decode step at batch 8, ~10% of a 512-token prefill. Keep freed
// memory in the heap instead (process-wide, once).
void KeepFreedMemory() {
  static std::once_flag once;
  std::call_once(once, [] {
    mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's maximum on 64-bit
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
  });
}

}  // namespace

CpuDevice::CpuDevice(int num_threads) : pool_(num_threads) { KeepFreedMemory(); }

std::string CpuDevice::name() const {
  return absl::StrCat("cpu (", pool_.size(), " threads, matmul ", kernels::MatmulIsa(), ")");
}

bool CpuDevice::Supports(Op op, DType dtype) const { return CpuSupports(op, dtype); }

bool CpuSupports(Op op, DType dtype) {
  if (dtype == DType::kI32) return false;
  if (op == Op::kMatmul || op == Op::kEmbedding) return true;
  return dtype == DType::kF32;  // norms, rope, attention run on f32 activations
}

std::vector<DeviceDescription> ListDevices() {
  std::vector<DeviceDescription> out;
  out.push_back({DeviceKind::kCpu, CpuDevice(1).name()});
#if defined(BLOCKSERVE_HAVE_CUDA)
  const kernels::cuda::DeviceInfo info = kernels::cuda::QueryDevices();
  out.push_back({DeviceKind::kCuda, info.message});
#endif
  return out;
}

int CudaDeviceCount() {
#if defined(BLOCKSERVE_HAVE_CUDA)
  return kernels::cuda::QueryDevices().count;
#else
  return 0;
#endif
}

BuildInfo GetBuildInfo() {
  BuildInfo info;
#ifdef BLOCKSERVE_BUILD_TYPE
  info.build_type = BLOCKSERVE_BUILD_TYPE;
#endif
#ifdef __OPTIMIZE__
  info.optimized = true;
#endif
  return info;
}

}  // namespace blockserve::runtime
