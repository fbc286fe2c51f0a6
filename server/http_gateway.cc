#include "server/http_gateway.h"

#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <ctime>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "spdlog/spdlog.h"

namespace blockserve::server {

namespace {

using nlohmann::json;

// ---- errors ----

struct ApiError {
  int http = 400;
  std::string message;
  std::string param;  // "" -> null
  std::string code;   // "" -> null
};

std::string ErrorType(int http) {
  if (http == 429) return "rate_limit_error";
  if (http >= 500) return "server_error";
  if (http == 401) return "invalid_request_error";
  return "invalid_request_error";
}

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json ErrorJson(const ApiError& e) {
  json err = {{"message", e.message},
              {"type", ErrorType(e.http)},
              {"param", e.param.empty() ? json(nullptr) : json(e.param)},
              {"code", e.code.empty() ? json(nullptr) : json(e.code)}};
  return {{"error", err}};
}

void SendError(httplib::Response& res, const ApiError& e) {
  res.status = e.http;
  res.set_content(Dump(ErrorJson(e)), "application/json");
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

// ---- request fields ----

struct BadRequest {
  ApiError error;
};

[[noreturn]] void Bad(const std::string& param, const std::string& message,
                      const std::string& code = "invalid_value") {
  throw BadRequest{ApiError{400, message, param, code}};
}

// A request body that must be a JSON object.
json ParseObject(const std::string& text) {
  json body;
  try {
    body = json::parse(text);
  } catch (const json::parse_error&) {
    Bad("",
        "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
        "using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was "
        "sent was not valid JSON.)",
        "invalid_json");
  }
  if (!body.is_object()) Bad("", "The request body must be a JSON object.", "invalid_json");
  return body;
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

[[noreturn]] void BadType(const std::string& param, const json& v, const std::string& expected) {
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

// The fields both endpoints share, into `p` (the prompt is the caller's).
struct Common {
  GenerateParams params;
  int n = 1;
  bool stream = false;
  bool include_usage = false;
  bool echo = false;  // completions: the prompt comes back before the completion
  std::string model;
};

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
  if (out.size() > 16) Bad("prompt", "Invalid 'prompt': at most 16 prompts per request.");
  return out;
}

// The chat messages (rendered by the model's chat format: server/chat_template.h).
std::vector<ChatMessage> ChatMessages(const json& body) {
  const json* msgs = Field(body, "messages");
  if (!msgs) Bad("messages", "Missing required parameter: 'messages'.", "missing_required_parameter");
  if (!msgs->is_array()) BadType("messages", *msgs, "an array");
  if (msgs->empty()) Bad("messages", "Invalid 'messages': empty array. Expected an array with minimum length 1.", "empty_array");
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

std::string Id(const char* prefix) {
  static std::atomic<uint64_t> n{0};
  return absl::StrCat(prefix, std::time(nullptr), "-", ++n);
}

// Wakes a response provider when any of its generations has output.
struct Waker {
  std::mutex mu;
  std::condition_variable cv;
  uint64_t seq = 0;
  void Notify() {
    {
      std::lock_guard<std::mutex> lock(mu);
      ++seq;
    }
    cv.notify_all();
  }
  // Waits until a notify after `*seen` or the timeout.
  void Wait(uint64_t* seen, std::chrono::milliseconds timeout) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait_for(lock, timeout, [&] { return seq != *seen; });
    *seen = seq;
  }
};

// Characters (code points) in UTF-8 bytes, as clients count offsets into the text.
int64_t Utf8Chars(const std::string& bytes) {
  int64_t n = 0;
  for (unsigned char ch : bytes) n += (ch & 0xC0) != 0x80;
  return n;
}

// Chat's `logprobs` for `lps`, a choice's next tokens: each token with its bytes and the most
// likely alternatives.
json ChatLogprobs(const std::vector<TokenLogprobs>& lps) {
  auto entry = [](const TokenInfo& t) {
    json bytes = json::array();
    for (unsigned char ch : t.bytes) bytes.push_back(static_cast<int>(ch));
    return json{{"token", SanitizeUtf8(t.bytes)}, {"logprob", t.logprob}, {"bytes", bytes}};
  };
  json content = json::array();
  for (const TokenLogprobs& lp : lps) {
    json e = entry(lp.chosen);
    e["top_logprobs"] = json::array();
    for (const TokenInfo& t : lp.top) e["top_logprobs"].push_back(entry(t));
    content.push_back(std::move(e));
  }
  return {{"content", std::move(content)}, {"refusal", nullptr}};
}

// The completions' (legacy) `logprobs`: parallel arrays, token by token; `top_logprobs` maps
// the alternatives and the chosen token to their log-probabilities; `text_offset` counts
// characters into the choice's text.
struct LegacyLogprobs {
  json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
       text_offset = json::array();

  // A prompt's first token (echo): nothing before it, so no log-probability.
  void AddFirst(const std::string& bytes, int64_t* offset) {
    tokens.push_back(SanitizeUtf8(bytes));
    token_logprobs.push_back(nullptr);
    top_logprobs.push_back(nullptr);
    text_offset.push_back(*offset);
    *offset += Utf8Chars(bytes);
  }
  void Add(const TokenLogprobs& lp, int64_t* offset) {
    const std::string text = SanitizeUtf8(lp.chosen.bytes);
    tokens.push_back(text);
    token_logprobs.push_back(lp.chosen.logprob);
    json alternatives = json::object();
    for (const TokenInfo& t : lp.top) {
      const std::string k = SanitizeUtf8(t.bytes);
      if (!alternatives.contains(k)) alternatives[k] = t.logprob;  // two tokens, one text: the likelier
    }
    if (!alternatives.contains(text)) alternatives[text] = lp.chosen.logprob;
    top_logprobs.push_back(std::move(alternatives));
    text_offset.push_back(*offset);
    *offset += Utf8Chars(lp.chosen.bytes);
  }
  json ToJson() {
    return {{"tokens", std::move(tokens)}, {"token_logprobs", std::move(token_logprobs)},
            {"top_logprobs", std::move(top_logprobs)}, {"text_offset", std::move(text_offset)}};
  }
};

// One response: every choice's generation, what was sent, and how the response ends.
struct Reply {
  bool chat = false, stream = false, include_usage = false;
  bool logprobs = false;  // the request asked for them
  bool echo = false;      // completions: each choice's text starts with its prompt
  // Per prompt, best_of generations run and the n best (mean log-probability per token) answer.
  int n = 1, best_of = 1;
  std::string id, model;
  const runtime::Tokenizer* tokenizer = nullptr;  // the model's (echoed prompt tokens' text)
  int64_t created = 0;
  std::vector<std::shared_ptr<Generation>> gens;
  std::vector<std::string> text;
  std::vector<std::string> finish;
  std::vector<bool> role_sent;
  std::vector<std::vector<TokenLogprobs>> lps;  // per choice, until the whole response is written
  std::vector<std::vector<TokenLogprobs>> prompt_lps;  // the same, of the echoed prompt
  std::vector<int64_t> offset;                  // per choice: characters streamed so far
  std::vector<std::string> prompt_text;         // per choice: the prompt, for echo
  std::vector<bool> echoed;                     // per choice: the prompt went out (streams)
  int prompt_tokens = 0, completion_tokens = 0;
  std::string error;
  int done = 0;
  bool finished = false;
  Waker waker;
  uint64_t seen = 0;
  std::chrono::steady_clock::time_point last_write = std::chrono::steady_clock::now();

  void CancelAll() {
    for (size_t i = 0; i < gens.size(); ++i) {
      if (finish[i].empty()) gens[i]->Cancel();
    }
  }
  json Usage() const {
    return {{"prompt_tokens", prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", prompt_tokens + completion_tokens}};
  }
  json Base(const char* object) const {
    return {{"id", id}, {"object", object}, {"created", created}, {"model", model}};
  }
  std::string Chunk(size_t i, const std::string& piece, const std::string& reason,
                    json logprobs_json = nullptr) {
    json j = Base(chat ? "chat.completion.chunk" : "text_completion");
    json choice = {{"index", i}, {"logprobs", std::move(logprobs_json)},
                   {"finish_reason", reason.empty() ? json(nullptr) : json(reason)}};
    if (chat) {
      json delta = json::object();
      if (!role_sent[i]) {
        delta["role"] = "assistant";
        role_sent[i] = true;
      }
      if (!piece.empty() || reason.empty()) delta["content"] = piece;
      choice["delta"] = delta;
    } else {
      choice["text"] = piece;
    }
    j["choices"] = json::array({choice});
    if (include_usage) j["usage"] = nullptr;
    return "data: " + Dump(j) + "\n\n";
  }
  // Choice i's `logprobs` for its next tokens `gen`, after its prompt's (`prompt`, when the
  // prompt is echoed here: the first piece of the choice).
  json LogprobsFor(size_t i, const std::vector<TokenLogprobs>* prompt,
                   const std::vector<TokenLogprobs>& gen) {
    if (!logprobs) return nullptr;
    if (chat) return ChatLogprobs(gen);
    LegacyLogprobs l;
    if (prompt != nullptr) {
      const auto& ids = gens[i]->prompt_ids();
      l.AddFirst(tokenizer ? tokenizer->DecodeText({ids[0]}) : std::string(), &offset[i]);
      for (const TokenLogprobs& lp : *prompt) l.Add(lp, &offset[i]);
      offset[i] = Utf8Chars(prompt_text[i]);  // the completion follows the prompt's text
    }
    for (const TokenLogprobs& lp : gen) l.Add(lp, &offset[i]);
    return l.ToJson();
  }
  // The generations that answer, in order: all of them, or per prompt the n of its best_of
  // with the highest mean log-probability per token (one with no tokens last).
  std::vector<size_t> Answering() const {
    std::vector<size_t> out;
    for (size_t p = 0; p < gens.size(); p += best_of) {
      std::vector<std::pair<double, size_t>> ranked;
      for (size_t i = p; i < p + best_of && i < gens.size(); ++i) {
        double sum = 0;
        for (const TokenLogprobs& lp : lps[i]) sum += lp.chosen.logprob;
        ranked.push_back({lps[i].empty() ? -INFINITY : sum / lps[i].size(), i});
      }
      if (best_of > n) {
        std::stable_sort(ranked.begin(), ranked.end(),
                         [](const auto& a, const auto& b) { return a.first > b.first; });
      }
      for (int k = 0; k < n && k < static_cast<int>(ranked.size()); ++k) out.push_back(ranked[k].second);
    }
    return out;
  }
  std::string Whole() {
    json j = Base(chat ? "chat.completion" : "text_completion");
    json choices = json::array();
    const std::vector<size_t> answering = Answering();
    for (size_t index = 0; index < answering.size(); ++index) {
      const size_t i = answering[index];
      json c = {{"index", index},
                {"logprobs", LogprobsFor(i, echo ? &prompt_lps[i] : nullptr, lps[i])},
                {"finish_reason", finish[i]}};
      if (chat) {
        c["message"] = {{"role", "assistant"}, {"content", text[i]}};
      } else {
        c["text"] = (echo ? prompt_text[i] : std::string()) + text[i];
      }
      choices.push_back(c);
    }
    j["choices"] = choices;
    j["usage"] = Usage();
    return Dump(j);
  }
};

// OpenAI reports these; "abort" only happens when the client is gone.
std::string PublicReason(const std::string& r) { return r == "abort" ? "stop" : r; }

// One provider call: waits for output, writes what came. False ends the response (error).
bool Provide(Reply& r, httplib::DataSink& sink) {
  if (r.finished) return false;
  r.waker.Wait(&r.seen, std::chrono::milliseconds(200));
  std::string out;
  for (size_t i = 0; i < r.gens.size(); ++i) {
    if (!r.finish[i].empty()) continue;
    Delta d;
    if (!r.gens[i]->Pop(&d, std::chrono::milliseconds(0))) continue;
    if (d.done()) {
      r.finish[i] = d.finish_reason;
      r.prompt_tokens += d.prompt_tokens;
      r.completion_tokens += d.completion_tokens;
      if (d.finish_reason == "error") r.error = d.error;
      ++r.done;
    }
    if (r.stream) {
      // A chunk per batch of tokens, even before they make whole characters (or when the model
      // has no tokenizer): clients see progress at the rate tokens come. An echoed prompt
      // goes first, in the choice's first chunk.
      const bool echo_now = r.echo && !r.echoed[i];
      r.echoed[i] = true;
      if (!d.text.empty() || !d.tokens.empty() || echo_now) {
        out += r.Chunk(i, (echo_now ? r.prompt_text[i] : std::string()) + d.text, "",
                       r.LogprobsFor(i, echo_now ? &d.prompt_logprobs : nullptr, d.logprobs));
      }
      if (d.done() && d.finish_reason != "error") out += r.Chunk(i, "", PublicReason(d.finish_reason));
    } else {
      r.text[i] += d.text;
      r.lps[i].insert(r.lps[i].end(), d.logprobs.begin(), d.logprobs.end());
      r.prompt_lps[i].insert(r.prompt_lps[i].end(), d.prompt_logprobs.begin(), d.prompt_logprobs.end());
    }
  }
  const bool all_done = r.done == static_cast<int>(r.gens.size());
  if (all_done) {
    if (!r.error.empty()) {
      // Headers are out already (200): the error travels in the body, as OpenAI streams do.
      ApiError e{500, "The server had an error while processing your request: " + r.error, "", ""};
      out += r.stream ? "data: " + Dump(ErrorJson(e)) + "\n\n" : Dump(ErrorJson(e));
    } else if (r.stream) {
      if (r.include_usage) {
        json j = r.Base(r.chat ? "chat.completion.chunk" : "text_completion");
        j["choices"] = json::array();
        j["usage"] = r.Usage();
        out += "data: " + Dump(j) + "\n\n";
      }
    } else {
      for (auto& f : r.finish) f = PublicReason(f);
      out += r.Whole();
    }
    if (r.stream) out += "data: [DONE]\n\n";
  }
  const auto now = std::chrono::steady_clock::now();
  if (out.empty() && now - r.last_write > std::chrono::milliseconds(1000)) {
    // Keep-alive (and the way a vanished client is noticed): an SSE comment, or JSON whitespace.
    out = r.stream ? ": keep-alive\n\n" : " ";
  }
  if (!out.empty()) {
    r.last_write = now;
    if (!sink.write(out.data(), out.size())) return false;
  }
  if (all_done) {
    r.finished = true;
    sink.done();
  }
  return true;
}

std::string RoutePath(const std::string& path) {
  static const std::set<std::string> known = {"/v1/models", "/v1/completions",
                                              "/v1/chat/completions", "/metrics", "/health",
                                              "/ready", "/tokenize", "/detokenize"};
  if (known.count(path)) return path;
  if (path == "/v1/tokenize" || path == "/v1/detokenize") return path.substr(3);
  if (path.rfind("/v1/models/", 0) == 0) return "/v1/models/{model}";
  return "other";
}

}  // namespace

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

HttpGateway::HttpGateway(ServingCore* core) : core_(core), http_(std::make_unique<httplib::Server>()) {
  Routes();
}

HttpGateway::~HttpGateway() { Stop(); }

void HttpGateway::Routes() {
  httplib::Server& s = *http_;
  const ServerConfig& cfg = core_->config();
  s.set_payload_max_length(cfg.max_body_bytes);
  s.set_read_timeout(cfg.read_timeout_s, 0);
  s.set_write_timeout(10, 0);
  s.set_keep_alive_timeout(5);
  const int threads = cfg.http_threads;
  s.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  s.set_socket_options([this](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd_ = sock;  // the listening socket: its backlog is raised after bind (Start)
  });
  s.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    core_->metrics().HttpRequest(RoutePath(req.path), res.status);
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    ApiError e;
    e.http = res.status;
    if (res.status == 404) {
      e.message = absl::StrCat("Unknown request URL: ", req.method, " ", req.path, ".");
      e.code = "unknown_url";
    } else if (res.status == 413) {
      e.message = "The request body is too large.";
      e.code = "request_too_large";
    } else if (res.status == 400) {
      e.message = "The request could not be read: malformed HTTP, or sent too slowly.";
    } else if (res.status == 405) {
      e.message = absl::StrCat("Method ", req.method, " is not allowed on ", req.path, ".");
    } else {
      e.message = absl::StrCat("HTTP ", res.status);
    }
    SendError(res, e);
  });
  s.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    spdlog::error("http handler failed: {}", what);
    SendError(res, ApiError{500, "The server had an error while processing your request.", "", ""});
  });

