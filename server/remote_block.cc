#include "server/remote_block.h"

#include <netdb.h>
#include <sys/socket.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <set>
#include <thread>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "runtime/status_macros.h"
#include "server/worker_wire.h"
#include "spdlog/spdlog.h"

namespace blockserve::server {
namespace {

constexpr int kMaxMessageBytes = 256 << 20;  // as the worker's
// A call on a worker that neither answers nor fails (stopped, partitioned) fails after this, so
// that no request waits on it for ever; a load reads a block file and gets longer.
constexpr int kCallDeadlineS = 30;
constexpr int kLoadDeadlineS = 300;

void SetDeadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// A block instance on a worker.
class RemoteBlock final : public runtime::Block {
 public:
  RemoteBlock(std::shared_ptr<WorkerClient> worker, const WorkerBlockSource* source,
              runtime::BlockKind kind, const wire::LoadBlockResponse& loaded)
      : worker_(std::move(worker)), source_(source), kind_(kind),
        instance_(loaded.instance()), weight_bytes_(loaded.weight_bytes()),
        hidden_dim_(loaded.hidden_dim()), vocab_(loaded.vocab_size()) {}

  ~RemoteBlock() override {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    wire::UnloadBlockRequest req;
    req.set_instance(instance_);
    wire::UnloadBlockResponse resp;
    const grpc::Status st = worker_->stub().UnloadBlock(&ctx, req, &resp);
    if (!st.ok()) {
      spdlog::warn("worker {}: unload of instance {}: {}", worker_->address(), instance_,
                   st.error_message());
    }
  }

  runtime::BlockKind kind() const override { return kind_; }
  int hidden_dim() const override { return hidden_dim_; }
  int vocab_size() const override { return vocab_; }
  size_t weight_bytes() const override { return weight_bytes_; }
  int kv_pages_used() const override { return kv_pages_.load(std::memory_order_relaxed); }

  const void* segment_host() const override { return worker_.get(); }

  absl::Status Compute(const runtime::BlockIo& io, runtime::ExecContext& ctx) override {
    runtime::Block* self = this;
    return ComputeSegment({&self, 1}, io, ctx);
  }

  // One RunSegment for all of `blocks` (RemoteBlocks on this worker: the executor fuses only
  // blocks of one segment_host): the rows go once, the result comes back once.
  absl::Status ComputeSegment(absl::Span<runtime::Block* const> blocks, const runtime::BlockIo& io,
                              runtime::ExecContext&) override {
    std::vector<RemoteBlock*> seg;
    wire::RunSegmentRequest req;
    for (runtime::Block* b : blocks) {
      seg.push_back(static_cast<RemoteBlock*>(b));
      req.add_instances(seg.back()->instance_);
    }
    for (const runtime::SeqSpan& s : io.spans) {
      wire::Span* p = req.add_spans();
      p->set_seq(s.seq);
      p->set_pos(s.pos);
      p->set_len(s.len);
      p->set_adapter(s.adapter);
    }
    req.mutable_tokens()->Add(io.tokens, io.tokens + io.num_tokens);
    const size_t hidden_bytes = static_cast<size_t>(io.num_tokens) * hidden_dim_ * sizeof(float);
    if (kind_ != runtime::BlockKind::kEmbed) req.set_hidden(io.hidden, hidden_bytes);
    req.mutable_logit_rows()->Add(io.logit_rows.begin(), io.logit_rows.end());
    grpc::ClientContext ctx;
    SetDeadline(ctx, kCallDeadlineS);
    wire::RunSegmentResponse resp;
    if (source_->hop_delay() > 0) {
      std::this_thread::sleep_for(std::chrono::duration<double>(source_->hop_delay()));
    }
    RETURN_IF_ERROR(FromGrpc(worker_->stub().RunSegment(&ctx, req, &resp), What()));
    if (resp.kv_pages_used_size() == static_cast<int>(seg.size())) {
      for (size_t i = 0; i < seg.size(); ++i) seg[i]->kv_pages_.store(resp.kv_pages_used(i));
    }
    RemoteBlock* last = seg.back();
    if (last->kind_ == runtime::BlockKind::kHead) {
      const size_t want = io.logit_rows.size() * static_cast<size_t>(last->vocab_) * sizeof(float);
      if (resp.logits().size() != want) return Malformed("logits");
      std::memcpy(io.logits, resp.logits().data(), want);
    } else {
      if (resp.hidden().size() != hidden_bytes) return Malformed("hidden rows");
      std::memcpy(io.hidden, resp.hidden().data(), hidden_bytes);
    }
    return absl::OkStatus();
  }

