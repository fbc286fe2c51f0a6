// The memory this process may use: physical memory, or less where a cgroup (a container's
// memory limit, as Kubernetes sets) says so. Defaults that scale with the machine (the KV
// budget) are derived from it.
#pragma once

#include <cstdint>
#include <string>

namespace blockserve::runtime {

struct HostMemory {
  uint64_t physical = 0;  // bytes of RAM
  uint64_t limit = 0;     // min(physical, the cgroup's limit where one is set)
  std::string source;     // what set `limit`: "physical memory" or the cgroup file
};

// Reads /proc-free facts (sysconf) and the cgroup v2 / v1 limit files. Never fails: unknown
// values fall back to physical memory, and that to 1 GiB.
HostMemory ReadHostMemory();

}  // namespace blockserve::runtime
