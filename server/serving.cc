#include "server/serving.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "blockzoo/file_util.h"
#include "blockzoo/formats/gguf.h"
#include "runtime/status_macros.h"
#include "scheduler/zoo_engine.h"
#include "server/request_limits.h"
#include "spdlog/spdlog.h"

namespace blockserve::server {

using scheduler::Event;
using scheduler::Finish;

std::string PolicyKey(const blockzoo::ResolvePolicy& p) {
  if (p.mode == blockzoo::ResolvePolicy::Mode::kExact) return "exact";
  return absl::StrFormat("equivalent:%g:%s:%g", p.threshold, p.allow_skip ? "skip" : "noskip",
                         p.min_top1);
}

namespace {

// `token`'s log-probabilities and its alternatives', each with the bytes it adds to the text
// after `after` (llama2.c drops a space after BOS); no bytes without a tokenizer.
TokenLogprobs WithText(const runtime::Tokenizer* tokenizer, int32_t after, int32_t token,
                       const runtime::Logprobs& lp) {
  auto info = [&](int32_t t, float logprob) {
    return TokenInfo{t, logprob, tokenizer ? tokenizer->Decode(after, t) : std::string()};
  };
  TokenLogprobs out{info(token, lp.logprob), {}};
  for (const runtime::TokenLogprob& t : lp.top) out.top.push_back(info(t.token, t.logprob));
  return out;
}

}  // namespace

// ---- Generation ----

void Generation::Push(Delta d) {
  std::function<void()> notify;
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(d));
    notify = notify_;
    cv_.SignalAll();
  }
  if (notify) notify();
}

void Delta::Append(Delta&& d) {
  tokens.insert(tokens.end(), d.tokens.begin(), d.tokens.end());
  auto take = [](std::vector<TokenLogprobs>& to, std::vector<TokenLogprobs>& from) {
    to.insert(to.end(), std::make_move_iterator(from.begin()), std::make_move_iterator(from.end()));
  };
  take(logprobs, d.logprobs);
  take(prompt_logprobs, d.prompt_logprobs);
  text += d.text;
  if (d.done()) {
    finish = d.finish;
    error = std::move(d.error);
    unavailable = d.unavailable;
    prompt_tokens = d.prompt_tokens;
    completion_tokens = d.completion_tokens;
  }
}

bool Generation::Pop(Delta* out, std::chrono::milliseconds wait) {
  absl::MutexLock lock(&mu_);
  const absl::Time deadline = absl::Now() + absl::FromChrono(wait);
  while (queue_.empty() && !cv_.WaitWithDeadline(&mu_, deadline)) {
  }
  if (queue_.empty()) return false;
  *out = Delta();
  for (; !queue_.empty(); queue_.pop_front()) out->Append(std::move(queue_.front()));
  return true;
}

void Generation::SetNotify(std::function<void()> notify) {
  absl::MutexLock lock(&mu_);
  notify_ = std::move(notify);
}

void Generation::Cancel() {
  if (cancel_) cancel_();
}

void Generation::Shutdown() {
  shutdown_ = true;
  Cancel();
}

// ---- ServingCore ----

ServingCore::ServingCore(ServerConfig config) : config_(std::move(config)), tenants_(config_) {}

ServingCore::~ServingCore() {
  if (engine_) engine_->Stop();
}

