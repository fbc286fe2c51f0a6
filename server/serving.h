// The serving core shared by the gRPC services and the HTTP gateway: the zoo's models on one
// engine (every tenant's equivalence policy a variant of each model, all sharing block
// instances), tokenization, text streaming with stop strings, tenant admission (keys, allowed
// models, rate limits, concurrency), metrics, and draining.
#pragma once

#include <atomic>
#include <chrono>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "blockzoo/zoo.h"
#include "runtime/constraint.h"
#include "runtime/sampler.h"
#include "runtime/tokenizer/tokenizer.h"
#include "scheduler/engine.h"
#include "server/chat_template.h"
#include "server/config.h"
#include "server/metrics.h"
#include "server/served_model.h"
#include "server/text_stream.h"

namespace blockserve::server {

struct GenerateParams {
  std::string model;
  std::optional<std::string> text;   // prompt text, or
  std::vector<int32_t> token_ids;    // prompt tokens
  bool add_bos = true;               // for a text prompt
  // The text is a rendered chat: its turn markers that are single tokens encode as those
  // tokens (set by ApplyChat; encoding waits for Generate's cheap checks).
  bool chat_markers = false;
  int max_tokens = 0;                // 0: the configured default; capped by the context
  bool max_tokens_to_context = false;  // 0 means "the rest of the context" (chat)
  runtime::SamplingParams sampling;
  std::vector<std::string> stop;
  std::optional<int> priority;
  // -1: none; k: the log-probabilities of the prompt's tokens after the first, with the k most
  // likely at each position (Delta::prompt_logprobs, with the first delta that has output).
  int prompt_logprobs = -1;
  // Generate nothing: only the prompt is scored (prompt_logprobs); the one token the engine
  // computes is dropped, and the generation ends with "length" and no completion tokens.
  bool score_only = false;
  // vLLM's extensions: keep generating past the model's end-of-text token (to max_tokens), and
  // more tokens that end a generation (not included in the output, as EOS).
  bool ignore_eos = false;
  std::vector<int32_t> stop_token_ids;
  // Structured output (runtime/constraint.h): the text is one JSON object (OpenAI's
  // response_format json_object), or exactly one of these strings (vLLM's guided_choice).
  bool json_object = false;
  std::vector<std::string> guided_choice;
  // Whether the client has gone away (null: never asked): checked once the prompt is encoded,
  // before the request reaches the engine.
  std::function<bool()> client_gone;
};

// A token and its log-probability, with the bytes it adds to the text (after the token before it).
struct TokenInfo {
  int32_t token = 0;
  float logprob = 0;
  std::string bytes;
};

// Log-probabilities of one generated token (GenerateParams::sampling.logprobs >= 0).
struct TokenLogprobs {
  TokenInfo chosen;
  std::vector<TokenInfo> top;  // the most likely tokens, most likely first
};

// One piece of a generation's output; the last one has `finish` set.
struct Delta {
  std::vector<int32_t> tokens;
  std::vector<TokenLogprobs> logprobs;  // one per token, when asked for
  std::vector<TokenLogprobs> prompt_logprobs;  // prompt tokens 1, 2, ... (once, when asked for)
  std::string text;
  scheduler::Finish finish = scheduler::Finish::kNone;  // the engine's finish, as clients see it
  std::string error;          // with kError
  bool unavailable = false;   // with kError: the server stopped it (shutting down); retry elsewhere
  int prompt_tokens = 0, completion_tokens = 0;
  bool done() const { return finish != scheduler::Finish::kNone; }
  // "stop", "length", "abort", "error" (scheduler::FinishReason); "" until done.
  std::string finish_reason() const { return scheduler::FinishReason(finish); }
  // Appends the next delta `d` of the same generation (its ending, when it has one).
  void Append(Delta&& d);
};

// A request in flight: the sink (an output stage thread) pushes deltas, one consumer pops them
// (merged).
class Generation {
 public:
  // Everything available, merged into one delta; false when nothing came within `wait`.
  bool Pop(Delta* out, std::chrono::milliseconds wait);
  // Called (outside any lock of this object) after each push; null to stop.
  void SetNotify(std::function<void()> notify);
  // Aborts the request (a client went away); its last delta follows with "abort".
  void Cancel();
  // Aborts the request because the server is shutting down (the drain deadline passed): its
  // last delta is an error (`unavailable`) the client sees, never a normal end.
  void Shutdown();
  int prompt_tokens() const { return static_cast<int>(prompt_ids_.size()); }
  const std::vector<int32_t>& prompt_ids() const { return prompt_ids_; }
  const std::string& model() const { return model_; }

 private:
  friend class ServingCore;
  void Push(Delta d);

  std::function<void()> cancel_;
  std::atomic<bool> shutdown_{false};
  std::string model_;
  std::vector<int32_t> prompt_ids_;
  absl::Mutex mu_;
  absl::CondVar cv_;
  std::deque<Delta> queue_ ABSL_GUARDED_BY(mu_);
  std::function<void()> notify_ ABSL_GUARDED_BY(mu_);
};

class ServingCore {
 public:
  static absl::StatusOr<std::unique_ptr<ServingCore>> Create(const std::string& zoo_dir,
                                                             ServerConfig config);
  ~ServingCore();

