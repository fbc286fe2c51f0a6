#include "server/worker_service.h"

#include <grpcpp/health_check_service_interface.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"
#include "server/worker_wire.h"
#include "spdlog/spdlog.h"

namespace blockserve::server {
namespace {

constexpr int kMaxMessageBytes = 256 << 20;  // a segment's rows or logits, both ways
constexpr int kMaxTokens = 1 << 20;          // rows of one segment


}  // namespace

WorkerService::WorkerService(std::unique_ptr<blockzoo::Zoo> zoo, int threads)
    : zoo_(std::move(zoo)),
      source_(std::make_unique<scheduler::ZooBlockSource>(*zoo_)),
      cpu_(threads > 0 ? threads : runtime::DefaultThreadCount()),
      ctx_(&cpu_) {}

absl::Status WorkerService::EnsureKnown(const scheduler::BlockRef& ref) {
  absl::MutexLock lock(&source_mu_);
  if (source_->Knows(ref)) return absl::OkStatus();
  return source_->AddAllModels().status();
}

grpc::Status WorkerService::LoadBlock(grpc::ServerContext*, const wire::LoadBlockRequest* req,
                                      wire::LoadBlockResponse* resp) {
  absl::StatusOr<scheduler::BlockRef> ref = RefFromProto(req->ref());
  if (!ref.ok()) return ToGrpc(ref.status());
  if (absl::Status st = EnsureKnown(*ref); !st.ok()) return ToGrpc(st);
  absl::StatusOr<std::shared_ptr<runtime::Block>> block;
  {
    absl::ReaderMutexLock lock(&source_mu_);
    block = source_->LoadBlock(*ref);
  }
  if (!block.ok()) return ToGrpc(block.status());
  absl::MutexLock lock(&compute_mu_);
  const uint64_t id = next_instance_++;
  resp->set_instance(id);
  resp->set_weight_bytes((*block)->weight_bytes());
  resp->set_hidden_dim((*block)->hidden_dim());
  resp->set_vocab_size((*block)->vocab_size());
  instances_[id] = Instance{std::move(*block), std::move(*ref)};
  spdlog::info("worker: loaded {} {} layer {} as instance {}", runtime::BlockKindName(ref->kind),
               ref->id.substr(0, 8), ref->layer, id);
  return grpc::Status::OK;
}

grpc::Status WorkerService::UnloadBlock(grpc::ServerContext*, const wire::UnloadBlockRequest* req,
                                        wire::UnloadBlockResponse*) {
  absl::MutexLock lock(&compute_mu_);
  if (instances_.erase(req->instance()) == 0) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat("instance ", req->instance(), " is not on this worker"));
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::AttachAdapter(grpc::ServerContext*,
                                          const wire::AttachAdapterRequest* req,
                                          wire::AttachAdapterResponse*) {
  absl::StatusOr<scheduler::BlockRef> ref = RefFromProto(req->adapter());
  if (!ref.ok()) return ToGrpc(ref.status());
  if (absl::Status st = EnsureKnown(*ref); !st.ok()) return ToGrpc(st);
  absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> adapter;
  {
    absl::ReaderMutexLock lock(&source_mu_);
    adapter = source_->LoadAdapter(*ref);
  }
  if (!adapter.ok()) return ToGrpc(adapter.status());
  absl::MutexLock lock(&compute_mu_);
  google::protobuf::RepeatedField<uint64_t> ids;
  ids.Add(req->instance());
  absl::StatusOr<std::vector<Instance*>> in = Find(ids);
  if (!in.ok()) return ToGrpc(in.status());
  return ToGrpc((*in)[0]->block->AttachAdapter(req->key(), std::move(*adapter)));
}

grpc::Status WorkerService::DetachAdapter(grpc::ServerContext*,
                                          const wire::DetachAdapterRequest* req,
                                          wire::DetachAdapterResponse*) {
  absl::MutexLock lock(&compute_mu_);
  auto it = instances_.find(req->instance());
  if (it != instances_.end()) it->second.block->DetachAdapter(req->key());
  return grpc::Status::OK;
}

absl::StatusOr<std::vector<WorkerService::Instance*>> WorkerService::Find(
    const google::protobuf::RepeatedField<uint64_t>& ids) {
  if (ids.empty()) return absl::InvalidArgumentError("instances: none named");
  std::vector<Instance*> out;
  for (uint64_t id : ids) {
    auto it = instances_.find(id);
    if (it == instances_.end()) {
      return absl::NotFoundError(absl::StrCat("instance ", id, " is not on this worker"));
    }
    out.push_back(&it->second);
  }
  return out;
}

grpc::Status WorkerService::RunSegment(grpc::ServerContext*, const wire::RunSegmentRequest* req,
                                       wire::RunSegmentResponse* resp) {
  absl::MutexLock lock(&compute_mu_);
  const auto t0 = std::chrono::steady_clock::now();
  const absl::Status st = Run(*req, *resp);
  compute_secs_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ++segments_;
  return ToGrpc(st);
}

absl::Status WorkerService::Run(const wire::RunSegmentRequest& req,
                                wire::RunSegmentResponse& resp) {
  ASSIGN_OR_RETURN(std::vector<Instance*> seg, Find(req.instances()));
  const int n = req.tokens_size();
  if (n <= 0 || n > kMaxTokens) return absl::InvalidArgumentError("tokens: 1 to 2^20 rows");
  std::vector<runtime::SeqSpan> spans;
  int64_t rows = 0;
  for (const wire::Span& s : req.spans()) {
    if (s.len() <= 0 || s.pos() < 0) return absl::InvalidArgumentError("spans: len > 0, pos >= 0");
    rows += s.len();
    spans.push_back({s.seq(), s.pos(), s.len(), runtime::SeqSpan::Logits::kNone, s.adapter()});
  }
  if (rows != n) return absl::InvalidArgumentError("spans: lengths do not add up to the tokens");
  const int dim = seg[0]->block->hidden_dim();
  for (size_t i = 0; i < seg.size(); ++i) {
    const runtime::BlockKind k = seg[i]->block->kind();
    if (seg[i]->block->hidden_dim() != dim ||
        (k == runtime::BlockKind::kEmbed && i != 0) ||
        (k == runtime::BlockKind::kHead && i + 1 != seg.size())) {
      return absl::InvalidArgumentError("instances: not one chain segment of one width");
    }
  }
  const bool embeds = seg.front()->block->kind() == runtime::BlockKind::kEmbed;
  const bool heads = seg.back()->block->kind() == runtime::BlockKind::kHead;
  std::vector<float> hidden(static_cast<size_t>(n) * dim);
  if (!embeds) {
    if (req.hidden().size() != hidden.size() * sizeof(float)) {
      return absl::InvalidArgumentError(absl::StrCat("hidden: ", req.hidden().size(),
                                                     " bytes, want ", n, " x ", dim, " f32"));
    }
    std::memcpy(hidden.data(), req.hidden().data(), req.hidden().size());
  }
  const absl::Span<const int32_t> logit_rows(req.logit_rows().data(), req.logit_rows_size());
  for (int r : logit_rows) {
    if (r < 0 || r >= n) return absl::InvalidArgumentError("logit_rows: out of range");
  }
  const int vocab = heads ? seg.back()->block->vocab_size() : 0;
  std::vector<float> logits(logit_rows.size() * static_cast<size_t>(vocab));
  for (Instance* in : seg) {
    runtime::BlockIo io{spans, req.tokens().data(), n, hidden.data(), logit_rows, logits.data()};
    RETURN_IF_ERROR(in->block->Compute(io, ctx_));
    ++in->calls;
    in->tokens += n;
    resp.add_kv_pages_used(in->block->kv_pages_used());
  }
  if (heads) {
    resp.set_logits(logits.data(), logits.size() * sizeof(float));
  } else {
    resp.set_hidden(hidden.data(), hidden.size() * sizeof(float));
  }
  return absl::OkStatus();
}

grpc::Status WorkerService::ReleaseSequence(grpc::ServerContext*,
                                            const wire::ReleaseSequenceRequest* req,
                                            wire::SequenceResponse* resp) {
  absl::MutexLock lock(&compute_mu_);
  for (uint64_t id : req->instances()) {
    auto it = instances_.find(id);
    if (it != instances_.end()) it->second.block->ReleaseSequence(req->seq());
    resp->add_kv_pages_used(it != instances_.end() ? it->second.block->kv_pages_used() : 0);
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::ForkSequence(grpc::ServerContext*,
                                         const wire::ForkSequenceRequest* req,
                                         wire::SequenceResponse* resp) {
  absl::MutexLock lock(&compute_mu_);
  absl::StatusOr<std::vector<Instance*>> in = Find(req->instances());
  if (!in.ok()) return ToGrpc(in.status());
  for (Instance* i : *in) {
    if (absl::Status st = i->block->ForkSequence(req->src(), req->dst(), req->len()); !st.ok()) {
      return ToGrpc(st);
    }
    resp->add_kv_pages_used(i->block->kv_pages_used());
  }
  return grpc::Status::OK;
}

grpc::Status WorkerService::Stats(grpc::ServerContext*, const wire::StatsRequest*,
                                  wire::StatsResponse* resp) {
  absl::MutexLock lock(&compute_mu_);
  uint64_t bytes = 0;
  for (const auto& [id, in] : instances_) {
    wire::InstanceStats* s = resp->add_instances();
    s->set_instance(id);
    s->set_block(in.ref.id);
    s->set_kind(static_cast<wire::BlockKind>(in.ref.kind));
    s->set_layer(in.ref.layer);
    s->set_weight_bytes(in.block->weight_bytes());
    s->set_kv_pages_used(in.block->kv_pages_used());
    s->set_calls(in.calls);
    s->set_tokens(in.tokens);
    bytes += in.block->weight_bytes();
  }
  resp->set_weight_bytes(bytes);
  resp->set_segments(segments_);
  resp->set_compute_seconds(compute_secs_);
  resp->set_device(cpu_.name());
  return grpc::Status::OK;
}

WorkerServer::WorkerServer(std::unique_ptr<blockzoo::Zoo> zoo, int threads)
    : service_(std::move(zoo), threads) {}

WorkerServer::~WorkerServer() { Stop(); }

absl::Status WorkerServer::Start(const std::string& address) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  builder.AddListeningPort(address, grpc::InsecureServerCredentials(), &port_);
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  builder.RegisterService(&service_);
  server_ = builder.BuildAndStart();
  if (!server_ || port_ == 0) {
    return absl::UnavailableError(absl::StrCat("worker: cannot listen on ", address));
  }
  return absl::OkStatus();
}

void WorkerServer::Stop() {
  if (!server_) return;
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  server_.reset();
}

}  // namespace blockserve::server
