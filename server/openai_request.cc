#include "server/openai_request.h"

#include <algorithm>
#include <cstdint>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "server/request_limits.h"

namespace blockserve::server {

int HttpCodeFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk: return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition: return 400;
    case absl::StatusCode::kUnauthenticated: return 401;
    case absl::StatusCode::kPermissionDenied: return 403;
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kResourceExhausted: return 429;
    case absl::StatusCode::kUnavailable: return 503;
    default: return 500;
  }
}

namespace openai {
namespace {

std::string ErrorType(int http) {
  if (http == 429) return "rate_limit_error";
  if (http >= 500) return "server_error";
  if (http == 401) return "invalid_request_error";
  return "invalid_request_error";
}

std::string TypeName(const json& v) {
  if (v.is_string()) return "a string";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number_integer() || v.is_number_unsigned()) return "an integer";
  if (v.is_number()) return "a number";
  if (v.is_array()) return "an array";
  if (v.is_object()) return "an object";
  return "null";
}

}  // namespace

json ErrorJson(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", ErrorType(e.http)},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return {{"error", err}};
}

ApiError FromStatus(const absl::Status& s) {
  ApiError e;
  e.http = HttpCodeFor(s.code());
  e.message = std::string(s.message());
  switch (s.code()) {
    case absl::StatusCode::kNotFound: e.code = "model_not_found"; break;
    case absl::StatusCode::kPermissionDenied: e.code = "model_not_found"; break;
    case absl::StatusCode::kUnauthenticated: e.code = "invalid_api_key"; break;
    case absl::StatusCode::kResourceExhausted: e.code = "rate_limit_exceeded"; break;
    default: break;
  }
  if (e.message.find("maximum context length") != std::string::npos) {
    e.code = "context_length_exceeded";
    e.param = "messages";
  }
  return e;
}

void Bad(const std::string& param, const std::string& message, const std::string& code) {
  throw BadRequest{ApiError{400, message, param, code}};
}

int JsonNestingDepth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}

json ParseObject(const std::string& text) {
  if (JsonNestingDepth(text) > kMaxJsonDepth) {
    Bad("", absl::StrCat("The JSON body nests deeper than ", kMaxJsonDepth, " levels."),
        "invalid_json");
  }
  json body;
  try {
    body = json::parse(text);
  } catch (const json::out_of_range&) {  // a number past a double's range (1e400)
    Bad("", "The JSON body has a number out of range (beyond a double's range).", "invalid_json");
  } catch (const json::exception&) {
    Bad("",
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)",
        "invalid_json");
  }
  if (!body.is_object()) Bad("", "The request body must be a JSON object.", "invalid_json");
  return body;
}

void BadType(const std::string& param, const json& v, const std::string& expected) {
  Bad(param,
      absl::StrCat("Invalid type for '", param, "': expected ", expected, ", but got ",
                   TypeName(v), " instead."),
      "invalid_type");
}

const json* Field(const json& body, const std::string& key) {
  auto it = body.find(key);
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> Number(const json& body, const std::string& key, double lo, double hi) {
  const json* v = Field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number()) BadType(key, *v, "a number");
  const double d = v->get<double>();
  if (!(d >= lo && d <= hi)) {
    Bad(key, absl::StrCat("Invalid '", key, "': ", d, " is not in [", lo, ", ", hi, "]."));
  }
  return d;
}

std::optional<int64_t> Integer(const json& body, const std::string& key, int64_t lo, int64_t hi) {
  const json* v = Field(body, key);
  if (!v) return std::nullopt;
  if (!v->is_number_integer() && !v->is_number_unsigned()) BadType(key, *v, "an integer");
  // nlohmann stores non-negative integers as unsigned: beyond int64, clamp (still above `hi`).
  const int64_t i =
      v->is_number_unsigned()
          ? static_cast<int64_t>(std::min<uint64_t>(v->get<uint64_t>(), INT64_MAX))
          : v->get<int64_t>();
  if (i < lo) {
    Bad(key, absl::StrCat("Invalid '", key, "': integer below minimum value. Expected a value >= ",
                          lo, ", but got ", i, " instead."),
        "integer_below_min_value");
  }
  if (i > hi) {
    Bad(key, absl::StrCat("Invalid '", key, "': integer above maximum value. Expected a value <= ",
                          hi, ", but got ", i, " instead."),
        "integer_above_max_value");
  }
  return i;
}

