// libFuzzer: the zoo's model manifest parser and the Hugging Face config.json parser.
#include <cstddef>
#include <cstdint>
#include <string>

#include "blockzoo/formats/hf_llama.h"
#include "blockzoo/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto m = blockserve::blockzoo::ParseManifest(text, "fuzz.json");
  if (m.ok()) (void)blockserve::blockzoo::SerializeManifest(*m);
  (void)blockserve::blockzoo::ParseHfConfig(text, "config.json");
  return 0;
}
