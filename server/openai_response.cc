#include "server/openai_response.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "server/openai_request.h"
#include "server/text_stream.h"
#include "spdlog/spdlog.h"

namespace blockserve::server::openai {

std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

std::string Id(const char* prefix) {
  static std::atomic<uint64_t> n{0};
  return absl::StrCat(prefix, std::time(nullptr), "-", ++n);
}

namespace {

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

}  // namespace

std::string Reply::Chunk(size_t i, const std::string& piece, const std::string& reason,
                  json logprobs_json) {
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

json Reply::LogprobsFor(size_t i, const std::vector<TokenLogprobs>* prompt,
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

std::vector<size_t> Reply::Answering() const {
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

std::string Reply::Whole() {
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

ApiError Reply::Error() const {
  return unavailable ? ApiError{503, "The server stopped this request: " + error, "",
                                "server_shutting_down"}
                     : ApiError{500, "The server had an error while processing your request: " +
                                         error, "", ""};
}

bool WaitWhole(Reply& r, const std::function<bool()>& client_gone, std::string* body) {
  bool done = false;
  http::DataSink sink;
  sink.write = [&](const char* data, size_t n) {
    body->append(data, n);
    return true;
  };
  sink.done = [&] { done = true; };
  while (!done) {
    if (client_gone && client_gone()) return false;
    if (!Provide(r, sink)) return false;
  }
  return true;
}

// OpenAI reports these; "abort" only happens when the client is gone.
std::string PublicReason(const std::string& r) { return r == "abort" ? "stop" : r; }

// One provider call: waits for output, writes what came. False ends the response (error).
bool Provide(Reply& r, http::DataSink& sink) {
  if (r.finished) return false;
  r.waker.Wait(&r.seen, std::chrono::milliseconds(200));
  std::string out;
  for (size_t i = 0; i < r.gens.size(); ++i) {
    if (!r.finish[i].empty()) continue;
    Delta d;
    if (!r.gens[i]->Pop(&d, std::chrono::milliseconds(0))) continue;
    if (d.done()) {
      r.finish[i] = d.finish_reason();
      r.prompt_tokens += d.prompt_tokens;
      r.completion_tokens += d.completion_tokens;
      if (d.finish == scheduler::Finish::kError) {
        r.error = d.error;
        r.unavailable |= d.unavailable;
      }
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
      if (d.done() && d.finish != scheduler::Finish::kError) {
        out += r.Chunk(i, "", PublicReason(d.finish_reason()));
      }
    } else {
      r.text[i] += d.text;
      r.lps[i].insert(r.lps[i].end(), d.logprobs.begin(), d.logprobs.end());
      r.prompt_lps[i].insert(r.prompt_lps[i].end(), d.prompt_logprobs.begin(), d.prompt_logprobs.end());
    }
  }
  const bool all_done = r.done == static_cast<int>(r.gens.size());
  if (all_done) {
    if (!r.error.empty()) {
      // One log line per failed request, with its id (the client sees the same id).
      spdlog::error("request {} ({}) failed: {}", r.id, r.model, r.error);
      // A stream's headers are out already (200): the error travels as its last event, as
      // OpenAI's and vLLM's streams do. A whole response answers it with its own status.
      if (r.stream) out += "data: " + Dump(ErrorJson(r.Error())) + "\n\n";
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
  if (out.empty() && r.stream && now - r.last_write > std::chrono::milliseconds(1000)) {
    // Keep-alive (and the way a vanished client is noticed): an SSE comment.
    out = ": keep-alive\n\n";
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

}  // namespace blockserve::server::openai
