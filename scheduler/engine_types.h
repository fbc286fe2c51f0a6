// What the engine is built from: models as chains of block slots (instances shared by the
// models that hold the same slot), each slot resident or loadable by id.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/block.h"
#include "runtime/lora.h"
#include "runtime/model_config.h"
#include "scheduler/block_source.h"

namespace blockserve::scheduler {

// A LoRA adapter of one block instance, attached on demand under its model's key; loadable
// (by id, from its instance's source) when `ref` is set, else resident for good.
struct AdapterSlot {
  std::optional<BlockRef> ref;
  std::shared_ptr<const runtime::LoraAdapter> adapter;  // set while resident
  bool attached = false;
  bool failed = false;  // its last load (or attach) failed
  uint64_t bytes = 0;
  uint64_t last_used = 0;
};

// A block instance: resident (block set) or loadable on first use (by id from `source`). Models
// holding the same slot share the instance (one KV pool, one batch per step).
struct BlockSlot {
  std::shared_ptr<runtime::Block> block;  // null while not resident
  std::optional<BlockRef> ref;            // unset: resident for good, never evicted
  std::shared_ptr<const BlockSource> source;  // where `ref` (and its adapters) load from
  uint64_t bytes = 0;                     // weight memory when resident
  runtime::BlockKind kind = runtime::BlockKind::kAttn;
  std::string name;                       // for stats ("attn 3 1a80d4f4")
  std::map<int32_t, AdapterSlot> adapters;  // by adapter key (lazy engines attach on demand)
};

// A model for the engine: its chain of block slots.
struct EngineModel {
  std::string name;
  runtime::ModelConfig config;
  std::vector<std::shared_ptr<BlockSlot>> chain;
  int32_t adapter = 0;  // LoRA key attached on its instances (0: none)
};

// Wraps resident blocks as slots (tests, monolithic use).
std::vector<std::shared_ptr<BlockSlot>> ResidentSlots(
    const std::vector<std::shared_ptr<runtime::Block>>& blocks);

}  // namespace blockserve::scheduler
