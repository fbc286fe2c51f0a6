// llama2.c checkpoints: the legacy format (7 x int32 header, f32 weights, negative vocab size
// = separate classifier) and export version 1 ("ak42" magic, 256-byte header).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/mapped_file.h"
#include "runtime/model_weights.h"

namespace blockserve::blockzoo {

// Parses `file` (kept alive by the returned tensors). Every size is checked against the file
// length before any tensor is created; errors name the file.
absl::StatusOr<runtime::ModelWeights> ParseLlama2c(
    std::shared_ptr<const runtime::MappedFile> file);
// Same, from bytes that the caller keeps alive (fuzzing).
absl::StatusOr<runtime::ModelWeights> ParseLlama2cBytes(const uint8_t* data, size_t size,
                                                        const std::string& source,
                                                        std::shared_ptr<const void> owner);

}  // namespace blockserve::blockzoo
