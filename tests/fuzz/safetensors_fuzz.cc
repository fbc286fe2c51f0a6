// libFuzzer: the safetensors parser (block files of the zoo and HF shards).
#include <cstddef>
#include <cstdint>

#include "blockzoo/formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = blockserve::blockzoo::ParseSafetensors(data, size, nullptr, "fuzz.safetensors");
  if (!f.ok()) return 0;
  // Touch every byte the parser vouched for.
  volatile uint8_t sink = 0;
  for (const auto& [name, t] : f->tensors) {
    const auto* p = static_cast<const uint8_t*>(t.raw());
    for (size_t i = 0; i < t.nbytes(); ++i) sink ^= p[i];
  }
  return 0;
}
