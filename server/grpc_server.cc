#include "server/grpc_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "blockserve/v1/blockserve.grpc.pb.h"
#include "runtime/status_macros.h"
#include "server/grpc_request.h"
#include "spdlog/spdlog.h"

namespace blockserve::server {

namespace {

namespace v1 = ::blockserve::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // absl's canonical codes are gRPC's.
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::StatusOr<Tenants::Identity> Identify(ServingCore* core, grpc::CallbackServerContext* ctx) {
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  std::string_view value;
  if (it != md.end()) value = std::string_view(it->second.data(), it->second.size());
  return core->tenants().Authenticate(value);
}

absl::StatusOr<const TenantConfig*> Tenant(ServingCore* core, grpc::CallbackServerContext* ctx) {
  auto id = Identify(core, ctx);
  if (!id.ok()) return id.status();
  if (id->tenant == nullptr) return absl::PermissionDeniedError("This key may only use the admin API.");
  return id->tenant;
}

void Fill(const TokenInfo& t, v1::TokenLogprob* out) {
  out->set_token_id(t.token);
  out->set_logprob(t.logprob);
  out->set_text(t.bytes);
}

void Fill(const TokenLogprobs& lp, v1::GeneratedTokenLogprobs* out) {
  Fill(lp.chosen, out->mutable_token());
  for (const TokenInfo& t : lp.top) Fill(t, out->add_top());
}

void Fill(const Delta& d, v1::GenerateResponse* out) {
  out->Clear();
  for (int32_t t : d.tokens) out->add_token_ids(t);
  for (const TokenLogprobs& lp : d.logprobs) Fill(lp, out->add_logprobs());
  for (const TokenLogprobs& lp : d.prompt_logprobs) Fill(lp, out->add_prompt_logprobs());
  out->set_text(d.text);
  if (d.done()) {
    out->set_finish_reason(d.finish_reason());
    out->mutable_usage()->set_prompt_tokens(d.prompt_tokens);
    out->mutable_usage()->set_completion_tokens(d.completion_tokens);
    out->mutable_usage()->set_total_tokens(d.prompt_tokens + d.completion_tokens);
  }
}

grpc::Status FinalStatus(const Delta& d) {
  if (d.finish == scheduler::Finish::kError) {
    return grpc::Status(d.unavailable ? grpc::StatusCode::UNAVAILABLE : grpc::StatusCode::INTERNAL, d.error);
  }
  if (d.finish == scheduler::Finish::kAbort) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled");
  return grpc::Status::OK;
}

// Server streaming: one write in flight at a time; whatever arrived meanwhile is merged into
// the next message. The pump outlives the reactor for notifications racing with its end.
class GenerateReactor : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  explicit GenerateReactor(std::shared_ptr<Generation> gen)
      : gen_(std::move(gen)), pump_(std::make_shared<Pump>()) {
    pump_->reactor = this;
    std::weak_ptr<Pump> w = pump_;
    gen_->SetNotify([w] {
      if (auto p = w.lock()) p->Run();
    });
    pump_->Run();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) gen_->Cancel();  // the client is gone: the final delta ("abort") finishes the call
    {
      absl::MutexLock lock(&pump_->mu);
      pump_->writing = false;
    }
    pump_->Run();
  }
  void OnCancel() override { gen_->Cancel(); }
  void OnDone() override {
    gen_->SetNotify(nullptr);
    {
      absl::MutexLock lock(&pump_->mu);
      pump_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct Pump {
    absl::Mutex mu;
    GenerateReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    bool writing ABSL_GUARDED_BY(mu) = false;
    bool finished ABSL_GUARDED_BY(mu) = false;

    void Run() {
      GenerateReactor* r;
      Delta d;
      {
        absl::MutexLock lock(&mu);
        r = reactor;
        if (r == nullptr || writing || finished) return;
        if (!r->gen_->Pop(&d, std::chrono::milliseconds(0))) return;
        if (d.done()) {
          finished = true;
        } else {
          writing = true;
        }
        Fill(d, &r->msg_);
      }
      // Outside the lock: a reaction may run on this thread. The reactor lives until Finish.
      if (!d.done()) {
        r->StartWrite(&r->msg_);
      } else if (d.finish == scheduler::Finish::kError || d.finish == scheduler::Finish::kAbort) {
        r->Finish(FinalStatus(d));
      } else {
        r->StartWriteAndFinish(&r->msg_, grpc::WriteOptions(), grpc::Status::OK);
      }
    }
  };

  std::shared_ptr<Generation> gen_;
  std::shared_ptr<Pump> pump_;
  v1::GenerateResponse msg_;
};

// Unary completion: collects every delta, answers at the end.
class CompleteReactor : public grpc::ServerUnaryReactor {
 public:
  CompleteReactor(std::shared_ptr<Generation> gen, v1::GenerateResponse* out)
      : gen_(std::move(gen)), state_(std::make_shared<State>()) {
    state_->out = out;
    state_->reactor = this;
    std::weak_ptr<State> w = state_;
    gen_->SetNotify([w] {
      if (auto s = w.lock()) s->Collect();
    });
    state_->Collect();
  }
  void OnCancel() override { gen_->Cancel(); }
  void OnDone() override {
    gen_->SetNotify(nullptr);
    {
      absl::MutexLock lock(&state_->mu);
      state_->reactor = nullptr;
    }
    delete this;
  }

 private:
  struct State {
    absl::Mutex mu;
    CompleteReactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
    v1::GenerateResponse* out = nullptr;
    Delta all ABSL_GUARDED_BY(mu);
    bool finished ABSL_GUARDED_BY(mu) = false;

    void Collect() {
      CompleteReactor* r;
      grpc::Status status;
      {
        absl::MutexLock lock(&mu);
        r = reactor;
        if (r == nullptr || finished) return;
        Delta d;
        while (r->gen_->Pop(&d, std::chrono::milliseconds(0))) all.Append(std::move(d));
        if (!all.done()) return;
        finished = true;
        Fill(all, out);
        status = FinalStatus(all);
      }
      r->Finish(status);  // outside the lock: it may run OnDone on this thread
    }
  };

  std::shared_ptr<Generation> gen_;
  std::shared_ptr<State> state_;
};

void Describe(ServingCore* core, const ServedModel& m, v1::ModelInfo* out) {
  out->set_name(m.name);
  out->set_parent(m.parent);
  out->set_context_length(m.context_length);
  out->set_adapter(m.adapter);
  out->set_loaded(core->loaded(m));
  out->set_vocab_size(m.vocab_size);
  for (const std::string& b : m.blocks) out->add_blocks(b);
}

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const grpc::Status& s) {
  auto* r = ctx->DefaultReactor();
  r->Finish(s);
  return r;
}

}  // namespace