bool Bool(const json& body, const std::string& key) {
  const json* v = Field(body, key);
  if (!v) return false;
  if (!v->is_boolean()) BadType(key, *v, "a boolean");
  return v->get<bool>();
}

std::string String(const json& body, const std::string& key, bool required) {
  const json* v = Field(body, key);
  if (!v) {
    if (required) Bad(key, absl::StrCat("Missing required parameter: '", key, "'."), "missing_required_parameter");
    return "";
  }
  if (!v->is_string()) BadType(key, *v, "a string");
  return v->get<std::string>();
}

Common ParseCommon(const json& body, bool chat, const std::set<std::string>& extra) {
  static const std::set<std::string> kShared = {
      "model",      "max_tokens",  "temperature",       "top_p",    "top_k",      "seed",
      "stop",       "n",           "stream",            "stream_options", "user", "priority",
      "frequency_penalty", "presence_penalty", "logprobs", "logit_bias",
      "response_format",
      // vLLM's extensions
      "min_tokens", "ignore_eos", "stop_token_ids", "repetition_penalty", "guided_choice"};
  for (const auto& [k, v] : body.items()) {
    if (!kShared.count(k) && !extra.count(k)) {
      Bad(k, absl::StrCat("Unrecognized request argument supplied: ", k), "unknown_parameter");
    }
  }
  Common c;
  c.model = String(body, "model", true);
  c.params.model = c.model;
  const std::string max_key =
      chat && body.contains("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  // Completions with `echo` may ask for no tokens at all: the prompt is scored (with logprobs).
  c.echo = !chat && Bool(body, "echo");
  if (auto m = Integer(body, max_key, c.echo ? 0 : 1, 1 << 30)) {
    c.params.max_tokens = static_cast<int>(*m);
    c.params.score_only = *m == 0;
  }
  c.params.max_tokens_to_context = chat;
  if (auto t = Number(body, "temperature", 0, 2)) c.params.sampling.temperature = static_cast<float>(*t);
  if (auto t = Number(body, "top_p", 0, 1)) {
    if (*t <= 0) Bad("top_p", "Invalid 'top_p': must be greater than 0.");
    c.params.sampling.top_p = static_cast<float>(*t);
  }
  if (auto k = Integer(body, "top_k", 0, 1 << 20)) c.params.sampling.top_k = static_cast<int>(*k);
  if (auto s = Integer(body, "seed", INT64_MIN, INT64_MAX)) c.params.sampling.seed = static_cast<uint64_t>(*s);
  if (auto n = Integer(body, "n", 1, 16)) c.n = static_cast<int>(*n);
  if (auto p = Integer(body, "priority", -1000, 1000)) c.params.priority = static_cast<int>(*p);
  if (auto v = Number(body, "frequency_penalty", -2, 2)) {
    c.params.sampling.frequency_penalty = static_cast<float>(*v);
  }
  if (auto v = Number(body, "presence_penalty", -2, 2)) {
    c.params.sampling.presence_penalty = static_cast<float>(*v);
  }
  if (auto v = Number(body, "repetition_penalty", 0, 10)) {
    if (*v <= 0) Bad("repetition_penalty", "Invalid 'repetition_penalty': must be greater than 0.");
    c.params.sampling.repetition_penalty = static_cast<float>(*v);
  }
  if (auto v = Integer(body, "min_tokens", 0, 1 << 30)) c.params.sampling.min_tokens = static_cast<int>(*v);
  c.params.ignore_eos = Bool(body, "ignore_eos");
  if (const json* ids = Field(body, "stop_token_ids")) {
    if (!ids->is_array()) BadType("stop_token_ids", *ids, "an array of token ids");
    for (const json& t : *ids) {
      if (!t.is_number_integer()) BadType("stop_token_ids", t, "an integer token id");
      c.params.stop_token_ids.push_back(
          static_cast<int32_t>(std::clamp<int64_t>(t.get<int64_t>(), -1, INT32_MAX)));
    }
  }
  // Structured output: OpenAI's response_format (text or json_object), vLLM's guided_choice.
  if (const json* rf = Field(body, "response_format")) {
    if (!rf->is_object()) BadType("response_format", *rf, "an object");
    const std::string type = String(*rf, "type", true);
    if (type == "json_object") {
      c.params.json_object = true;
    } else if (type == "json_schema") {
      Bad("response_format", "'response_format' of type 'json_schema' is not supported by this "
                             "server; 'json_object' is.", "unsupported_parameter");
    } else if (type != "text") {
      Bad("response_format", absl::StrCat("Invalid 'response_format.type': '", type,
                                          "' (expected 'text' or 'json_object')."));
    }
  }
  if (const json* gc = Field(body, "guided_choice")) {
    if (!gc->is_array() || gc->empty()) BadType("guided_choice", *gc, "a non-empty array of strings");
    for (const json& e : *gc) {
      if (!e.is_string() || e.get<std::string>().empty()) {
        BadType("guided_choice", e, "a non-empty string");
      }
      c.params.guided_choice.push_back(e.get<std::string>());
    }
    if (c.params.json_object) {
      Bad("guided_choice", "Give 'guided_choice' or a json_object 'response_format', not both.");
    }
  }
  if (const json* b = Field(body, "logit_bias")) {
    if (!b->is_object()) BadType("logit_bias", *b, "an object mapping token ids to biases");
    for (const auto& [key, v] : b->items()) {
      int32_t token = -1;
      if (!absl::SimpleAtoi(key, &token) || token < 0) {
        Bad("logit_bias", absl::StrCat("Invalid 'logit_bias': key '", key, "' is not a token id."));
      }
      if (!v.is_number()) BadType("logit_bias", v, "a number");
      const double bias = v.get<double>();
      if (!(bias >= -100 && bias <= 100)) {
        Bad("logit_bias", absl::StrCat("Invalid 'logit_bias': the bias of token ", key, " (", bias,
                                       ") is not in [-100, 100]."));
      }
      c.params.sampling.logit_bias.push_back({token, static_cast<float>(bias)});
    }
  }
  // Log-probabilities: completions take `logprobs` as how many alternatives; chat takes
  // `logprobs` (a boolean) and `top_logprobs`.
  if (chat) {
    const bool lp = Bool(body, "logprobs");
    if (auto k = Integer(body, "top_logprobs", 0, runtime::kMaxLogprobs)) {
      if (!lp) Bad("top_logprobs", "Invalid 'top_logprobs': 'logprobs' must be true to use it.");
      c.params.sampling.logprobs = static_cast<int>(*k);
    } else if (lp) {
      c.params.sampling.logprobs = 0;
    }
  } else if (auto k = Integer(body, "logprobs", 0, runtime::kMaxLogprobs)) {
    c.params.sampling.logprobs = static_cast<int>(*k);
    if (c.echo) c.params.prompt_logprobs = static_cast<int>(*k);  // the echoed prompt's too
  }
  String(body, "user", false);  // accepted (OpenAI: an end-user id); typed checked only
  if (const json* s = Field(body, "stop")) {
    if (s->is_string()) {
      c.params.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > 4) Bad("stop", "Invalid 'stop': at most 4 stop sequences.");
      for (const json& e : *s) {
        if (!e.is_string()) BadType("stop", e, "a string or an array of strings");
        c.params.stop.push_back(e.get<std::string>());
      }
    } else {
      BadType("stop", *s, "a string or an array of strings");
    }
  }
  c.stream = Bool(body, "stream");
  if (const json* so = Field(body, "stream_options")) {
    if (!so->is_object()) BadType("stream_options", *so, "an object");
    if (!c.stream) Bad("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.");
    c.include_usage = Bool(*so, "include_usage");
  }
  return c;
}

