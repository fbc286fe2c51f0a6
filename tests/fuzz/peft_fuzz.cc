// libFuzzer: PEFT LoRA adapters — adapter_config.json and the adapter's safetensors tensor
// names. The first two bytes give the config's length; the rest is the safetensors file.
#include <cstddef>
#include <cstdint>
#include <string>

#include "blockzoo/formats/peft.h"
#include "blockzoo/formats/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const size_t n = std::min<size_t>(size - 2, data[0] | (data[1] << 8));
  blockserve::blockzoo::PeftAdapter a;
  const std::string config(reinterpret_cast<const char*>(data + 2), n);
  (void)blockserve::blockzoo::ParsePeftConfig(config, "adapter_config.json", &a);
  auto f = blockserve::blockzoo::ParseSafetensors(data + 2 + n, size - 2 - n, nullptr,
                                                   "adapter_model.safetensors");
  if (f.ok()) {
    a.file = std::move(*f);
    (void)blockserve::blockzoo::MapPeftTensors("adapter_model.safetensors", &a);
  }
  return 0;
}
