// The OpenAI API's response side for the HTTP gateway: one Reply per request holds every
// choice's generation and what has been sent; Provide writes it out as it comes — server-sent
// event chunks (with usage and [DONE]) or one completion object, log-probabilities in the chat
// and the legacy completions shapes, best_of ranking, echo, and the error a stream ends with.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "nlohmann/json.hpp"
#include "server/http_parser.h"
#include "server/openai_request.h"
#include "server/serving.h"

namespace blockserve::server::openai {

using json = nlohmann::json;

// JSON as sent: invalid UTF-8 replaced, never thrown on.
std::string Dump(const json& j);
// A response id: prefix, time and a process-wide counter.
std::string Id(const char* prefix);

// Wakes a response provider when any of its generations has output.
struct Waker {
  absl::Mutex mu;
  absl::CondVar cv;
  uint64_t seq ABSL_GUARDED_BY(mu) = 0;
  void Notify() {
    absl::MutexLock lock(&mu);
    ++seq;
    cv.SignalAll();
  }
  // Waits until a notify after `*seen` or the timeout.
  void Wait(uint64_t* seen, std::chrono::milliseconds timeout) {
    absl::MutexLock lock(&mu);
    const absl::Time deadline = absl::Now() + absl::FromChrono(timeout);
    while (seq == *seen && !cv.WaitWithDeadline(&mu, deadline)) {
    }
    *seen = seq;
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
  bool unavailable = false;  // the error: the server stopped it (shutting down)
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
                    json logprobs_json = nullptr);
  // Choice i's `logprobs` for its next tokens `gen`, after its prompt's (`prompt`, when the
  // prompt is echoed here: the first piece of the choice).
  json LogprobsFor(size_t i, const std::vector<TokenLogprobs>* prompt,
                   const std::vector<TokenLogprobs>& gen);
  // The generations that answer, in order: all of them, or per prompt the n of its best_of
  // with the highest mean log-probability per token (one with no tokens last).
  std::vector<size_t> Answering() const;
  std::string Whole();
  // The error object for `error` (503 when the server stopped the request, else 500).
  ApiError Error() const;
};

// OpenAI reports these; "abort" only happens when the client is gone.
std::string PublicReason(const std::string& r);

// One provider call: waits for output, writes what came. False ends the response (error).
// A stream gets SSE chunks (and a keep-alive comment every second of silence, which is how a
// vanished client is noticed); a whole response gets its body once, and nothing on an error.
bool Provide(Reply& r, http::DataSink& sink);

// A whole (non-streaming) response: waits for every generation, asking `client_gone` between
// waits; the body (on success) into `body`. False when the client went away (or failed).
bool WaitWhole(Reply& r, const std::function<bool()>& client_gone, std::string* body);

}  // namespace blockserve::server::openai
