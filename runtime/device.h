// Devices: a small interface with capabilities queried, never discovered by casting.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/dtype.h"
#include "runtime/thread_pool.h"

namespace blockserve::runtime {

enum class DeviceKind { kCpu, kCuda };

enum class Op { kMatmul, kRmsNorm, kRope, kAttention, kSwiGlu, kEmbedding, kSoftmax };

// What the CPU kernels run: f32 compute over f32/f16/bf16 weights.
bool CpuSupports(Op op, DType dtype);

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceKind kind() const = 0;
  virtual std::string name() const = 0;
  // Whether this device runs `op` with weights stored as `dtype`.
  virtual bool Supports(Op op, DType dtype) const = 0;
};

// The CPU: f32 compute over f32/f16/bf16 weights, a thread pool for the kernels. Constructing
// one sets glibc to keep freed memory in the heap (see device.cc).
class CpuDevice final : public Device {
 public:
  explicit CpuDevice(int num_threads);
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override;
  bool Supports(Op op, DType dtype) const override;
  ThreadPool& pool() { return pool_; }

 private:
  ThreadPool pool_;
};

struct DeviceDescription {
  DeviceKind kind;
  std::string description;
};

// The CPU, then every CUDA device (when built with CUDA). Never fails: without a GPU, the
// second entry is a line that says so (kind kCuda, description "no GPU: ...") when CUDA support
// is compiled in.
std::vector<DeviceDescription> ListDevices();

// How this library was compiled: the CMake build type and whether the compiler optimised it
// (`__OPTIMIZE__`). A build type that should optimise but did not is a broken build folder.
struct BuildInfo {
  std::string build_type;  // "RelWithAsserts", "Release", ...; "" when none was set
  bool optimized = false;
};
BuildInfo GetBuildInfo();

// Number of usable CUDA devices (0 without CUDA support or without a GPU).
int CudaDeviceCount();

}  // namespace blockserve::runtime
