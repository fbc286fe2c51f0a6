// The OpenAI-compatible HTTP gateway (on server/http_server.h): /v1/models, /v1/completions,
// /v1/chat/completions (JSON or server-sent events), /tokenize, /detokenize, /metrics, /health,
// /ready. OpenAI-style error objects with the HTTP codes OpenAI uses (request parsing and errors:
// server/openai_request.h); a client that disconnects aborts its request.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "server/serving.h"

namespace blockserve::server::http {
class HttpServer;
}

namespace blockserve::server {

class HttpGateway {
 public:
  explicit HttpGateway(ServingCore* core);
  ~HttpGateway();

  // Binds (port 0: any free port) and serves on a thread of its own.
  absl::Status Start(const std::string& host, int port);
  int port() const { return port_; }
  // Stops accepting; open streams end.
  void Stop();

 private:
  void Routes();

  ServingCore* core_;
  std::unique_ptr<http::HttpServer> http_;
  int port_ = 0;
};

}  // namespace blockserve::server
