// SHA-256 (OpenSSL's libcrypto: SHA-NI/AVX2 code paths, ~2 GB/s per core) for content addresses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace blockserve::blockzoo {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(const void* data, size_t n);
  void Update(absl::string_view s) { Update(s.data(), s.size()); }
  // Lower-case hex digest (64 characters). The object must not be updated afterwards.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

std::string Sha256Hex(const void* data, size_t n);

// True for a 64-character lower-case hex string (a valid content id; also what keeps ids out of
// path traversal).
bool IsHexId(absl::string_view s);

}  // namespace blockserve::blockzoo
