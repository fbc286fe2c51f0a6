// The `blockzoo` commands (import, ls, show, stats, verify, gc, rm, derive).
#pragma once

#include <string>
#include <vector>

namespace blockserve::server {

// Runs `cmd` with its positional arguments; returns the process exit code.
int RunZooCommand(const std::string& cmd, const std::vector<std::string>& args);

}  // namespace blockserve::server
