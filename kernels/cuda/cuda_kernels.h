// CUDA kernels (built when nvcc is found). Pointers and shapes in, status out.
// Every function is safe to call on a machine without a GPU: it reports that instead.
#pragma once

#include <string>

namespace blockserve::kernels::cuda {

struct DeviceInfo {
  int count = 0;           // visible CUDA devices; 0 when none
  std::string message;     // "no GPU: ..." or the first device's name and memory
};

// Never fails: a missing driver or device gives count 0 and a message saying why.
DeviceInfo QueryDevices();

// RMSNorm on device memory: out[r] = w * x[r] / sqrt(mean(x[r]^2) + eps); x, w, out device
// pointers. Returns an empty string on success, else the CUDA error.
std::string RmsNormDevice(const float* x, const float* w, int n_rows, int dim, float eps,
                          float* out);

// Helpers for tests: host <-> device copies, allocation. Empty string on success.
std::string DeviceAlloc(void** ptr, size_t bytes);
std::string DeviceFree(void* ptr);
std::string CopyToDevice(void* dst, const void* src, size_t bytes);
std::string CopyToHost(void* dst, const void* src, size_t bytes);

}  // namespace blockserve::kernels::cuda
