#include "runtime/device.h"

#include "tests/testing/test_util.h"

namespace blockserve::runtime {
namespace {

TEST(Device, CpuCapabilitiesAreQueried) {
  CpuDevice cpu(2);
  const Device& d = cpu;
  EXPECT_EQ(d.kind(), DeviceKind::kCpu);
  EXPECT_TRUE(d.Supports(Op::kMatmul, DType::kF16));
  EXPECT_TRUE(d.Supports(Op::kMatmul, DType::kBF16));
  EXPECT_TRUE(d.Supports(Op::kAttention, DType::kF32));
  EXPECT_FALSE(d.Supports(Op::kAttention, DType::kF16));
  EXPECT_NE(d.name().find("2 threads"), std::string::npos);
}

TEST(Device, ListingWorksWithoutAGpu) {
  const auto devices = ListDevices();
  ASSERT_FALSE(devices.empty());
  EXPECT_EQ(devices[0].kind, DeviceKind::kCpu);
  if (CudaDeviceCount() == 0) {
    for (const auto& d : devices) {
      if (d.kind == DeviceKind::kCuda) {
        EXPECT_EQ(d.description.rfind("no GPU", 0), 0u);
      }
    }
  }
}

// A build folder configured with -DCMAKE_BUILD_TYPE=RelWithAsserts once compiled everything but
// the kernels at -O0 (an empty CMAKE_CXX_FLAGS_RELWITHASSERTS cache entry): every figure taken
// from it was wrong. The library must be optimised in every build type but Debug.
TEST(BuildInfo, TheLibraryIsOptimisedUnlessDebug) {
  const BuildInfo build = GetBuildInfo();
  if (build.build_type == "Debug") GTEST_SKIP() << "a Debug build";
  EXPECT_TRUE(build.optimized) << "build type '" << build.build_type
                               << "' compiled the runtime without optimisation: check "
                                  "CMAKE_CXX_FLAGS_<TYPE> in CMakeCache.txt";
}

}  // namespace
}  // namespace blockserve::runtime
