// The front end's side of the worker API: block instances that live on worker processes.
//
// A RemoteBlock is a runtime::Block whose Compute sends its call's rows to the worker hosting
// the instance and copies the result back; Release/Fork/adapters go the same way. The engine,
// its residency and its executor see an ordinary block, so every scheduling feature (per-block
// batching across models, chunked prefill, LoRA, the prefix cache) works unchanged. A
// WorkerBlockSource builds them: it places each instance on a worker (Placement) and asks that
// worker to load the block by id from the zoo the two share.
//
// Threads: a RemoteBlock is called by one thread at a time (the executor runs one call per
// instance per round); calls on different instances run side by side over one channel per
// worker. The source is called by the residency's loader threads.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "blockserve/worker/v1/worker.grpc.pb.h"
#include "scheduler/block_source.h"
#include "scheduler/zoo_engine.h"

namespace blockserve::server {

// One worker: its address and channel.
class WorkerClient {
 public:
  explicit WorkerClient(std::string address);
  const std::string& address() const { return address_; }
  ::blockserve::worker::v1::Worker::Stub& stub() { return *stub_; }
  // Blocks until the worker answers a Stats call or `timeout_s` passes.
  absl::Status WaitReady(double timeout_s);

 private:
  std::string address_;
  std::unique_ptr<::blockserve::worker::v1::Worker::Stub> stub_;
};

// Which worker hosts an instance. kContiguous cuts the chain (embed, layers, head) into W
// consecutive ranges, one per worker, so consecutive blocks share a worker (locality);
// kRoundRobin deals chain positions out in turn; kRandom hashes the block id.
enum class Placement { kContiguous, kRoundRobin, kRandom };
absl::StatusOr<Placement> ParsePlacement(const std::string& name);

class WorkerBlockSource final : public scheduler::BlockSource {
 public:
  // `zoo`: the front end's own source, for LoRA adapters (the front end keeps a copy of each to
  // hand the engine; the worker loads its own by id).
  WorkerBlockSource(std::vector<std::shared_ptr<WorkerClient>> workers, Placement placement,
                    std::shared_ptr<const scheduler::BlockSource> zoo);
  absl::StatusOr<std::shared_ptr<runtime::Block>> LoadBlock(
      const scheduler::BlockRef& ref) const override;
  absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> LoadAdapter(
      const scheduler::BlockRef& ref) const override;
  // A delay added to every round trip to a worker (benchmarks: a network between servers on a
  // machine that has none); 0 by default.
  void set_hop_delay(double seconds) { hop_delay_s_ = seconds; }
  double hop_delay() const { return hop_delay_s_; }
  // The id of an adapter this source loaded (what a worker loads for it); NotFound otherwise.
  absl::StatusOr<scheduler::BlockRef> AdapterRef(const runtime::LoraAdapter* a) const;
  // Index of the worker `ref` is placed on.
  size_t Place(const scheduler::BlockRef& ref) const;

 private:
  std::vector<std::shared_ptr<WorkerClient>> workers_;
  Placement placement_;
  std::shared_ptr<const scheduler::BlockSource> zoo_;
  double hop_delay_s_ = 0;
  mutable absl::Mutex mu_;
  mutable std::map<const runtime::LoraAdapter*, scheduler::BlockRef> adapters_
      ABSL_GUARDED_BY(mu_);
};

// The workers of `--workers host:port,host:port,...` (an entry may be a DNS name that resolves
// to several workers: each address it resolves to is one worker).
absl::StatusOr<std::vector<std::shared_ptr<WorkerClient>>> ConnectWorkers(
    const std::string& list, double ready_timeout_s);

// What `serve --workers LIST --placement NAME` hands the serving core: the zoo's source wrapped
// so that every instance is built on a worker. Waits up to `wait_s` for each worker to answer.
// `hop_delay_s`: WorkerBlockSource::set_hop_delay.
absl::StatusOr<scheduler::SourceWrapper> WorkerSources(const std::string& list,
                                                       const std::string& placement,
                                                       double wait_s, double hop_delay_s = 0);

}  // namespace blockserve::server
