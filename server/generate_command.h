// `blockserve generate`: run a model file on a prompt and print the text.
#pragma once

#include <string>
#include <vector>

namespace blockserve::server {

// Returns the process exit code. Reads its options from absl flags.
int RunGenerate();
int RunDevices();

}  // namespace blockserve::server
