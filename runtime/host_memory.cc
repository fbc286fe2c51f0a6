#include "runtime/host_memory.h"

#include <unistd.h>

#include <fstream>

namespace blockserve::runtime {

namespace {

// A cgroup limit file's value: bytes, or 0 for "max" / unreadable / absurdly large (v1 writes
// a huge number for "no limit").
uint64_t ReadLimit(const std::string& path) {
  std::ifstream f(path);
  std::string v;
  if (!(f >> v) || v == "max" || v.empty() || v.size() > 19) return 0;
  for (char c : v) {
    if (c < '0' || c > '9') return 0;
  }
  const uint64_t n = std::stoull(v);
  return n >= (uint64_t{1} << 60) ? 0 : n;
}

}  // namespace

HostMemory ReadHostMemory() {
  HostMemory m;
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  m.physical = pages > 0 && page > 0 ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)
                                     : uint64_t{1} << 30;
  m.limit = m.physical;
  m.source = "physical memory";
  for (const char* path : {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    const uint64_t l = ReadLimit(path);
    if (l > 0 && l < m.limit) {
      m.limit = l;
      m.source = path;
    }
  }
  return m;
}

}  // namespace blockserve::runtime
