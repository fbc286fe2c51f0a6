#include "server/http_gateway.h"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "runtime/status_macros.h"
#include "server/http_server.h"
#include "server/openai_request.h"
#include "server/openai_response.h"
#include "spdlog/spdlog.h"

namespace blockserve::server {

namespace {

using nlohmann::json;
using openai::ApiError;
using openai::Bad;
using openai::BadRequest;
using openai::BadType;
using openai::Bool;
using openai::ChatMessages;
using openai::Common;
using openai::Dump;
using openai::ErrorJson;
using openai::Field;
using openai::FromStatus;
using openai::Id;
using openai::Integer;
using openai::ParseCommon;
using openai::ParseObject;
using openai::Prompts;
using openai::Provide;
using openai::Reply;
using openai::WaitWhole;
using openai::String;

void SendError(http::Response& res, const ApiError& e) {
  res.status = e.http;
  res.set_content(Dump(ErrorJson(e)), "application/json");
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

namespace {

// An error the server answers itself (no route, a request it could not read): OpenAI's shape.
void ErrorPage(const http::Request& req, http::Response& res, const std::string& why) {
  ApiError e;
  e.http = res.status;
  switch (res.status) {
    case 404:
      e.message = absl::StrCat("Unknown request URL: ", req.method, " ", req.path, ".");
      e.code = "unknown_url";
      break;
    case 405: e.message = absl::StrCat("Method ", req.method, " is not allowed on ", req.path, "."); break;
    case 408: e.message = absl::StrCat("The request was sent too slowly: ", why, "."); break;
    case 413:
      e.message = absl::StrCat("The request body is too large: ", why, ".");
      e.code = "request_too_large";
      break;
    case 500: e.message = "The server had an error while processing your request."; break;
    default:
      e.message = why.empty() ? absl::StrCat("HTTP ", res.status)
                              : absl::StrCat("The request could not be read: ", why, ".");
  }
  SendError(res, e);
}

}  // namespace

HttpGateway::HttpGateway(ServingCore* core) : core_(core) {
  const ServerConfig& cfg = core_->config();
  http::HttpServerOptions o;
  o.limits.max_body_bytes = cfg.max_body_bytes;
  o.threads = cfg.http_threads;
  o.request_timeout_s = cfg.read_timeout_s;
  o.idle_timeout_s = cfg.idle_timeout_s;
  o.max_connections = cfg.max_connections;
  http_ = std::make_unique<http::HttpServer>(o);
  Routes();
  if (cfg.metrics_port >= 0) {  // Prometheus' convention: a port of its own, no key
    http::HttpServerOptions m = o;
    m.threads = 2;
    m.max_connections = 256;
    metrics_http_ = std::make_unique<http::HttpServer>(m);
    metrics_http_->OnError(ErrorPage);
    ProbeRoutes(*metrics_http_, /*metrics=*/true, /*metrics_key=*/false);
  }
}

HttpGateway::~HttpGateway() { Stop(); }


void HttpGateway::ProbeRoutes(http::HttpServer& s, bool metrics, bool metrics_key) {
  s.Route("GET", "/health", [](const http::Request&, http::Response& res) {
    res.set_content("ok\n", "text/plain");
  }, /*inline_handler=*/true);
  s.Route("GET", "/ready", [this](const http::Request&, http::Response& res) {
    if (core_->draining()) {
      res.status = 503;
      res.set_content("draining\n", "text/plain");
    } else {
      res.set_content("ready\n", "text/plain");
    }
  }, /*inline_handler=*/true);
  if (!metrics) return;
  s.Route("GET", "/metrics", [this, metrics_key](const http::Request& req, http::Response& res) {
    if (metrics_key) {
      auto id = core_->tenants().Authenticate(req.header("authorization"));
      if (!id.ok()) return SendError(res, FromStatus(id.status()));
      if (!id->metrics) {
        return SendError(res, ApiError{403, "This key may not read the metrics.", "", "metrics_key"});
      }
    }
    res.set_content(core_->RenderMetrics(), "text/plain; version=0.0.4; charset=utf-8");
  });
}

void HttpGateway::Routes() {
  const ServerConfig& cfg = core_->config();
  http::HttpServer& s = *http_;
  s.OnLog([this](const http::Request& req, int status) {
    core_->metrics().HttpRequest(RoutePath(req.path), status);
  });
  s.OnError(ErrorPage);
  // The API key is checked as soon as the headers are in: an unauthenticated client's body is
  // never read (probes and /metrics excepted: they carry no key).
  s.OnHeaders([this](const http::Request& req, http::Response& res) {
    if (req.path == "/health" || req.path == "/ready" || req.path == "/metrics") return true;
    auto a = core_->tenants().Authenticate(req.header("authorization"));
    if (a.ok()) return true;
    core_->metrics().Rejected("unknown", 401);
    SendError(res, FromStatus(a.status()));
    return false;
  });

  auto authenticate = [this](const http::Request& req, http::Response& res,
                             Tenants::Identity* id) {
    auto a = core_->tenants().Authenticate(req.header("authorization"));
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

  // /metrics here when it has no port of its own; a configured server asks for a key.
  ProbeRoutes(s, /*metrics=*/cfg.metrics_port < 0, /*metrics_key=*/!core_->tenants().open());

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
  s.Route("GET", "/v1/models", [this, authenticate, model_json](const http::Request& req,
                                                        http::Response& res) {
    Tenants::Identity id;
    if (!authenticate(req, res, &id)) return;
    json data = json::array();
    for (const ServedModel& m : core_->models()) {
      if (id.tenant->Allows(m.name)) data.push_back(model_json(m));
    }
    res.set_content(Dump({{"object", "list"}, {"data", data}}), "application/json");
  });
  s.Route("GET", "/v1/models/{}", [this, authenticate, model_json](
                                                 const http::Request& req, http::Response& res) {
    Tenants::Identity id;
    if (!authenticate(req, res, &id)) return;
    auto m = core_->ModelFor(*id.tenant, req.params[0]);
    if (!m.ok()) return SendError(res, FromStatus(m.status()));
    res.set_content(Dump(model_json(**m)), "application/json");
  });

  auto generate = [this, authenticate](const http::Request& req, http::Response& res,
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
        g.client_gone = req.client_gone;
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
        r->prompt_text.push_back(!r->echo   ? std::string()
                                 : base.text ? *base.text
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
    // Output that came before the notifiers were set (a short generation may be finished by
    // now) is looked at without waiting for a notification that will not come.
    r->waker.Notify();
    res.set_header("Cache-Control", "no-cache");
    if (!r->stream) {
      // A whole response is sent once it is known, so its status says how it went: 200 with the
      // completion, or a 5xx error object (the failure is logged with the request's id).
      std::string body;
      const bool ok = WaitWhole(*r, req.client_gone, &body);
      for (auto& g : r->gens) g->SetNotify(nullptr);
      if (!r->finished) r->CancelAll();  // the client went away: its requests are aborted
      if (!ok) {
        res.status = 499;  // nginx's "client closed request": only the log sees it
        return;
      }
      if (!r->error.empty()) return SendError(res, r->Error());
      return res.set_content(std::move(body), "application/json");
    }
    res.set_chunked_content_provider(
        r->stream ? "text/event-stream" : "application/json",
        [r](http::DataSink& sink) { return Provide(*r, sink); },
        [r](bool success) {
          // A client gone before the end: its requests are aborted (pages freed).
          for (auto& g : r->gens) g->SetNotify(nullptr);
          if (!r->finished) r->CancelAll();
        });
  };
  // vLLM's /tokenize and /detokenize (also under /v1/): the model's tokenizer, for clients that
  // count or inspect tokens, with generation's authentication and model access.
  auto tokens = [this, authenticate](const http::Request& req, http::Response& res,
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
    s.Route("POST", absl::StrCat(prefix, "/tokenize"), [tokens](const http::Request& req, http::Response& res) {
      tokens(req, res, false);
    });
    s.Route("POST", absl::StrCat(prefix, "/detokenize"), [tokens](const http::Request& req, http::Response& res) {
      tokens(req, res, true);
    });
  }
  s.Route("POST", "/v1/completions", [generate](const http::Request& req, http::Response& res) {
    generate(req, res, false);
  });
  s.Route("POST", "/v1/chat/completions", [generate](const http::Request& req, http::Response& res) {
    generate(req, res, true);
  });
}

absl::Status HttpGateway::Start(const std::string& host, int port) {
  RETURN_IF_ERROR(http_->Start(host, port));
  port_ = http_->port();
  if (metrics_http_) {
    RETURN_IF_ERROR(metrics_http_->Start(host, core_->config().metrics_port));
    metrics_port_ = metrics_http_->port();
  }
  return absl::OkStatus();
}

void HttpGateway::Stop() {
  if (http_) http_->Stop();
  if (metrics_http_) metrics_http_->Stop();
}

}  // namespace blockserve::server
