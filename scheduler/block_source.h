// Where block instances and LoRA adapters come from, addressed by id: the engine's residency
// asks a BlockSource for "block <id>, layer <l>, built for <family>" — the zoo in serving, a
// worker's shared volume later — and holds no closures over where the bytes live.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/block.h"
#include "runtime/blocks/blocks.h"
#include "runtime/lora.h"
#include "runtime/model_config.h"

namespace blockserve::scheduler {

struct BlockRef {
  std::string id;  // content id (of the block, or of the LoRA block)
  runtime::BlockKind kind = runtime::BlockKind::kAttn;
  int layer = -1;
  runtime::ModelConfig family;    // the shapes it is built for
  runtime::BlockOptions options;  // blocks only: KV pages, weight type, backend
};

// Thread-safe: loader threads call it side by side.
class BlockSource {
 public:
  virtual ~BlockSource() = default;
  virtual absl::StatusOr<std::shared_ptr<runtime::Block>> LoadBlock(const BlockRef& ref) const = 0;
  virtual absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> LoadAdapter(
      const BlockRef& ref) const = 0;
};

}  // namespace blockserve::scheduler
