// `blockserve worker`: a process that hosts block instances for a front end. It loads blocks
// by id from the zoo it mounts (the same volume as the front end's), keeps their weights and KV
// pages on its backend (the CPU now; CUDA where a GPU is present, once that backend exists), and
// runs the chain segments the front end sends it (proto/blockserve/worker/v1/worker.proto).
//
// Threads: gRPC's threads call the service. Segments and sequence operations run one at a
// time on the worker's compute pool (compute_mu_): the executor of a front end never sends two
// calls for one instance at once, and one pool serves every instance. Loads run beside them.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "blockserve/worker/v1/worker.grpc.pb.h"
#include "blockzoo/zoo.h"
#include "runtime/block.h"
#include "runtime/device.h"
#include "scheduler/zoo_block_source.h"

namespace blockserve::server {

namespace wire = ::blockserve::worker::v1;

class WorkerService final : public wire::Worker::Service {
 public:
  // `threads`: compute threads (0: BLOCKSERVE_THREADS or every CPU, as serve).
  WorkerService(std::unique_ptr<blockzoo::Zoo> zoo, int threads);

  grpc::Status LoadBlock(grpc::ServerContext*, const wire::LoadBlockRequest* req,
                         wire::LoadBlockResponse* resp) override;
  grpc::Status UnloadBlock(grpc::ServerContext*, const wire::UnloadBlockRequest* req,
                           wire::UnloadBlockResponse* resp) override;
  grpc::Status AttachAdapter(grpc::ServerContext*, const wire::AttachAdapterRequest* req,
                             wire::AttachAdapterResponse* resp) override;
  grpc::Status DetachAdapter(grpc::ServerContext*, const wire::DetachAdapterRequest* req,
                             wire::DetachAdapterResponse* resp) override;
  grpc::Status RunSegment(grpc::ServerContext*, const wire::RunSegmentRequest* req,
                          wire::RunSegmentResponse* resp) override;
  grpc::Status ReleaseSequence(grpc::ServerContext*, const wire::ReleaseSequenceRequest* req,
                               wire::SequenceResponse* resp) override;
  grpc::Status ForkSequence(grpc::ServerContext*, const wire::ForkSequenceRequest* req,
                            wire::SequenceResponse* resp) override;
  grpc::Status Stats(grpc::ServerContext*, const wire::StatsRequest* req,
                     wire::StatsResponse* resp) override;

 private:
  struct Instance {
    std::shared_ptr<runtime::Block> block;
    scheduler::BlockRef ref;
    uint64_t calls = 0, tokens = 0;  // guarded by compute_mu_
  };
  // The instances of `ids`, in order; NotFound naming the first unknown one.
  absl::StatusOr<std::vector<Instance*>> Find(const google::protobuf::RepeatedField<uint64_t>& ids)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(compute_mu_);
  absl::Status Run(const wire::RunSegmentRequest& req, wire::RunSegmentResponse& resp)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(compute_mu_);
  // Reads the zoo's manifests again when `ref` is unknown (a model imported since the last look).
  absl::Status EnsureKnown(const scheduler::BlockRef& ref) ABSL_LOCKS_EXCLUDED(source_mu_);

  std::unique_ptr<blockzoo::Zoo> zoo_;
  absl::Mutex source_mu_;
  std::unique_ptr<scheduler::ZooBlockSource> source_ ABSL_GUARDED_BY(source_mu_);

  absl::Mutex compute_mu_ ABSL_ACQUIRED_BEFORE(source_mu_);
  runtime::CpuDevice cpu_;
  runtime::ExecContext ctx_ ABSL_GUARDED_BY(compute_mu_);
  std::map<uint64_t, Instance> instances_ ABSL_GUARDED_BY(compute_mu_);
  uint64_t next_instance_ ABSL_GUARDED_BY(compute_mu_) = 1;
  uint64_t segments_ ABSL_GUARDED_BY(compute_mu_) = 0;
  double compute_secs_ ABSL_GUARDED_BY(compute_mu_) = 0;
};

// The worker's gRPC server: the Worker service and gRPC health on one port.
class WorkerServer {
 public:
  WorkerServer(std::unique_ptr<blockzoo::Zoo> zoo, int threads);
  ~WorkerServer();
  // `address`: "host:port" (port 0: any free port).
  absl::Status Start(const std::string& address);
  int port() const { return port_; }
  void Stop();

 private:
  WorkerService service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace blockserve::server
