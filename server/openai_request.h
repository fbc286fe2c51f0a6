// The OpenAI API's request side for the HTTP gateway: error objects with OpenAI's types, codes
// and HTTP statuses, typed access to JSON request fields that throws BadRequest with the
// message and code OpenAI would give, and the parsing of /v1/completions and
// /v1/chat/completions bodies into GenerateParams.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "nlohmann/json.hpp"
#include "server/chat_template.h"
#include "server/serving.h"

namespace blockserve::server {

// The HTTP code OpenAI uses for an error of this kind.
int HttpCodeFor(absl::StatusCode code);

namespace openai {

using json = nlohmann::json;

struct ApiError {
  int http = 400;
  std::string message;
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};

// {"error": {message, type, param, code}}.
json ErrorJson(const ApiError& e);
// The error a serving status becomes (its HTTP code; OpenAI's code where there is one).
ApiError FromStatus(const absl::Status& s);

// Thrown by the parsers below; the handler answers it.
struct BadRequest {
  ApiError error;
};

[[noreturn]] void Bad(const std::string& param, const std::string& message,
                      const std::string& code = "invalid_value");
// "Invalid type for 'param': expected ..., but got ... instead."
[[noreturn]] void BadType(const std::string& param, const json& v, const std::string& expected);

// Deepest nesting of arrays and objects in `text` (strings skipped; linear, no allocation): a
// bound checked before a parser builds anything.
int JsonNestingDepth(std::string_view text);
inline constexpr int kMaxJsonDepth = 64;

// A request body that must be a JSON object, nested at most kMaxJsonDepth deep, with numbers a
// double can hold.
json ParseObject(const std::string& text);
// Fields of `body`: absent or null is nullptr / nullopt / false / ""; the wrong type or a value
// out of [lo, hi] throws.
const json* Field(const json& body, const std::string& key);
std::optional<double> Number(const json& body, const std::string& key, double lo, double hi);
std::optional<int64_t> Integer(const json& body, const std::string& key, int64_t lo, int64_t hi);
bool Bool(const json& body, const std::string& key);
std::string String(const json& body, const std::string& key, bool required);

// The fields both endpoints share, into `p` (the prompt is the caller's).
struct Common {
  GenerateParams params;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;  // completions: the prompt comes back before the completion
  std::string model;
};

// The fields both endpoints take (`chat`: /v1/chat/completions), with the endpoint's own
// fields in `extra`; any other field is an unknown_parameter error.
Common ParseCommon(const json& body, bool chat, const std::set<std::string>& extra);
// Prompts of /v1/completions: a string, an array of strings, an array of token ids, or an
// array of arrays of token ids, each into a copy of `base`.
std::vector<GenerateParams> Prompts(const json& body, const GenerateParams& base);
// The chat messages (rendered by the model's chat format: server/chat_template.h).
std::vector<ChatMessage> ChatMessages(const json& body);

}  // namespace openai
}  // namespace blockserve::server
