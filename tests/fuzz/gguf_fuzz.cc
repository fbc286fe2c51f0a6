// libFuzzer: GGUF container parser, the llama weight mapping and the embedded tokenizer.
#include <cstddef>
#include <cstdint>

#include "blockzoo/formats/gguf.h"
#include "blockzoo/formats/gguf_model.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto f = blockserve::blockzoo::ParseGguf(data, size, "fuzz.gguf");
  if (!f.ok()) return 0;
  (void)blockserve::blockzoo::GgufToWeights(*f, data, nullptr);
  auto tok = blockserve::blockzoo::GgufTokenizer(*f);
  if (tok.ok()) (void)(*tok)->Encode("Once upon a time", true);
  return 0;
}
