// The gRPC side (callback API): blockserve.v1.Generation and blockserve.v1.Admin, the standard
// health service and server reflection.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/serving.h"

namespace grpc {
class Server;
}

namespace blockserve::server {

class GrpcServer {
 public:
  explicit GrpcServer(ServingCore* core);
  ~GrpcServer();

  // `address`: "host:port" (port 0: any free port).
  absl::Status Start(const std::string& address);
  int port() const { return port_; }
  // Health turns NOT_SERVING (draining).
  void SetServing(bool serving);
  // Stops; calls still running after `deadline` are cancelled.
  void Shutdown(std::chrono::duration<double> deadline);

 private:
  class GenerationService;
  class AdminService;

  ServingCore* core_;
  std::unique_ptr<GenerationService> generation_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

}  // namespace blockserve::server
