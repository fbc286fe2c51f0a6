#include "scheduler/zoo_engine.h"

#include <map>

#include "blockzoo/zoo_model.h"
#include "runtime/status_macros.h"

namespace blockserve::scheduler {

absl::StatusOr<std::vector<EngineModel>> LoadEngineModels(const blockzoo::Zoo& zoo,
                                                          const std::vector<std::string>& names,
                                                          const runtime::BlockOptions& opt) {
  std::map<std::pair<std::string, int>, std::shared_ptr<runtime::Block>> instances;
  std::vector<EngineModel> out;
  int32_t next_key = 1;
  for (const std::string& name : names) {
    ASSIGN_OR_RETURN(blockzoo::Manifest m, zoo.GetManifest(name));
    EngineModel em;
    em.name = name;
    em.config = m.family;
    for (const blockzoo::ChainEntry& e : m.chain) {
      auto& inst = instances[{e.block, e.layer}];
      if (!inst) {
        ASSIGN_OR_RETURN(inst, blockzoo::LoadBlock(zoo, e, m.family, opt, /*verify_hash=*/false));
      }
      if (!e.lora.empty()) {
        if (em.adapter == 0) em.adapter = next_key++;
        ASSIGN_OR_RETURN(auto adapter, blockzoo::LoadLora(zoo, e, m.family, false));
        RETURN_IF_ERROR(inst->AttachAdapter(em.adapter, std::move(adapter)));
      }
      em.chain.push_back(inst);
    }
    out.push_back(std::move(em));
  }
  return out;
}

}  // namespace blockserve::scheduler