absl::StatusOr<std::unique_ptr<ServingCore>> ServingCore::Create(const std::string& zoo_dir,
                                                                 ServerConfig config) {
  std::unique_ptr<ServingCore> core(new ServingCore(std::move(config)));
  const ServerConfig& c = core->config_;
  ASSIGN_OR_RETURN(core->zoo_, blockzoo::Zoo::Open(zoo_dir, /*create=*/false));
  std::vector<std::string> names = c.models;
  if (names.empty()) {
    ASSIGN_OR_RETURN(names, core->zoo_->ListModels());
  }
  if (names.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(zoo_dir, ": the zoo has no models (import one with `blockzoo import`)"));
  }
  // One engine model per (model, policy some tenant uses); all share block instances.
  std::map<std::string, blockzoo::ResolvePolicy> policies = {{"exact", {}}};
  for (const TenantConfig& t : core->tenants_.all()) policies[PolicyKey(t.policy)] = t.policy;
  std::vector<scheduler::ModelRef> refs;
  for (const std::string& n : names) {
    auto described = DescribeModel(*core->zoo_, n, policies);
    if (!described.ok()) {
      // One damaged model is down alone: the log and the admin API say which and why.
      spdlog::error("model {} is unavailable: {}", n, std::string(described.status().message()));
      core->unavailable_[n] = std::string(described.status().message());
      continue;
    }
    ServedModel sm = std::move(*described);
    for (const auto& [key, policy] : policies) {
      sm.engine_model[key] = static_cast<int>(refs.size());
      refs.push_back({n, policy, key == "exact" ? n : absl::StrCat(n, "@", key)});
    }
    core->models_.push_back(std::move(sm));
  }
  if (core->models_.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        zoo_dir, ": no model can be served (", core->unavailable_.begin()->first, ": ",
        core->unavailable_.begin()->second, ")"));
  }
  runtime::BlockOptions bo;
  bo.kv_page_size = c.kv_page_size;
  bo.kv_dtype = c.kv_dtype;
  ASSIGN_OR_RETURN(auto engine_models,
                   scheduler::LoadEngineModels(*core->zoo_, refs, bo, /*lazy=*/true,
                                               /*share=*/true, c.block_source));
  scheduler::EngineOptions eo;
  eo.threads = c.threads;
  eo.max_batch_tokens = c.max_batch_tokens;
  eo.kv_page_size = c.kv_page_size;
  eo.kv_dtype = c.kv_dtype;
  eo.kv_budget_bytes = c.kv_budget;
  if (eo.kv_budget_bytes == 0) {
    std::string why;
    eo.kv_budget_bytes =
        scheduler::DefaultKvBudget(engine_models, c.max_running, c.kv_dtype, &why);
    spdlog::info("KV budget (engine.kv_budget_mib not set): {}", why);
  }
  eo.memory_budget = c.memory_budget;
  eo.background_loads = c.background_loads;
  eo.profile_max_batch = c.profile_max_batch;
  eo.scheduler.max_step_tokens = c.max_step_tokens;
  eo.scheduler.prefill_chunk = std::min(c.max_step_tokens, 256);
  eo.scheduler.max_running = c.max_running;
  eo.scheduler.prefix_cache = c.prefix_cache;
  for (const TenantConfig& t : core->tenants_.all()) {
    eo.scheduler.tenant_weights[t.name] = t.weight;
    if (t.share_prefixes) eo.scheduler.shared_prefix_tenants.insert(t.name);
    if (!t.cache_prefixes) eo.scheduler.uncached_tenants.insert(t.name);
  }
  core->engine_ = std::make_unique<scheduler::Engine>(eo, std::move(engine_models));
  for (ServedModel& sm : core->models_) {
    for (scheduler::InstanceId i :
         core->engine_->scheduler().models()[sm.engine_model.at("exact")].chain) {
      sm.blocks.push_back(core->engine_->stats().instances[i].name);
    }
  }
  core->engine_->Start();
  return core;
}

const ServedModel* ServingCore::FindModel(const std::string& name) const {
  for (const ServedModel& m : models_) {
    if (m.name == name) return &m;
  }
  return nullptr;
}

absl::Status ServingCore::ApplyChat(const ServedModel& m, const std::vector<ChatMessage>& messages,
                                    GenerateParams* p) const {
  const std::string text = RenderChat(m.chat_format, messages);
  for (const std::string& s : ChatStops(m.chat_format)) p->stop.push_back(s);
  p->token_ids.clear();
  p->text = text;
  p->chat_markers = !m.marker_ids.empty() && m.tokenizer != nullptr;
  return absl::OkStatus();
}

