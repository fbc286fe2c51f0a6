// `blockserve serve`: the engine, the gRPC services and the OpenAI-compatible HTTP gateway in
// one process. SIGTERM (or SIGINT) drains: stop admitting, let in-flight requests finish within
// the configured deadline, abort the rest, exit 0.
#pragma once

namespace blockserve::server {

// Returns the process exit code. Reads its options from absl flags.
int RunServe();

}  // namespace blockserve::server