  void ReleaseSequence(runtime::SeqId seq) override {
    if (kind_ != runtime::BlockKind::kAttn) return;
    wire::ReleaseSequenceRequest req;
    req.add_instances(instance_);
    req.set_seq(seq);
    grpc::ClientContext ctx;
    SetDeadline(ctx, kCallDeadlineS);
    wire::SequenceResponse resp;
    const grpc::Status st = worker_->stub().ReleaseSequence(&ctx, req, &resp);
    if (!st.ok()) spdlog::warn("{}: release of {}: {}", What(), seq, st.error_message());
    if (resp.kv_pages_used_size() == 1) kv_pages_.store(resp.kv_pages_used(0));
  }

  absl::Status ForkSequence(runtime::SeqId src, runtime::SeqId dst, int len) override {
    if (kind_ != runtime::BlockKind::kAttn) return absl::OkStatus();
    wire::ForkSequenceRequest req;
    req.add_instances(instance_);
    req.set_src(src);
    req.set_dst(dst);
    req.set_len(len);
    grpc::ClientContext ctx;
    SetDeadline(ctx, kCallDeadlineS);
    wire::SequenceResponse resp;
    RETURN_IF_ERROR(FromGrpc(worker_->stub().ForkSequence(&ctx, req, &resp), What()));
    if (resp.kv_pages_used_size() == 1) kv_pages_.store(resp.kv_pages_used(0));
    return absl::OkStatus();
  }

  absl::Status AttachAdapter(int32_t key,
                             std::shared_ptr<const runtime::LoraAdapter> adapter) override {
    ASSIGN_OR_RETURN(scheduler::BlockRef ref, source_->AdapterRef(adapter.get()));
    wire::AttachAdapterRequest req;
    req.set_instance(instance_);
    req.set_key(key);
    *req.mutable_adapter() = RefToProto(ref);
    grpc::ClientContext ctx;
    SetDeadline(ctx, kCallDeadlineS);
    wire::AttachAdapterResponse resp;
    return FromGrpc(worker_->stub().AttachAdapter(&ctx, req, &resp), What());
  }

  void DetachAdapter(int32_t key) override {
    wire::DetachAdapterRequest req;
    req.set_instance(instance_);
    req.set_key(key);
    grpc::ClientContext ctx;
    SetDeadline(ctx, kCallDeadlineS);
    wire::DetachAdapterResponse resp;
    (void)worker_->stub().DetachAdapter(&ctx, req, &resp);
  }

 private:
  std::string What() const {
    return absl::StrCat("worker ", worker_->address(), " (", runtime::BlockKindName(kind_),
                        " instance ", instance_, ")");
  }
  absl::Status Malformed(const char* what) const {
    return absl::InternalError(absl::StrCat(What(), ": answered ", what, " of the wrong size"));
  }

  std::shared_ptr<WorkerClient> worker_;
  const WorkerBlockSource* source_;
  runtime::BlockKind kind_;
  uint64_t instance_;
  size_t weight_bytes_;
  int hidden_dim_, vocab_;
  std::atomic<int> kv_pages_{0};
};

}  // namespace

WorkerClient::WorkerClient(std::string address) : address_(std::move(address)) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  stub_ = wire::Worker::NewStub(
      grpc::CreateCustomChannel(address_, grpc::InsecureChannelCredentials(), args));
}

absl::Status WorkerClient::WaitReady(double timeout_s) {
  const auto deadline = std::chrono::system_clock::now() +
                        std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  grpc::ClientContext ctx;
  ctx.set_deadline(deadline);
  ctx.set_wait_for_ready(true);
  wire::StatsRequest req;
  wire::StatsResponse resp;
  return FromGrpc(stub_->Stats(&ctx, req, &resp), absl::StrCat("worker ", address_));
}

absl::StatusOr<Placement> ParsePlacement(const std::string& name) {
  if (name == "contiguous") return Placement::kContiguous;
  if (name == "round-robin") return Placement::kRoundRobin;
  if (name == "random") return Placement::kRandom;
  return absl::InvalidArgumentError(absl::StrCat(
      "placement must be contiguous, round-robin or random, got '", name, "'"));
}

WorkerBlockSource::WorkerBlockSource(std::vector<std::shared_ptr<WorkerClient>> workers,
                                     Placement placement,
                                     std::shared_ptr<const scheduler::BlockSource> zoo)
    : workers_(std::move(workers)), placement_(placement), zoo_(std::move(zoo)) {}

size_t WorkerBlockSource::Place(const scheduler::BlockRef& ref) const {
  const size_t w = workers_.size();
  // Chain position: embed 0, attn of layer l at 2l + 1, its ffn at 2l + 2, head last.
  const size_t n = 2 * static_cast<size_t>(ref.family.n_layers) + 2;
  const size_t layer = static_cast<size_t>(std::max(ref.layer, 0));
  const size_t pos = ref.kind == runtime::BlockKind::kEmbed  ? 0
                     : ref.kind == runtime::BlockKind::kHead ? n - 1
                     : ref.kind == runtime::BlockKind::kAttn ? 2 * layer + 1
                                                             : 2 * layer + 2;
  switch (placement_) {
    case Placement::kContiguous: return std::min(w - 1, pos * w / n);
    case Placement::kRoundRobin: return pos % w;
    case Placement::kRandom: return std::hash<std::string>()(ref.id) % w;
  }
  return 0;
}

