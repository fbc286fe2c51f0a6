#include "scheduler/zoo_block_source.h"

#include "absl/strings/str_cat.h"
#include "blockzoo/zoo_model.h"
#include "runtime/status_macros.h"

namespace blockserve::scheduler {

void ZooBlockSource::Add(const blockzoo::ChainEntry& e) {
  entries_.emplace(std::make_pair(e.block, e.layer), e);
  if (!e.lora.empty()) entries_.emplace(std::make_pair(e.lora, e.layer), e);
}

absl::StatusOr<int> ZooBlockSource::AddAllModels() {
  ASSIGN_OR_RETURN(std::vector<std::string> names, zoo_.ListModels());
  for (const std::string& n : names) {
    ASSIGN_OR_RETURN(blockzoo::Manifest m, zoo_.GetManifest(n));
    for (const blockzoo::ChainEntry& e : m.chain) Add(e);
  }
  return static_cast<int>(names.size());
}

absl::StatusOr<std::shared_ptr<runtime::Block>> ZooBlockSource::LoadBlock(
    const BlockRef& ref) const {
  ASSIGN_OR_RETURN(const blockzoo::ChainEntry* e, Find(ref));
  return blockzoo::LoadBlock(zoo_, *e, ref.family, ref.options, /*verify_hash=*/true);
}

absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> ZooBlockSource::LoadAdapter(
    const BlockRef& ref) const {
  ASSIGN_OR_RETURN(const blockzoo::ChainEntry* e, Find(ref));
  return blockzoo::LoadLora(zoo_, *e, ref.family, /*verify_hash=*/true);
}

absl::StatusOr<const blockzoo::ChainEntry*> ZooBlockSource::Find(const BlockRef& ref) const {
  auto it = entries_.find({ref.id, ref.layer});
  if (it == entries_.end()) {
    return absl::NotFoundError(absl::StrCat("block ", ref.id, " (layer ", ref.layer,
                                            ") is in no model of the zoo ", zoo_.dir()));
  }
  return &it->second;
}

}  // namespace blockserve::scheduler
