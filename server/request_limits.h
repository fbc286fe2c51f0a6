// The bounds every generation request is held to, whichever API it came through (HTTP bodies
// are bounded by gateway.max_body_bytes first, gRPC messages by the same size): counts and
// bytes of its lists and strings, checked before any work that grows with them (a constraint's
// tables, stop-string matching on the output stage). docs/security.md lists them.
#pragma once

#include <cstddef>

#include "absl/status/status.h"

namespace blockserve::server {

struct GenerateParams;

inline constexpr size_t kMaxModelNameBytes = 256;
inline constexpr size_t kMaxStopStrings = 16;       // OpenAI takes 4; vLLM any number
inline constexpr size_t kMaxStopStringBytes = 256;
inline constexpr size_t kMaxStopTokenIds = 256;
inline constexpr size_t kMaxLogitBias = 1024;
inline constexpr size_t kMaxGuidedChoices = 256;
inline constexpr size_t kMaxGuidedChoiceBytes = 64 << 10;  // all choices together
inline constexpr size_t kMaxPromptsPerRequest = 16;      // /v1/completions' prompt arrays
inline constexpr size_t kMaxChatMessages = 1024;

// INVALID_ARGUMENT naming the field, its limit and what came; OK within every bound.
absl::Status CheckRequestLimits(const GenerateParams& p);

}  // namespace blockserve::server
