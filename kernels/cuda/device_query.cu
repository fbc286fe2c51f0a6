#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/cuda_kernels.h"

namespace blockserve::kernels::cuda {

namespace {
std::string Err(cudaError_t e) { return e == cudaSuccess ? "" : cudaGetErrorString(e); }
}  // namespace

DeviceInfo QueryDevices() {
  DeviceInfo info;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    info.message = std::string("no GPU: ") +
                   (err != cudaSuccess ? cudaGetErrorString(err) : "no CUDA device visible");
    cudaGetLastError();  // clear the sticky error
    return info;
  }
  cudaDeviceProp prop{};
  cudaGetDeviceProperties(&prop, 0);
  info.count = count;
  info.message = std::string(prop.name) + ", " +
                 std::to_string(prop.totalGlobalMem >> 20) + " MiB, sm_" +
                 std::to_string(prop.major) + std::to_string(prop.minor);
  return info;
}

std::string DeviceAlloc(void** ptr, size_t bytes) { return Err(cudaMalloc(ptr, bytes)); }
std::string DeviceFree(void* ptr) { return Err(cudaFree(ptr)); }
std::string CopyToDevice(void* dst, const void* src, size_t bytes) {
  return Err(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
std::string CopyToHost(void* dst, const void* src, size_t bytes) {
  return Err(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}

}  // namespace blockserve::kernels::cuda
