// Compute backends: where blocks keep their weights, KV pages and activations, and run.
//
// The engine and executor see a backend only through this interface: device buffers (allocate,
// copy host<->device, rows gathered on the device), a stream whose work completes in order,
// the capability query, the memory in use, and the factory that builds a block instance from
// zoo weights. The CPU backend implements it over host memory; a CUDA backend implements it
// over cudaMalloc'd memory and streams without touching the scheduler.
//
// Threads: a backend is shared by the engine thread, loader threads (MakeBlock, Allocate) and
// the compute threads its blocks use; implementations are thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/device.h"
#include "runtime/dtype.h"

namespace blockserve::runtime {

struct ModelWeights;
struct BlockOptions;

// Memory of one backend, freed when the last copy of the handle goes. `data()` is a device
// address: the host may dereference it only when the backend is host_visible().
class Buffer {
 public:
  Buffer() = default;
  Buffer(std::shared_ptr<void> mem, size_t bytes) : mem_(std::move(mem)), bytes_(bytes) {}
  void* data() const { return mem_.get(); }
  size_t bytes() const { return bytes_; }
  explicit operator bool() const { return mem_ != nullptr; }

 private:
  std::shared_ptr<void> mem_;
  size_t bytes_ = 0;
};

struct DeviceMemory {
  uint64_t used = 0;   // bytes this backend has allocated and not freed
  uint64_t total = 0;  // what the device has (0: unknown, host memory)
};

// Work queued on a backend completes in the order it was queued; Synchronize waits for all of
// it. The CPU backend runs everything at once (Synchronize returns at once).
class Stream {
 public:
  virtual ~Stream() = default;
  virtual absl::Status Synchronize() = 0;
};

// A Device (kind, name, Supports(op, dtype)) that also owns memory and builds blocks.
class Backend : public Device {
 public:
  // Whether the host reads and writes this backend's buffers in place (the CPU): the executor
  // then skips its copies in and out.
  virtual bool host_visible() const = 0;

  // Device memory of at least `bytes`, aligned for any element type; contents unspecified.
  virtual absl::StatusOr<Buffer> Allocate(size_t bytes) = 0;
  virtual DeviceMemory memory() const = 0;
  // Copies queued on the stream (the source must stay valid until it is synchronized).
  virtual void CopyToDevice(void* device_dst, const void* host_src, size_t bytes) = 0;
  virtual void CopyToHost(void* host_dst, const void* device_src, size_t bytes) = 0;
  virtual void CopyOnDevice(void* device_dst, const void* device_src, size_t bytes) = 0;
  // dst row i = src row index[i] (rows of `row_bytes`), both in device memory: how the executor
  // gathers a block call's rows and scatters them back. `index` is host memory.
  virtual void GatherRows(void* dst, const void* src, const int32_t* index, int rows,
                          size_t row_bytes) = 0;
  virtual void ScatterRows(void* dst, const void* src, const int32_t* index, int rows,
                           size_t row_bytes) = 0;
  virtual Stream& stream() = 0;

  // Builds the block instance of `kind` (layer `layer` for attn and ffn) from loaded weights,
  // its weights, KV pages and scratch in this backend's memory.
  virtual absl::StatusOr<std::shared_ptr<Block>> MakeBlock(BlockKind kind, const ModelWeights& w,
                                                           int layer, const BlockOptions& opt) = 0;
};

// The CPU: host memory (huge pages for big buffers), memcpy copies, the CPU blocks.
class CpuBackend : public Backend {
 public:
  DeviceKind kind() const override { return DeviceKind::kCpu; }
  std::string name() const override;
  bool Supports(Op op, DType dtype) const override { return CpuSupports(op, dtype); }
  bool host_visible() const override { return true; }
  absl::StatusOr<Buffer> Allocate(size_t bytes) override;
  DeviceMemory memory() const override { return {used_.load(), 0}; }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override;
  void CopyToHost(void* dst, const void* src, size_t bytes) override;
  void CopyOnDevice(void* dst, const void* src, size_t bytes) override;
  void GatherRows(void* dst, const void* src, const int32_t* index, int rows,
                  size_t row_bytes) override;
  void ScatterRows(void* dst, const void* src, const int32_t* index, int rows,
                   size_t row_bytes) override;
  Stream& stream() override;
  absl::StatusOr<std::shared_ptr<Block>> MakeBlock(BlockKind kind, const ModelWeights& w,
                                                   int layer, const BlockOptions& opt) override;

 private:
  std::atomic<uint64_t> used_{0};
};

// The process's CPU backend (blocks built without one name it).
CpuBackend& DefaultCpuBackend();

}  // namespace blockserve::runtime
