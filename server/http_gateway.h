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
  // The port /metrics is served on when the configuration gives it one (else 0).
  int metrics_port() const { return metrics_port_; }
  // Stops accepting; open streams end.
  void Stop();

 private:
  void Routes();
  // /health and /ready (answered on the event thread), and /metrics when `metrics` (behind an
  // admin or metrics key when `metrics_key`).
  void ProbeRoutes(http::HttpServer& s, bool metrics, bool metrics_key);

  ServingCore* core_;
  std::unique_ptr<http::HttpServer> http_;
  std::unique_ptr<http::HttpServer> metrics_http_;  // when /metrics has a port of its own
  int port_ = 0, metrics_port_ = 0;
};

}  // namespace blockserve::server
