// libFuzzer: a blockserve.v1.GenerateRequest from arbitrary bytes (protobuf's parser) and its
// validation into GenerateParams (server/grpc_request.h): an error status or parameters within
// every request limit.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "server/grpc_request.h"
#include "server/request_limits.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  blockserve::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto p = blockserve::server::ParamsFromProto(req);
  if (p.ok() && !blockserve::server::CheckRequestLimits(*p).ok()) std::abort();
  return 0;
}
