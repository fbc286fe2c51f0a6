// Zoo models as engine models: one block instance per (block, layer) however many models use
// it, so their requests batch together at that block; each model with LoRA blocks gets its own
// adapter key, attached on the shared instances.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockzoo/equiv.h"
#include "blockzoo/zoo.h"
#include "runtime/blocks/blocks.h"
#include "scheduler/engine.h"

namespace blockserve::scheduler {

// Where instances load: the zoo's source as is, or wrapped (a source that builds each instance
// on a worker process: server/remote_block.h). Called once, before any entry is added.
using SourceWrapper = std::function<std::shared_ptr<const BlockSource>(
    std::shared_ptr<const BlockSource> zoo_source)>;

// `lazy`: instances load from the zoo on first use (and may be evicted and reloaded); else
// they are loaded now. `share`: false gives every model its own copy of every block (the
// per-model serving baseline).
absl::StatusOr<std::vector<EngineModel>> LoadEngineModels(const blockzoo::Zoo& zoo,
                                                          const std::vector<std::string>& names,
                                                          const runtime::BlockOptions& opt,
                                                          bool lazy = false, bool share = true,
                                                          const SourceWrapper& wrap = nullptr);

// A model under an equivalence policy: the chain comes from the zoo's resolver, so a substituted
// block is the very instance the models it comes from use (and batches with them).
struct ModelRef {
  std::string name;
  blockzoo::ResolvePolicy policy;  // default: exact
  std::string engine_name;         // name in the engine (default: name)
};

absl::StatusOr<std::vector<EngineModel>> LoadEngineModels(const blockzoo::Zoo& zoo,
                                                          const std::vector<ModelRef>& models,
                                                          const runtime::BlockOptions& opt,
                                                          bool lazy = false, bool share = true,
                                                          const SourceWrapper& wrap = nullptr);

// The KV budget when none is configured: room for `max_running` sequences at full context of
// the model that needs the most KV per sequence, twice over (the rest caches prefixes), and at
// most a quarter of the memory this process may use (runtime/host_memory.h) — the bound that
// keeps a server with a prefix cache from growing without end. `why` gets the arithmetic.
uint64_t DefaultKvBudget(const std::vector<EngineModel>& models, int max_running,
                         runtime::DType kv_dtype, std::string* why);

}  // namespace blockserve::scheduler
