// Command-line parsing shared by the binaries: absl flags, with dashes accepted in flag names
// (--max-tokens as well as --max_tokens). Returns the positional arguments.
#pragma once

#include <string>
#include <vector>

namespace blockserve::server {

std::vector<std::string> ParseFlags(int argc, char** argv, const char* usage);

}  // namespace blockserve::server