std::vector<int32_t> ServingCore::EncodeChat(const ServedModel& m, const std::string& text,
                                             bool add_bos) {
  std::vector<std::string> markers;
  for (const auto& [mk, id] : m.marker_ids) markers.push_back(mk);
  std::vector<int32_t> out;
  if (m.tokenizer->bos_id() >= 0 && add_bos) out.push_back(m.tokenizer->bos_id());
  for (const auto& [piece, is_marker] : SplitAtMarkers(text, markers)) {
    if (is_marker) {
      out.push_back(m.marker_ids.at(piece));
    } else {
      const std::vector<int32_t> ids = m.tokenizer->Encode(piece, /*add_bos=*/false);
      out.insert(out.end(), ids.begin(), ids.end());
    }
  }
  return out;
}

bool ServingCore::loaded(const ServedModel& m) const {
  return engine_->loaded(m.engine_model.at("exact"));
}

int ServingCore::in_flight() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(active_.size());
}

void ServingCore::Forget(uint64_t id, const ServedModel& m) {
  absl::MutexLock lock(&mu_);
  if (m.adapter && --adapter_running_[m.name] == 0) adapter_running_.erase(m.name);
  active_.erase(id);
  if (active_.empty()) idle_cv_.SignalAll();
}

namespace {

// A model that does not exist and one the tenant may not use get the same answer (OpenAI's
// words), so a tenant cannot learn which names other tenants serve.
absl::Status ModelNotFound(const std::string& name) {
  return absl::NotFoundError(
      absl::StrCat("The model `", name, "` does not exist or you do not have access to it."));
}

}  // namespace

absl::StatusOr<const ServedModel*> ServingCore::ModelFor(const TenantConfig& tenant,
                                                         const std::string& name) const {
  const ServedModel* m = FindModel(name);
  if (m == nullptr || !tenant.Allows(m->name)) return ModelNotFound(name);
  return m;
}

int64_t ServingCore::MinPromptTokens(const ServedModel& m, const GenerateParams& p) {
  if (!p.text) return static_cast<int64_t>(p.token_ids.size());
  if (!m.tokenizer) return 0;
  const size_t per_token = std::max<size_t>(1, m.tokenizer->max_token_bytes());
  return static_cast<int64_t>((p.text->size() + per_token - 1) / per_token);
}

absl::Status ServingCore::Prechecks(const TenantConfig& tenant, const ServedModel& m,
                                    const GenerateParams& p) {
  // What costs a lookup comes before what costs work: the tenant's limits (a request over them
  // is a 429 whatever its prompt), then a prompt that cannot fit the context even at the most
  // bytes a token can cover (a 400 without encoding it).
  const int64_t min_prompt = MinPromptTokens(m, p);
  double retry = 0;
  RETURN_IF_ERROR(tenants_.Precheck(tenant, static_cast<double>(min_prompt) + std::max(1, p.max_tokens),
                                    &retry));
  if (min_prompt >= m.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "This model's maximum context length is ", m.context_length,
        " tokens. However, your prompt is at least ", min_prompt, " tokens (",
        p.text ? p.text->size() : 0, " bytes). Please reduce the prompt."));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> ServingCore::PromptTokens(const ServedModel& m,
                                                               GenerateParams& p) const {
  if (p.text) {
    if (!m.tokenizer) {
      return absl::InvalidArgumentError(
          absl::StrCat("The model `", m.name, "` has no tokenizer: send token ids."));
    }
    if (p.chat_markers) return EncodeChat(m, *p.text, p.add_bos);
    return m.tokenizer->Encode(*p.text, p.add_bos);
  }
  for (int32_t t : p.token_ids) {
    if (t < 0 || t >= m.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "Token id ", t, " is outside the vocabulary of `", m.name, "` (", m.vocab_size, ")."));
    }
  }
  return std::move(p.token_ids);
}

std::shared_ptr<const runtime::TokenBytes> ServingCore::TokenBytesOf(const ServedModel& m) {
  absl::MutexLock lock(&mu_);
  auto& t = token_bytes_[m.tokenizer.get()];
  if (!t) t = runtime::MakeTokenBytes(*m.tokenizer);
  return t;
}

