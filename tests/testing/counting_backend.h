// A second backend for tests: the CPU's blocks, but activations and KV pages in memory of its
// own that the executor must treat as device memory (host_visible false) — every transfer
// between host and "device" goes through CopyToDevice / CopyToHost, which it counts, as it
// counts what is allocated and still held. The engine's exactness tests run on it through the
// Backend interface alone (ctest: the engine tests again with BLOCKSERVE_TEST_BACKEND=counting).
#pragma once

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>

#include "runtime/backend.h"

namespace blockserve::testing {

class CountingBackend final : public runtime::CpuBackend {
 public:
  std::string name() const override { return "counting (test)"; }
  bool host_visible() const override { return false; }
  absl::StatusOr<runtime::Buffer> Allocate(size_t bytes) override {
    ++allocations;
    auto b = CpuBackend::Allocate(bytes);
    // Device memory starts as garbage: nothing may rely on what it held before.
    if (b.ok()) std::memset(b->data(), 0x7f, b->bytes());
    return b;
  }
  void CopyToDevice(void* dst, const void* src, size_t bytes) override {
    ++copies_in;
    std::memcpy(dst, src, bytes);
  }
  void CopyToHost(void* dst, const void* src, size_t bytes) override {
    ++copies_out;
    std::memcpy(dst, src, bytes);
  }
  std::atomic<uint64_t> copies_in{0}, copies_out{0}, allocations{0};
};

// The backend the engine tests run on: null (the CPU) unless BLOCKSERVE_TEST_BACKEND=counting.
inline runtime::Backend* TestBackend() {
  static CountingBackend* counting = new CountingBackend();
  const char* want = std::getenv("BLOCKSERVE_TEST_BACKEND");
  return want != nullptr && std::string(want) == "counting" ? counting : nullptr;
}

}  // namespace blockserve::testing
