#include <cuda_runtime.h>

#include <string>

#include "kernels/cuda/cuda_kernels.h"

namespace blockserve::kernels::cuda {
namespace {

// One block per row; a shared-memory tree reduction of the sum of squares.
__global__ void RmsNormKernel(const float* x, const float* w, int dim, float eps, float* out) {
  extern __shared__ float partial[];
  const float* xr = x + static_cast<size_t>(blockIdx.x) * dim;
  float* o = out + static_cast<size_t>(blockIdx.x) * dim;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < dim; j += blockDim.x) ss += xr[j] * xr[j];
  partial[threadIdx.x] = ss;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  const float scale = rsqrtf(partial[0] / dim + eps);
  for (int j = threadIdx.x; j < dim; j += blockDim.x) o[j] = w[j] * (scale * xr[j]);
}

}  // namespace

std::string RmsNormDevice(const float* x, const float* w, int n_rows, int dim, float eps,
                          float* out) {
  if (n_rows <= 0 || dim <= 0) return "RmsNormDevice: empty shape";
  constexpr int kThreads = 256;
  RmsNormKernel<<<n_rows, kThreads, kThreads * sizeof(float)>>>(x, w, dim, eps, out);
  const cudaError_t err = cudaDeviceSynchronize();
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace blockserve::kernels::cuda