absl::StatusOr<std::shared_ptr<Generation>> ServingCore::Generate(const TenantConfig& tenant,
                                                                  GenerateParams p) {
  RETURN_IF_ERROR(CheckRequestLimits(p));
  ASSIGN_OR_RETURN(const ServedModel* m, ModelFor(tenant, p.model));
  if (draining_) return absl::UnavailableError("The server is shutting down.");
  auto key = m->engine_model.find(PolicyKey(tenant.policy));
  const int engine_model = key != m->engine_model.end() ? key->second : m->engine_model.at("exact");
  if (!engine_->loaded(engine_model)) {
    return absl::UnavailableError(absl::StrCat("The model `", m->name, "` is not loaded."));
  }
  RETURN_IF_ERROR(Prechecks(tenant, *m, p));
  ASSIGN_OR_RETURN(std::vector<int32_t> prompt, PromptTokens(*m, p));
  if (p.client_gone && p.client_gone()) {
    return absl::CancelledError("The client went away before its request started.");
  }
  const int n_prompt = static_cast<int>(prompt.size());
  if (n_prompt == 0) return absl::InvalidArgumentError("The prompt is empty.");
  if (p.max_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be at least 1; got ", p.max_tokens, "."));
  }
  if (p.prompt_logprobs < -1 || p.prompt_logprobs > runtime::kMaxLogprobs) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt_logprobs must be in [0, ", runtime::kMaxLogprobs, "]; got ", p.prompt_logprobs, "."));
  }
  int max_tokens = p.score_only ? 1 : p.max_tokens;
  if (max_tokens == 0) {
    max_tokens = p.max_tokens_to_context ? m->context_length - n_prompt : config_.default_max_tokens;
    max_tokens = std::min(max_tokens, m->context_length - n_prompt);
  }
  if (n_prompt >= m->context_length || n_prompt + static_cast<int64_t>(max_tokens) > m->context_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "This model's maximum context length is ", m->context_length,
        " tokens. However, you requested ", n_prompt + static_cast<int64_t>(max_tokens),
        " tokens (", n_prompt, " in the prompt, ", max_tokens,
        " in the completion). Please reduce the prompt or the completion length."));
  }
  RETURN_IF_ERROR(p.sampling.Validate());
  auto in_vocab = [&](const char* what, int32_t token) {
    return token >= 0 && token < m->vocab_size
               ? absl::OkStatus()
               : absl::InvalidArgumentError(absl::StrCat(what, ": token id ", token,
                                                         " is outside the vocabulary of `",
                                                         m->name, "` (", m->vocab_size, ")."));
  };
  for (const auto& [token, bias] : p.sampling.logit_bias) RETURN_IF_ERROR(in_vocab("logit_bias", token));
  for (int32_t token : p.stop_token_ids) RETURN_IF_ERROR(in_vocab("stop_token_ids", token));
  if (p.sampling.min_tokens > max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("min_tokens (", p.sampling.min_tokens,
                                                   ") must not exceed max_tokens (", max_tokens, ")."));
  }
  std::vector<int32_t> stops;
  if (!p.ignore_eos) stops = m->stop_tokens;
  stops.insert(stops.end(), p.stop_token_ids.begin(), p.stop_token_ids.end());
  if (p.json_object || !p.guided_choice.empty()) {
    if (!m->tokenizer) {
      return absl::InvalidArgumentError(
          absl::StrCat("Structured output needs a tokenizer; the model `", m->name, "` has none."));
    }
    if (stops.empty()) {
      return absl::InvalidArgumentError(
          "Structured output ends at a stop token: with ignore_eos, give stop_token_ids.");
    }
    p.sampling.constraint =
        p.json_object ? runtime::JsonObjectConstraint(TokenBytesOf(*m), stops)
                      : runtime::ChoiceConstraint(TokenBytesOf(*m), stops, p.guided_choice);
  }
  double retry = 0;
  const double reserved = n_prompt + max_tokens;
  RETURN_IF_ERROR(tenants_.Admit(tenant, reserved, &retry));

  scheduler::RequestSpec spec;
  spec.tenant = tenant.name;
  spec.priority = p.priority.value_or(tenant.priority);
  spec.model = engine_model;
  spec.prompt = std::move(prompt);
  spec.max_tokens = max_tokens;
  spec.sampling = p.sampling;
  spec.stop_tokens = std::move(stops);
  spec.prompt_logprobs = p.prompt_logprobs;

  {
    absl::MutexLock lock(&holders_->mu);
    ++holders_->live;
  }
  std::shared_ptr<Generation> gen(new Generation, [h = holders_](Generation* g) {
    delete g;
    absl::MutexLock lock(&h->mu);
    if (--h->live == 0) h->cv.SignalAll();
  });
  gen->model_ = m->name;
  gen->prompt_ids_ = spec.prompt;
  // Per-request state, touched only by the sink (on its output stage thread).
  struct State {
    TextStream text;
    std::chrono::steady_clock::time_point start, last;
    int completion = 0;
    bool done = false;
    int32_t prev = -1;  // the last token of the text so far
  };
  const int32_t prev = spec.prompt.back();
  auto st = std::make_shared<State>(
      State{TextStream(m->tokenizer.get(), p.stop, prev), std::chrono::steady_clock::now(), {}, 0,
            false, prev});
  uint64_t gid;
  {
    absl::MutexLock lock(&mu_);
    gid = next_++;
    active_[gid] = gen;
    if (m->adapter) ++adapter_running_[m->name];
  }
  const TenantConfig* t = &tenant;
  const bool has_tok = m->tokenizer != nullptr;
  auto sink = [this, gen, st, t, gid, n_prompt, reserved, has_tok, m, score_only = p.score_only,
               min_tokens = p.sampling.min_tokens,
               series = metrics_.Started(m->name, tenant.name, n_prompt)](const Event& e) {
    if (st->done) return;
    Delta d;
    // Of prompt[i + 1], after prompt[i] (the generation's prompt ids, set before it started).
    const std::vector<int32_t>& prompt = gen->prompt_ids_;
    for (size_t i = 0; i < e.prompt_logprobs.size(); ++i) {
      d.prompt_logprobs.push_back(
          WithText(m->tokenizer.get(), prompt[i], prompt[i + 1], e.prompt_logprobs[i]));
    }
    if (e.token >= 0 && !score_only) {
      const auto now = std::chrono::steady_clock::now();
      (st->completion == 0 ? series.ttft : series.itl)
          ->Observe(std::chrono::duration<double>(now - (st->completion == 0 ? st->start : st->last))
                        .count());
      st->last = now;
      ++st->completion;
      d.tokens.push_back(e.token);
      if (e.logprobs) d.logprobs.push_back(WithText(m->tokenizer.get(), st->prev, e.token, *e.logprobs));
      st->prev = e.token;
      if (has_tok) {
        bool stopped = false;
        // Stop strings count from min_tokens on (as end-of-text and stop_token_ids, vLLM's rule).
        d.text = st->text.Add(e.token, &stopped, st->completion >= min_tokens);
        if (stopped) {
          d.finish = Finish::kStop;
          engine_->StopRequest(e.id);
        }
      }
    }
    if (e.finish != Finish::kNone && !d.done()) {
      if (has_tok) d.text += st->text.Flush();
      switch (e.finish) {
        case Finish::kStop: d.finish = score_only ? Finish::kLength : Finish::kStop; break;
        case Finish::kAbort:
          if (!gen->shutdown_) {
            d.finish = Finish::kAbort;
            break;
          }
          d.finish = Finish::kError;
          d.unavailable = true;
          d.error = absl::StrCat("the server is shutting down: this request was stopped at the "
                                 "drain deadline after ", st->completion, " tokens; retry it");
          break;
        case Finish::kError:
          d.finish = Finish::kError;
          d.error = e.error.empty() ? "the engine failed while running this request" : e.error;
          break;
        default:  // kLength, kContextFull
          d.finish = e.finish;
          break;
      }
    }
    if (d.done()) {
      st->done = true;
      d.prompt_tokens = n_prompt;
      d.completion_tokens = st->completion;
      metrics_.Finished(series, d.finish_reason(),
                        std::chrono::duration<double>(std::chrono::steady_clock::now() - st->start)
                            .count(),
                        st->completion);
      tenants_.Finish(*t, reserved, n_prompt + st->completion);
      gen->Push(std::move(d));
      Forget(gid, *m);
      return;
    }
    gen->Push(std::move(d));
  };
  auto id = engine_->Submit(std::move(spec), std::move(sink));
  if (!id.ok()) {
    tenants_.Finish(tenant, reserved, 0);
    Forget(gid, *m);
    if (absl::IsFailedPrecondition(id.status())) return absl::UnavailableError(id.status().message());
    return id.status();
  }
  gen->cancel_ = [engine = engine_.get(), rid = *id] { engine->Abort(rid); };
  return gen;
}

