#include "scheduler/zoo_engine.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <tuple>

#include "absl/strings/str_cat.h"

#include "blockzoo/zoo_model.h"
#include "runtime/host_memory.h"
#include "runtime/status_macros.h"
#include "scheduler/zoo_block_source.h"

namespace blockserve::scheduler {

absl::StatusOr<std::vector<EngineModel>> LoadEngineModels(const blockzoo::Zoo& zoo,
                                                          const std::vector<std::string>& names,
                                                          const runtime::BlockOptions& opt,
                                                          bool lazy, bool share,
                                                          const SourceWrapper& wrap) {
  std::vector<ModelRef> refs;
  for (const std::string& n : names) refs.push_back({n, {}, n});
  return LoadEngineModels(zoo, refs, opt, lazy, share, wrap);
}

absl::StatusOr<std::vector<EngineModel>> LoadEngineModels(const blockzoo::Zoo& zoo,
                                                          const std::vector<ModelRef>& refs,
                                                          const runtime::BlockOptions& opt,
                                                          bool lazy, bool share,
                                                          const SourceWrapper& wrap) {
  auto zoo_source = std::make_shared<ZooBlockSource>(zoo);
  const std::shared_ptr<const BlockSource> source = wrap ? wrap(zoo_source) : zoo_source;
  std::map<std::tuple<std::string, int, int>, std::shared_ptr<BlockSlot>> slots;
  std::vector<EngineModel> out;
  int32_t next_key = 1;
  for (size_t mi = 0; mi < refs.size(); ++mi) {
    ASSIGN_OR_RETURN(blockzoo::Manifest m, zoo.GetManifest(refs[mi].name));
    ASSIGN_OR_RETURN(blockzoo::ResolvedChain rc,
                     blockzoo::ResolveChain(zoo, refs[mi].name, refs[mi].policy));
    EngineModel em;
    em.name = refs[mi].engine_name.empty() ? refs[mi].name : refs[mi].engine_name;
    em.config = m.family;
    for (const blockzoo::ResolvedBlock& rb : rc.blocks) {
      const blockzoo::ChainEntry& e = rb.entry;
      zoo_source->Add(e);
      std::shared_ptr<BlockSlot>& slot = slots[{e.block, e.layer, share ? -1 : static_cast<int>(mi)}];
      if (!slot) {
        slot = std::make_shared<BlockSlot>();
        slot->bytes = e.bytes;
        slot->kind = e.kind;
        slot->name = absl::StrCat(runtime::BlockKindName(e.kind),
                                  e.layer >= 0 ? absl::StrCat(" ", e.layer) : "", " ",
                                  e.block.substr(0, 8));
        slot->ref = BlockRef{e.block, e.kind, e.layer, m.family, opt};
        slot->source = source;
      }
      // A block shared by models that declare different contexts serves the longest of them
      // (its weights do not depend on it; each model's own limit is the scheduler's).
      slot->ref->family.max_seq_len = std::max(slot->ref->family.max_seq_len, m.family.max_seq_len);
      if (!e.lora.empty()) {
        if (em.adapter == 0) em.adapter = next_key++;
        AdapterSlot& a = slot->adapters[em.adapter];
        a.ref = BlockRef{e.lora, e.kind, e.layer, m.family, opt};
        std::error_code ec;
        a.bytes = std::filesystem::file_size(zoo.BlockPath(e.lora), ec);
      }
      em.chain.push_back(slot);
    }
    out.push_back(std::move(em));
  }
  if (!lazy) {
    for (auto& [key, slot] : slots) {
      ASSIGN_OR_RETURN(slot->block, source->LoadBlock(*slot->ref));
      for (auto& [k, a] : slot->adapters) {
        ASSIGN_OR_RETURN(a.adapter, source->LoadAdapter(*a.ref));
        RETURN_IF_ERROR(slot->block->AttachAdapter(k, a.adapter));
        a.attached = true;
        a.ref.reset();  // resident for good, like the block
      }
      slot->ref.reset();
    }
  }
  return out;
}

uint64_t DefaultKvBudget(const std::vector<EngineModel>& models, int max_running,
                         runtime::DType kv_dtype, std::string* why) {
  uint64_t per_seq = 0;  // KV bytes of one full-context sequence, the largest model's
  for (const EngineModel& m : models) {
    int attn = 0;
    for (const auto& slot : m.chain) attn += slot->kind == runtime::BlockKind::kAttn;
    per_seq = std::max(per_seq, uint64_t{2} * attn * m.config.kv_dim() *
                                    std::max(0, m.config.max_seq_len) * runtime::DTypeSize(kv_dtype));
  }
  const uint64_t want = per_seq * std::max(1, max_running) * 2;
  const runtime::HostMemory mem = runtime::ReadHostMemory();
  const uint64_t cap = mem.limit / 4;
  const uint64_t budget = std::max(std::min(want, cap), per_seq);
  if (why) {
    *why = absl::StrCat(budget >> 20, " MiB = min(2 x ", max_running, " running x ", per_seq >> 10,
                        " KiB per full-context sequence, a quarter of ", mem.limit >> 20,
                        " MiB (", mem.source, ")), at least one sequence");
  }
  return budget;
}

}  // namespace blockserve::scheduler