// Prompts of /v1/completions: a string, an array of strings, an array of token ids, or an
// array of arrays of token ids.
std::vector<GenerateParams> Prompts(const json& body, const GenerateParams& base) {
  const json* p = Field(body, "prompt");
  if (!p) Bad("prompt", "Missing required parameter: 'prompt'.", "missing_required_parameter");
  std::vector<GenerateParams> out;
  auto text = [&](const json& s) {
    GenerateParams g = base;
    g.text = s.get<std::string>();
    out.push_back(std::move(g));
  };
  auto ids = [&](const json& a) {
    GenerateParams g = base;
    for (const json& t : a) {
      if (!t.is_number_integer()) BadType("prompt", t, "an integer token id");
      g.token_ids.push_back(static_cast<int32_t>(std::clamp<int64_t>(t.get<int64_t>(), -1, INT32_MAX)));
    }
    out.push_back(std::move(g));
  };
  if (p->is_array() && p->size() > kMaxPromptsPerRequest && !(*p)[0].is_number()) {
    Bad("prompt", absl::StrCat("Invalid 'prompt': at most ", kMaxPromptsPerRequest,
                               " prompts per request; got ", p->size(), "."));
  }
  if (p->is_string()) {
    text(*p);
  } else if (p->is_array() && !p->empty() && (*p)[0].is_number()) {
    ids(*p);
  } else if (p->is_array() && !p->empty()) {
    for (const json& e : *p) {
      if (e.is_string()) {
        text(e);
      } else if (e.is_array()) {
        ids(e);
      } else {
        BadType("prompt", e, "a string or an array of token ids");
      }
    }
  } else {
    if (p->is_array()) Bad("prompt", "Invalid 'prompt': must not be empty.");
    BadType("prompt", *p, "a string or an array");
  }
  return out;
}