std::string ServingCore::RenderMetrics() {
  std::vector<std::string> running;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [name, n] : adapter_running_) running.push_back(name);
  }
  int adapters = 0;
  for (const ServedModel& m : models_) adapters += m.adapter;
  return metrics_.Render(engine_->stats(), running, adapters);
}

absl::StatusOr<int> ServingCore::ForVariants(const std::string& name, bool load) {
  const ServedModel* m = FindModel(name);
  if (m == nullptr) return ModelNotFound(name);
  int n = 0;
  for (const auto& [key, idx] : m->engine_model) {
    ASSIGN_OR_RETURN(int k, (load ? engine_->LoadModel(idx) : engine_->UnloadModel(idx)).get());
    n += k;
  }
  spdlog::info("admin: {} model {} ({} block instances {})", load ? "loaded" : "unloaded", name, n,
               load ? "made resident" : "freed");
  return n;
}

absl::StatusOr<int> ServingCore::LoadModel(const std::string& name) {
  return ForVariants(name, true);
}

absl::StatusOr<int> ServingCore::UnloadModel(const std::string& name) {
  return ForVariants(name, false);
}

std::vector<std::vector<std::string>> ServingCore::InstanceUsers() const {
  std::vector<std::vector<std::string>> users(engine_->num_instances());
  for (const ServedModel& m : models_) {
    std::set<scheduler::InstanceId> seen;
    for (const auto& [key, idx] : m.engine_model) {
      for (scheduler::InstanceId i : engine_->scheduler().models()[idx].chain) {
        if (seen.insert(i).second) users[i].push_back(m.name);
      }
    }
  }
  return users;
}