class GrpcServer::GenerationService : public v1::Generation::CallbackService {
 public:
  explicit GenerationService(ServingCore* core) : core_(core) {}

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(
      grpc::CallbackServerContext* ctx, const v1::GenerateRequest* req) override {
    auto gen = Start(ctx, *req);
    if (!gen.ok()) {
      class Failed : public grpc::ServerWriteReactor<v1::GenerateResponse> {
       public:
        explicit Failed(grpc::Status s) { Finish(s); }
        void OnDone() override { delete this; }
      };
      return new Failed(ToGrpc(gen.status()));
    }
    return new GenerateReactor(*gen);
  }

  grpc::ServerUnaryReactor* Complete(grpc::CallbackServerContext* ctx,
                                     const v1::GenerateRequest* req,
                                     v1::GenerateResponse* resp) override {
    auto gen = Start(ctx, *req);
    if (!gen.ok()) return Done(ctx, ToGrpc(gen.status()));
    return new CompleteReactor(*gen, resp);
  }

  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* ctx,
                                       const v1::ListModelsRequest*,
                                       v1::ListModelsResponse* resp) override {
    auto t = Tenant(core_, ctx);
    if (!t.ok()) return Done(ctx, ToGrpc(t.status()));
    for (const ServedModel& m : core_->models()) {
      if ((*t)->Allows(m.name)) Describe(core_, m, resp->add_models());
    }
    return Done(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* GetModel(grpc::CallbackServerContext* ctx,
                                     const v1::GetModelRequest* req,
                                     v1::ModelInfo* resp) override {
    auto t = Tenant(core_, ctx);
    if (!t.ok()) return Done(ctx, ToGrpc(t.status()));
    const ServedModel* m = core_->FindModel(req->name());
    if (m == nullptr || !(*t)->Allows(req->name())) {
      return Done(ctx, grpc::Status(grpc::StatusCode::NOT_FOUND,
                                    absl::StrCat("The model `", req->name(),
                                                 "` does not exist or you do not have access to it.")));
    }
    Describe(core_, *m, resp);
    return Done(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx,
                                     const v1::TokenizeRequest* req,
                                     v1::TokenizeResponse* resp) override {
    auto m = TokenizerModel(ctx, req->model());
    if (!m.ok()) return Done(ctx, ToGrpc(m.status()));
    GenerateParams p;
    p.text = req->text();
    p.add_bos = !req->no_bos();
    auto ids = core_->PromptTokens(**m, p);
    if (!ids.ok()) return Done(ctx, ToGrpc(ids.status()));
    resp->mutable_token_ids()->Assign(ids->begin(), ids->end());
    resp->set_max_model_len((*m)->context_length);
    return Done(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx,
                                       const v1::DetokenizeRequest* req,
                                       v1::DetokenizeResponse* resp) override {
    auto m = TokenizerModel(ctx, req->model());
    if (!m.ok()) return Done(ctx, ToGrpc(m.status()));
    GenerateParams p;  // checks the ids against the vocabulary
    p.token_ids.assign(req->token_ids().begin(), req->token_ids().end());
    auto ids = core_->PromptTokens(**m, p);
    if (!ids.ok()) return Done(ctx, ToGrpc(ids.status()));
    resp->set_text(SanitizeUtf8((*m)->tokenizer->DecodeText(*ids)));
    return Done(ctx, grpc::Status::OK);
  }

 private:
  // The model `name` for the caller's tenant, with a tokenizer.
  absl::StatusOr<const ServedModel*> TokenizerModel(grpc::CallbackServerContext* ctx,
                                                    const std::string& name) {
    auto t = Tenant(core_, ctx);
    if (!t.ok()) return t.status();
    ASSIGN_OR_RETURN(const ServedModel* m, core_->ModelFor(**t, name));
    if (!m->tokenizer) {
      return absl::InvalidArgumentError(absl::StrCat("The model `", m->name, "` has no tokenizer."));
    }
    return m;
  }

  absl::StatusOr<std::shared_ptr<Generation>> Start(grpc::CallbackServerContext* ctx,
                                                    const v1::GenerateRequest& req) {
    auto t = Tenant(core_, ctx);
    if (!t.ok()) return t.status();
    auto p = ParamsFromProto(req);
    if (!p.ok()) return p.status();
    p->client_gone = [ctx] { return ctx->IsCancelled(); };
    return core_->Generate(**t, std::move(*p));
  }

  ServingCore* core_;
};

class GrpcServer::AdminService : public v1::Admin::CallbackService {
 public:
  explicit AdminService(ServingCore* core) : core_(core) {}

  grpc::ServerUnaryReactor* LoadModel(grpc::CallbackServerContext* ctx,
                                      const v1::LoadModelRequest* req,
                                      v1::LoadModelResponse* resp) override {
    if (auto s = Admin(ctx); !s.ok()) return Done(ctx, s);
    auto n = core_->LoadModel(req->name());
    if (!n.ok()) return Done(ctx, ToGrpc(n.status()));
    resp->set_blocks_loaded(*n);
    Describe(core_, *core_->FindModel(req->name()), resp->mutable_model());
    return Done(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* UnloadModel(grpc::CallbackServerContext* ctx,
                                        const v1::UnloadModelRequest* req,
                                        v1::UnloadModelResponse* resp) override {
    if (auto s = Admin(ctx); !s.ok()) return Done(ctx, s);
    auto n = core_->UnloadModel(req->name());
    if (!n.ok()) return Done(ctx, ToGrpc(n.status()));
    resp->set_blocks_evicted(*n);
    return Done(ctx, grpc::Status::OK);
  }

  grpc::ServerUnaryReactor* Residency(grpc::CallbackServerContext* ctx,
                                      const v1::ResidencyRequest*,
                                      v1::ResidencyResponse* resp) override {
    if (auto s = Admin(ctx); !s.ok()) return Done(ctx, s);
    const scheduler::EngineStats st = core_->engine().stats();
    const auto users = core_->InstanceUsers();
    for (size_t i = 0; i < st.instances.size(); ++i) {
      const scheduler::InstanceStats& in = st.instances[i];
      v1::BlockInstance* b = resp->add_blocks();
      b->set_id(static_cast<int32_t>(i));
      b->set_name(in.name);
      b->set_kind(runtime::BlockKindName(in.kind));
      b->set_resident(in.resident);
      for (const std::string& u : users[i]) b->add_models(u);
      b->set_calls(in.calls);
      b->set_tokens(in.tokens);
      b->set_last_batch(in.last_batch);
      b->set_max_batch(in.max_batch);
      b->set_busy_seconds(in.busy_s);
      b->set_loads(in.loads);
      b->set_evictions(in.evictions);
      b->set_kv_pages_used(in.kv_pages_used);
      b->set_kv_pages_free(in.kv_pages_free);
      b->set_adapters(in.adapters);
      b->set_bytes(in.bytes);
    }
    resp->set_resident_bytes(st.resident_bytes);
    resp->set_memory_budget(core_->config().memory_budget);
    resp->set_adapters_resident(st.adapters_resident);
    resp->set_waiting(st.waiting);
    resp->set_running(st.running);
    for (const auto& [name, reason] : core_->unavailable()) {
      v1::UnavailableModel* u = resp->add_unavailable();
      u->set_name(name);
      u->set_reason(reason);
    }
    return Done(ctx, grpc::Status::OK);
  }

 private:
  grpc::Status Admin(grpc::CallbackServerContext* ctx) {
    auto id = Identify(core_, ctx);
    if (!id.ok()) return ToGrpc(id.status());
    if (!id->admin) {
      return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                          "This key may not use the admin API.");
    }
    return grpc::Status::OK;
  }

  ServingCore* core_;
};

namespace {

// Drops gRPC's server reflection plugin from one server's builder.
class WithoutReflection final : public grpc::ServerBuilderOption {
 public:
  void UpdateArguments(grpc::ChannelArguments*) override {}
  void UpdatePlugins(std::vector<std::unique_ptr<grpc::ServerBuilderPlugin>>* plugins) override {
    std::erase_if(*plugins, [](const auto& p) { return p->name() == "proto_server_reflection"; });
  }
};

}  // namespace

GrpcServer::GrpcServer(ServingCore* core)
    : core_(core),
      generation_(std::make_unique<GenerationService>(core)),
      admin_(std::make_unique<AdminService>(core)) {}

GrpcServer::~GrpcServer() { Shutdown(std::chrono::seconds(0)); }

absl::Status GrpcServer::Start(const std::string& address) {
  grpc::EnableDefaultHealthCheckService(true);
  // Reflection lists every service and message: on for an open server, off once tenants are
  // configured unless asked for. Linking gRPC's reflection library registers its plugin for
  // every server of the process; an option takes it out of this one.
  grpc::ServerBuilder b;
  if (core_->config().reflection()) {
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  } else {
    b.SetOption(std::make_unique<WithoutReflection>());
  }
  b.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
  // A request message is held to the HTTP gateway's body limit (gRPC's default is 4 MiB).
  b.SetMaxReceiveMessageSize(static_cast<int>(std::min<size_t>(core_->config().max_body_bytes, INT32_MAX)));
  b.RegisterService(generation_.get());
  b.RegisterService(admin_.get());
  server_ = b.BuildAndStart();
  if (!server_ || port_ == 0) return absl::UnavailableError(absl::StrCat("gRPC: cannot listen on ", address));
  SetServing(true);
  return absl::OkStatus();
}

void GrpcServer::SetServing(bool serving) {
  if (server_ && server_->GetHealthCheckService()) {
    server_->GetHealthCheckService()->SetServingStatus(serving);
  }
}

void GrpcServer::Shutdown(std::chrono::duration<double> deadline) {
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() +
                    std::chrono::duration_cast<std::chrono::system_clock::duration>(deadline));
  server_->Wait();
  server_.reset();
}

}  // namespace blockserve::server
