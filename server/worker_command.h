// `blockserve worker`: hosts block instances for a front end (server/worker_service.h).
#pragma once

namespace blockserve::server {

int RunWorker();

}  // namespace blockserve::server
