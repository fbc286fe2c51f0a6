// libFuzzer: the OpenAI request side (server/openai_request.h) on arbitrary bodies — JSON
// parsing with its depth bound, the completions and chat fields, prompts and messages — and the
// request limits on what it accepts. Every failure must be a BadRequest, never a crash or
// another exception.
#include <cstddef>
#include <cstdint>
#include <string>

#include "server/openai_request.h"
#include "server/request_limits.h"

namespace openai = blockserve::server::openai;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  for (bool chat : {false, true}) {
    try {
      const openai::json body = openai::ParseObject(text);
      openai::Common c = openai::ParseCommon(
          body, chat, chat ? std::set<std::string>{"messages"} : std::set<std::string>{"prompt"});
      if (chat) {
        (void)openai::ChatMessages(body);
      } else {
        for (const auto& p : openai::Prompts(body, c.params)) {
          (void)blockserve::server::CheckRequestLimits(p);
        }
      }
    } catch (const openai::BadRequest&) {
    }
  }
  return 0;
}
