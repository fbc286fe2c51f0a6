// libFuzzer: llama2.c checkpoint parser (and chain building on whatever parses).
#include <cstddef>
#include <cstdint>

#include "blockzoo/formats/llama2c.h"
#include "runtime/chain.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto w = blockserve::blockzoo::ParseLlama2cBytes(data, size, "fuzz.bin", nullptr);
  if (w.ok() && w->config.dim <= 256 && w->config.vocab_size <= 4096 && w->config.n_layers <= 8) {
    (void)blockserve::runtime::BuildChain(*w);
  }
  return 0;
}