// The chat messages (rendered by the model's chat format: server/chat_template.h).
std::vector<ChatMessage> ChatMessages(const json& body) {
  const json* msgs = Field(body, "messages");
  if (!msgs) Bad("messages", "Missing required parameter: 'messages'.", "missing_required_parameter");
  if (!msgs->is_array()) BadType("messages", *msgs, "an array");
  if (msgs->empty()) Bad("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1.", "empty_array");
  if (msgs->size() > kMaxChatMessages) {
    Bad("messages", absl::StrCat("Invalid 'messages': at most ", kMaxChatMessages, " messages; got ",
                                 msgs->size(), "."));
  }
  static const std::set<std::string> kRoles = {"system", "developer", "user", "assistant"};
  std::vector<ChatMessage> parts;
  for (size_t i = 0; i < msgs->size(); ++i) {
    const json& m = (*msgs)[i];
    const std::string where = absl::StrCat("messages[", i, "]");
    if (!m.is_object()) BadType(where, m, "an object");
    const json* role = Field(m, "role");
    if (!role || !role->is_string() || !kRoles.count(role->get<std::string>())) {
      Bad(where + ".role", absl::StrCat("Invalid '", where, ".role': must be one of system, developer, user, assistant."));
    }
    const json* content = Field(m, "content");
    if (!content) Bad(where + ".content", absl::StrCat("Missing required parameter: '", where, ".content'."), "missing_required_parameter");
    const std::string r = role->get<std::string>();
    if (content->is_string()) {
      parts.push_back({r, content->get<std::string>()});
    } else if (content->is_array()) {
      std::string text;
      for (const json& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") ||
            !part["text"].is_string()) {
          Bad(where + ".content", "Only text content parts are supported.");
        }
        text += part["text"].get<std::string>();
      }
      parts.push_back({r, text});
    } else {
      BadType(where + ".content", *content, "a string or an array of content parts");
    }
  }
  return parts;
}

}  // namespace openai
}  // namespace blockserve::server
