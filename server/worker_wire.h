// Conversions between the engine's values and the internal worker API's messages
// (proto/blockserve/worker/v1/worker.proto), shared by the worker and the front end's client.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockserve/worker/v1/worker.pb.h"
#include "scheduler/block_source.h"

namespace blockserve::server {

namespace wire = ::blockserve::worker::v1;

wire::BlockRef RefToProto(const scheduler::BlockRef& ref);
// Checks every field (a worker takes nothing on trust from the wire).
absl::StatusOr<scheduler::BlockRef> RefFromProto(const wire::BlockRef& p);

grpc::Status ToGrpc(const absl::Status& s);
absl::Status FromGrpc(const grpc::Status& s, const std::string& what);

}  // namespace blockserve::server
