#include "runtime/device.h"

#include "absl/strings/str_cat.h"
#include "kernels/cpu/matmul.h"
#if defined(BLOCKSERVE_HAVE_CUDA)
#include "kernels/cuda/cuda_kernels.h"
#endif

namespace blockserve::runtime {

CpuDevice::CpuDevice(int num_threads) : pool_(num_threads) {}

std::string CpuDevice::name() const {
  return absl::StrCat("cpu (", pool_.size(), " threads, matmul ", kernels::MatmulIsa(), ")");
}

bool CpuDevice::Supports(Op op, DType dtype) const {
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

}  // namespace blockserve::runtime
