// libFuzzer: a blockserve.v1.GenerateRequest from arbitrary bytes (protobuf's parser), its
// validation into GenerateParams (server/grpc_request.h) and the request limits on the result.
#include <cstddef>
#include <cstdint>

#include "server/grpc_request.h"
#include "server/request_limits.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  blockserve::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  auto p = blockserve::server::ParamsFromProto(req);
  if (p.ok()) (void)blockserve::server::CheckRequestLimits(*p);
  return 0;
}
