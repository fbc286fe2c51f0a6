// blockserve.v1.GenerateRequest -> GenerateParams: every field checked (INVALID_ARGUMENT naming
// it); the request limits (server/request_limits.h) are ServingCore::Generate's, for both APIs.
// Shared by Generate and Complete, and fuzzed (tests/fuzz/grpc_request_fuzz.cc).
#pragma once

#include "absl/status/statusor.h"
#include "blockserve/v1/blockserve.pb.h"
#include "server/serving.h"

namespace blockserve::server {

namespace v1 = ::blockserve::v1;

absl::StatusOr<GenerateParams> ParamsFromProto(const v1::GenerateRequest& r);

}  // namespace blockserve::server