int ServingCore::Drain(std::chrono::duration<double> wait) {
  draining_ = true;
  int aborted = 0;
  const absl::Time deadline = absl::Now() + absl::Seconds(wait.count());
  std::vector<std::shared_ptr<Generation>> rest;
  {
    absl::MutexLock lock(&mu_);
    while (!active_.empty() && !idle_cv_.WaitWithDeadline(&mu_, deadline)) {
    }
    for (auto& [id, w] : active_) {
      if (auto g = w.lock()) rest.push_back(g);
    }
  }
  if (!rest.empty()) {
    for (auto& g : rest) g->Shutdown();
    aborted = static_cast<int>(rest.size());
    rest.clear();
    absl::MutexLock lock(&mu_);
    const absl::Time grace = absl::Now() + absl::Seconds(10);
    while (!active_.empty() && !idle_cv_.WaitWithDeadline(&mu_, grace)) {
    }
  }
  // The engine is done with them; their readers may still be writing the last deltas out.
  absl::MutexLock held(&holders_->mu);
  const absl::Time last = std::max(deadline, absl::Now() + absl::Seconds(1));
  while (holders_->live > 0 && !holders_->cv.WaitWithDeadline(&holders_->mu, last)) {
  }
  return aborted;
}

}  // namespace blockserve::server
