#include "blockzoo/sha256.h"

#include <openssl/evp.h>

#include "runtime/check.h"

namespace blockserve::blockzoo {

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  BS_CHECK(ctx_->md != nullptr && EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) == 1);
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_->md); }

void Sha256::Update(const void* data, size_t n) {
  // Large buffers in 1 GiB pieces (EVP takes size_t, but keep progress granular for callers).
  const auto* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    const size_t step = std::min(n, size_t{1} << 30);
    BS_CHECK(EVP_DigestUpdate(ctx_->md, p, step) == 1);
    p += step;
    n -= step;
  }
}

std::string Sha256::HexDigest() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  BS_CHECK(EVP_DigestFinal_ex(ctx_->md, digest, &len) == 1 && len == 32);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (int i = 0; i < 32; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 15];
  }
  return out;
}

std::string Sha256Hex(const void* data, size_t n) {
  Sha256 h;
  h.Update(data, n);
  return h.HexDigest();
}

bool IsHexId(absl::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

}  // namespace blockserve::blockzoo