  // Admits and starts a generation. Errors carry the status code the API returns:
  // NOT_FOUND (no such model, or the tenant may not use it: the same answer), INVALID_ARGUMENT
  // (prompt, max_tokens, sampling), RESOURCE_EXHAUSTED (rate limits, checked before the prompt
  // is encoded), UNAVAILABLE (draining, unloaded).
  absl::StatusOr<std::shared_ptr<Generation>> Generate(const TenantConfig& tenant,
                                                       GenerateParams params);

  const std::vector<ServedModel>& models() const { return models_; }
  // Models of the zoo that could not be read at start (damaged manifest, tokenizer, chain):
  // name -> the file and reason. They answer as missing; the others serve.
  const std::map<std::string, std::string>& unavailable() const { return unavailable_; }
  const ServedModel* FindModel(const std::string& name) const;
  // The model `name` if `tenant` may use it; NOT_FOUND otherwise (either way).
  absl::StatusOr<const ServedModel*> ModelFor(const TenantConfig& tenant,
                                              const std::string& name) const;
  // The prompt of `p` as `m`'s tokens (its text encoded, or its token ids checked); moves from p.
  absl::StatusOr<std::vector<int32_t>> PromptTokens(const ServedModel& m, GenerateParams& p) const;
  // The fewest tokens the prompt of `p` can encode to (its bytes over the tokenizer's longest
  // token), known without encoding it.
  static int64_t MinPromptTokens(const ServedModel& m, const GenerateParams& p);
  // Each token's bytes for `m`'s tokenizer (structured output), built on first use.
  std::shared_ptr<const runtime::TokenBytes> TokenBytesOf(const ServedModel& m);
  // A chat request's prompt for `m` (its chat format; markers that are tokens become those
  // tokens) and the strings that end the assistant's turn, into `p`.
  absl::Status ApplyChat(const ServedModel& m, const std::vector<ChatMessage>& messages,
                         GenerateParams* p) const;
  bool loaded(const ServedModel& m) const;
  Tenants& tenants() { return tenants_; }
  const ServerConfig& config() const { return config_; }
  Metrics& metrics() { return metrics_; }
  scheduler::Engine& engine() { return *engine_; }
  std::string RenderMetrics();

  // Admin: every policy variant of the model; the instances loaded / freed.
  absl::StatusOr<int> LoadModel(const std::string& name);
  absl::StatusOr<int> UnloadModel(const std::string& name);
  // Names of the models whose chains use each engine instance.
  std::vector<std::vector<std::string>> InstanceUsers() const;

  // Stops admitting (UNAVAILABLE), waits up to `deadline` for in-flight requests, aborts the
  // rest and waits for them to end, then (within what is left of `deadline`) for their readers
  // to let go of them — a stream's last chunk and [DONE] are written by then. Returns the
  // number aborted.
  int Drain(std::chrono::duration<double> deadline);
  int in_flight() const;
  bool draining() const { return draining_; }

 private:
  // The tenant's limits and the prompt's cheap length bound, before any expensive work.
  // A rendered chat's tokens: its marker strings as their tokens, the rest encoded.
  static std::vector<int32_t> EncodeChat(const ServedModel& m, const std::string& text, bool add_bos);
  absl::Status Prechecks(const TenantConfig& tenant, const ServedModel& m, const GenerateParams& p);
  ServingCore(ServerConfig config);
  // A generation ended (or never started): no longer in flight, its adapter count dropped.
  void Forget(uint64_t id, const ServedModel& m);
  // LoadModel / UnloadModel of every policy variant of a model.
  absl::StatusOr<int> ForVariants(const std::string& name, bool load);

  ServerConfig config_;
  std::unique_ptr<blockzoo::Zoo> zoo_;
  std::vector<ServedModel> models_;
  std::map<std::string, std::string> unavailable_;
  std::unique_ptr<scheduler::Engine> engine_;
  Tenants tenants_;
  Metrics metrics_;
  std::atomic<bool> draining_{false};
  mutable absl::Mutex mu_;
  absl::CondVar idle_cv_;
  std::map<uint64_t, std::weak_ptr<Generation>> active_ ABSL_GUARDED_BY(mu_);
  // Generations still held by anyone (a reader writing out its last deltas, or the engine):
  // shared with each generation's deleter, so it may outlive this object.
  struct Holders {
    absl::Mutex mu;
    absl::CondVar cv;
    int live ABSL_GUARDED_BY(mu) = 0;
  };
  std::shared_ptr<Holders> holders_ = std::make_shared<Holders>();
  std::map<std::string, int> adapter_running_ ABSL_GUARDED_BY(mu_);  // LoRA model -> in flight
  std::map<const runtime::Tokenizer*, std::shared_ptr<const runtime::TokenBytes>> token_bytes_
      ABSL_GUARDED_BY(mu_);
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
};

// The policy key of an engine model variant ("exact", "equivalent:0.99:noskip:0").
std::string PolicyKey(const blockzoo::ResolvePolicy& p);

}  // namespace blockserve::server
