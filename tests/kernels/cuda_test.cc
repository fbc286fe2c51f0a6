// CUDA kernels against the CPU reference; skipped cleanly without a GPU.
#include <cmath>

#include "kernels/cpu/rmsnorm.h"
#include "kernels/cuda/cuda_kernels.h"
#include "tests/testing/test_util.h"

namespace blockserve::kernels::cuda {
namespace {

TEST(CudaDevice, QueryNeverFails) {
  const DeviceInfo info = QueryDevices();
  EXPECT_FALSE(info.message.empty());
  if (info.count == 0) {
    EXPECT_EQ(info.message.rfind("no GPU", 0), 0u) << info.message;
  }
}

TEST(CudaRmsNorm, MatchesCpu) {
  const DeviceInfo info = QueryDevices();
  if (info.count == 0) GTEST_SKIP() << "no CUDA device: " << info.message;
  const int rows = 7, dim = 1000;
  auto x = blockserve::testing::RandomVector(rows * dim, 1);
  auto w = blockserve::testing::RandomVector(dim, 2);
  std::vector<float> want(rows * dim), got(rows * dim);
  RmsNorm(x.data(), w.data(), rows, dim, 1e-5f, want.data());
  void *dx, *dw, *dout;
  ASSERT_EQ(DeviceAlloc(&dx, x.size() * 4), "");
  ASSERT_EQ(DeviceAlloc(&dw, w.size() * 4), "");
  ASSERT_EQ(DeviceAlloc(&dout, got.size() * 4), "");
  ASSERT_EQ(CopyToDevice(dx, x.data(), x.size() * 4), "");
  ASSERT_EQ(CopyToDevice(dw, w.data(), w.size() * 4), "");
  ASSERT_EQ(RmsNormDevice(static_cast<float*>(dx), static_cast<float*>(dw), rows, dim, 1e-5f,
                          static_cast<float*>(dout)), "");
  ASSERT_EQ(CopyToHost(got.data(), dout, got.size() * 4), "");
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-4 * (1 + std::fabs(want[i])));
  DeviceFree(dx);
  DeviceFree(dw);
  DeviceFree(dout);
}

}  // namespace
}  // namespace blockserve::kernels::cuda