absl::StatusOr<std::shared_ptr<runtime::Block>> WorkerBlockSource::LoadBlock(
    const scheduler::BlockRef& ref) const {
  const std::shared_ptr<WorkerClient>& worker = workers_[Place(ref)];
  wire::LoadBlockRequest req;
  *req.mutable_ref() = RefToProto(ref);
  grpc::ClientContext ctx;
  wire::LoadBlockResponse resp;
  SetDeadline(ctx, kLoadDeadlineS);
  RETURN_IF_ERROR(FromGrpc(worker->stub().LoadBlock(&ctx, req, &resp),
                           absl::StrCat("worker ", worker->address())));
  return std::make_shared<RemoteBlock>(worker, this, ref.kind, resp);
}

absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> WorkerBlockSource::LoadAdapter(
    const scheduler::BlockRef& ref) const {
  ASSIGN_OR_RETURN(std::shared_ptr<const runtime::LoraAdapter> a, zoo_->LoadAdapter(ref));
  absl::MutexLock lock(&mu_);
  adapters_.insert_or_assign(a.get(), ref);
  return a;
}

absl::StatusOr<scheduler::BlockRef> WorkerBlockSource::AdapterRef(
    const runtime::LoraAdapter* a) const {
  absl::MutexLock lock(&mu_);
  auto it = adapters_.find(a);
  if (it == adapters_.end()) {
    return absl::NotFoundError("a LoRA adapter the workers cannot load by id");
  }
  return it->second;
}

absl::StatusOr<std::vector<std::shared_ptr<WorkerClient>>> ConnectWorkers(
    const std::string& list, double ready_timeout_s) {
  std::vector<std::string> addresses;
  std::set<std::string> seen;
  for (absl::string_view entry : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    const size_t colon = entry.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || !absl::SimpleAtoi(entry.substr(colon + 1), &port) ||
        port <= 0 || port > 65535) {
      return absl::InvalidArgumentError(
          absl::StrCat("--workers: '", entry, "' is not host:port"));
    }
    const std::string host(entry.substr(0, colon));
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    if (const int rc = getaddrinfo(host.c_str(), nullptr, &hints, &res); rc != 0) {
      return absl::UnavailableError(
          absl::StrCat("--workers: cannot resolve '", host, "': ", gai_strerror(rc)));
    }
    // Every address the name resolves to is a worker (a headless Service lists each pod);
    // IPv4 ones when there are any, so "localhost" is one worker, not two.
    std::vector<std::string> v4, v6;
    for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
      char ip[NI_MAXHOST];
      if (getnameinfo(a->ai_addr, a->ai_addrlen, ip, sizeof(ip), nullptr, 0, NI_NUMERICHOST)) {
        continue;
      }
      if (a->ai_family == AF_INET6) v6.push_back(absl::StrCat("[", ip, "]:", port));
      else v4.push_back(absl::StrCat(ip, ":", port));
    }
    for (const std::string& addr : v4.empty() ? v6 : v4) {
      if (seen.insert(addr).second) addresses.push_back(addr);
    }
    freeaddrinfo(res);
  }
  if (addresses.empty()) return absl::InvalidArgumentError("--workers: no worker named");
  std::vector<std::shared_ptr<WorkerClient>> out;
  for (const std::string& a : addresses) {
    auto w = std::make_shared<WorkerClient>(a);
    RETURN_IF_ERROR(w->WaitReady(ready_timeout_s));
    out.push_back(std::move(w));
  }
  return out;
}

absl::StatusOr<scheduler::SourceWrapper> WorkerSources(const std::string& list,
                                                       const std::string& placement,
                                                       double wait_s, double hop_delay_s) {
  ASSIGN_OR_RETURN(const Placement p, ParsePlacement(placement));
  ASSIGN_OR_RETURN(std::vector<std::shared_ptr<WorkerClient>> workers,
                   ConnectWorkers(list, wait_s));
  std::string names;
  for (const auto& w : workers) absl::StrAppend(&names, names.empty() ? "" : ", ", w->address());
  spdlog::info("{} workers ({} placement): {}", workers.size(), placement, names);
  return scheduler::SourceWrapper(
      [workers, p, hop_delay_s](std::shared_ptr<const scheduler::BlockSource> zoo) {
        auto source = std::make_shared<WorkerBlockSource>(workers, p, std::move(zoo));
        source->set_hop_delay(hop_delay_s);
        return std::shared_ptr<const scheduler::BlockSource>(std::move(source));
      });
}

}  // namespace blockserve::server