  auto authenticate = [this](const httplib::Request& req, httplib::Response& res,
                             Tenants::Identity* id) {
    auto a = core_->tenants().Authenticate(req.get_header_value("Authorization"));
    if (!a.ok()) {
      core_->metrics().Rejected("unknown", 401);
      SendError(res, FromStatus(a.status()));
      return false;
    }
    *id = *a;
    if (id->tenant == nullptr) {
      SendError(res, ApiError{403, "This key may only use the admin API.", "", "admin_key"});
      return false;
    }
    return true;
  };

  s.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok\n", "text/plain");
  });
  s.Get("/ready", [this](const httplib::Request&, httplib::Response& res) {
    if (core_->draining()) {
      res.status = 503;
      res.set_content("draining\n", "text/plain");
    } else {
      res.set_content("ready\n", "text/plain");
    }
  });
  s.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(core_->RenderMetrics(), "text/plain; version=0.0.4; charset=utf-8");
  });

  auto model_json = [this](const ServedModel& m) {
    return json{{"id", m.name},
                {"object", "model"},
                {"created", 0},
                {"owned_by", "blockserve"},
                {"root", m.parent.empty() ? m.name : m.parent},
                {"parent", m.parent.empty() ? json(nullptr) : json(m.parent)},
                {"adapter", m.adapter},
                {"loaded", core_->loaded(m)},
                {"chat_format", ChatFormatName(m.chat_format)},
                {"max_model_len", m.context_length}};
  };
  s.Get("/v1/models", [this, authenticate, model_json](const httplib::Request& req,
                                                        httplib::Response& res) {
    Tenants::Identity id;
    if (!authenticate(req, res, &id)) return;
    json data = json::array();
    for (const ServedModel& m : core_->models()) {
      if (id.tenant->Allows(m.name)) data.push_back(model_json(m));
    }
    res.set_content(Dump({{"object", "list"}, {"data", data}}), "application/json");
  });
  s.Get(R"(/v1/models/([A-Za-z0-9._\-]+))", [this, authenticate, model_json](
                                                 const httplib::Request& req, httplib::Response& res) {
    Tenants::Identity id;
    if (!authenticate(req, res, &id)) return;
    const std::string name = req.matches[1];
    const ServedModel* m = core_->FindModel(name);
    if (m == nullptr || !id.tenant->Allows(name)) {
      SendError(res, ApiError{404, absl::StrCat("The model `", name, "` does not exist or you do not have access to it."), "", "model_not_found"});
      return;
    }
    res.set_content(Dump(model_json(*m)), "application/json");
  });

  auto generate = [this, authenticate](const httplib::Request& req, httplib::Response& res,
                                       bool chat) {
    Tenants::Identity id;
    if (!authenticate(req, res, &id)) return;
    const TenantConfig& tenant = *id.tenant;
    auto r = std::make_shared<Reply>();
    std::vector<GenerateParams> prompts;
    int n = 1;
    try {
      const json body = ParseObject(req.body);
      Common c = ParseCommon(body, chat, chat ? std::set<std::string>{"messages", "max_completion_tokens", "top_logprobs"}
                                              : std::set<std::string>{"prompt", "echo", "best_of", "suffix"});
      if (!chat) {
        if (Field(body, "suffix")) Bad("suffix", "'suffix' is not supported by this server.", "unsupported_parameter");
        if (auto b = Integer(body, "best_of", 1, 16)) {
          if (*b < c.n) Bad("best_of", "Invalid 'best_of': must be at least 'n'.");
          if (*b > c.n && c.stream) Bad("best_of", "'best_of' cannot be used with 'stream'.");
          r->best_of = static_cast<int>(*b);
        }
        prompts = Prompts(body, c.params);
      } else {
        GenerateParams g = c.params;
        const std::vector<ChatMessage> msgs = ChatMessages(body);
        if (const ServedModel* sm = core_->FindModel(c.model)) {
          (void)core_->ApplyChat(*sm, msgs, &g);
        } else {
          g.text = RenderChat(ChatFormat::kPlain, msgs);  // unknown model: Generate says 404
        }
        prompts.push_back(std::move(g));
      }
      n = c.n;
      r->n = n;
      r->best_of = std::max(r->best_of, n);
      r->chat = chat;
      r->stream = c.stream;
      r->include_usage = c.include_usage;
      r->logprobs = c.params.sampling.logprobs >= 0;
      r->echo = c.echo;
      if (const ServedModel* sm = core_->FindModel(c.model)) r->tokenizer = sm->tokenizer.get();
      r->model = c.model;
    } catch (const BadRequest& b) {
      core_->metrics().Rejected(tenant.name, b.error.http);
      SendError(res, b.error);
      return;
    }
    r->id = Id(chat ? "chatcmpl-" : "cmpl-");
    r->created = std::time(nullptr);
    for (const GenerateParams& base : prompts) {
      for (int k = 0; k < r->best_of; ++k) {
        GenerateParams g = base;
        if (k > 0 && g.sampling.seed != 0) g.sampling.seed += k;  // n samples, not n copies
        if (k > 0 && g.sampling.seed == 0) g.sampling.seed = 0x9e3779b97f4a7c15ull * k;
        // best_of ranks the candidates by their log-probabilities.
        if (r->best_of > n) g.sampling.logprobs = std::max(g.sampling.logprobs, 0);
        auto gen = core_->Generate(tenant, std::move(g));
        if (!gen.ok()) {
          r->CancelAll();
          ApiError e = FromStatus(gen.status());
          core_->metrics().Rejected(tenant.name, e.http);
          if (e.http == 429) res.set_header("Retry-After", "1");
          SendError(res, e);
          return;
        }
        r->gens.push_back(*gen);
        r->text.emplace_back();
        r->finish.emplace_back();
        r->role_sent.push_back(false);
        r->lps.emplace_back();
        r->prompt_lps.emplace_back();
        r->offset.push_back(0);
        r->echoed.push_back(false);
        // The echoed prompt: as sent, or its tokens' text.
        r->prompt_text.push_back(base.text ? *base.text
                                 : r->tokenizer ? r->tokenizer->DecodeText((*gen)->prompt_ids())
                                                : std::string());
      }
    }
    std::weak_ptr<Reply> weak = r;
    for (auto& g : r->gens) {
      g->SetNotify([weak] {
        if (auto p = weak.lock()) p->waker.Notify();
      });
    }
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        r->stream ? "text/event-stream" : "application/json",
        [r](size_t, httplib::DataSink& sink) { return Provide(*r, sink); },
        [r](bool success) {
          // A client gone before the end: its requests are aborted (pages freed).
          for (auto& g : r->gens) g->SetNotify(nullptr);
          if (!r->finished) r->CancelAll();
        });
  };
  // vLLM's /tokenize and /detokenize (also under /v1/): the model's tokenizer, for clients that
  // count or inspect tokens, with generation's authentication and model access.
  auto tokens = [this, authenticate](const httplib::Request& req, httplib::Response& res,
                                     bool detokenize) {
    Tenants::Identity id;
    if (!authenticate(req, res, &id)) return;
    try {
      const json body = ParseObject(req.body);
      static const std::set<std::string> kTokenize = {"model", "prompt", "messages",
                                                      "add_special_tokens", "add_generation_prompt"};
      static const std::set<std::string> kDetokenize = {"model", "tokens"};
      for (const auto& [k, v] : body.items()) {
        if (!(detokenize ? kDetokenize : kTokenize).count(k)) {
          Bad(k, absl::StrCat("Unrecognized request argument supplied: ", k), "unknown_parameter");
        }
      }
      auto m = core_->ModelFor(*id.tenant, String(body, "model", true));
      if (!m.ok()) return SendError(res, FromStatus(m.status()));
      const ServedModel& model = **m;
      if (!model.tokenizer) Bad("model", absl::StrCat("The model `", model.name, "` has no tokenizer."));
      if (detokenize) {
        const json* ids = Field(body, "tokens");
        if (!ids) Bad("tokens", "Missing required parameter: 'tokens'.", "missing_required_parameter");
        if (!ids->is_array()) BadType("tokens", *ids, "an array of token ids");
        std::vector<int32_t> toks;
        for (const json& t : *ids) {
          if (!t.is_number_integer()) BadType("tokens", t, "an integer token id");
          const int64_t v = t.get<int64_t>();
          if (v < 0 || v >= model.vocab_size) {
            Bad("tokens", absl::StrCat("Token id ", v, " is outside the vocabulary of `", model.name,
                                       "` (", model.vocab_size, ")."));
          }
          toks.push_back(static_cast<int32_t>(v));
        }
        res.set_content(Dump({{"prompt", SanitizeUtf8(model.tokenizer->DecodeText(toks))}}),
                        "application/json");
        return;
      }
      GenerateParams g;
      if (Field(body, "messages")) {  // as a chat request would be prompted
        if (auto st = core_->ApplyChat(model, ChatMessages(body), &g); !st.ok()) {
          return SendError(res, FromStatus(st));
        }
      } else {
        g.text = String(body, "prompt", true);
        if (Field(body, "add_special_tokens")) g.add_bos = Bool(body, "add_special_tokens");
      }
      auto toks = core_->PromptTokens(model, g);
      if (!toks.ok()) return SendError(res, FromStatus(toks.status()));
      res.set_content(Dump({{"count", toks->size()},
                            {"max_model_len", model.context_length},
                            {"tokens", *toks}}),
                      "application/json");
    } catch (const BadRequest& b) {
      core_->metrics().Rejected(id.tenant->name, b.error.http);
      SendError(res, b.error);
    }
  };
  for (const char* prefix : {"", "/v1"}) {
    s.Post(absl::StrCat(prefix, "/tokenize"), [tokens](const httplib::Request& req, httplib::Response& res) {
      tokens(req, res, false);
    });
    s.Post(absl::StrCat(prefix, "/detokenize"), [tokens](const httplib::Request& req, httplib::Response& res) {
      tokens(req, res, true);
    });
  }
  s.Post("/v1/completions", [generate](const httplib::Request& req, httplib::Response& res) {
    generate(req, res, false);
  });
  s.Post("/v1/chat/completions", [generate](const httplib::Request& req, httplib::Response& res) {
    generate(req, res, true);
  });
}

absl::Status HttpGateway::Start(const std::string& host, int port) {
  if (port == 0) {
    port_ = http_->bind_to_any_port(host);
    if (port_ <= 0) return absl::UnavailableError(absl::StrCat("HTTP: cannot bind ", host));
  } else {
    if (!http_->bind_to_port(host, port)) {
      return absl::UnavailableError(absl::StrCat("HTTP: cannot bind ", host, ":", port));
    }
    port_ = port;
  }
  // cpp-httplib listens with a backlog of 5; a thousand clients connecting at once need more.
  if (listen_fd_ >= 0) ::listen(listen_fd_, 4096);
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  for (int i = 0; i < 500 && !http_->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return absl::OkStatus();
}

void HttpGateway::Stop() {
  if (http_) http_->stop();
  if (thread_.joinable()) thread_.join();
}

}  // namespace blockserve::server
