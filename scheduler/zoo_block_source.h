// Blocks and LoRA adapters of a zoo, by (id, layer): the BlockSource of a serving process, and
// of a worker process that loads the same ids from the zoo volume it mounts.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "blockzoo/zoo.h"
#include "scheduler/block_source.h"

namespace blockserve::scheduler {

// Every load checks the block's content hash: the bytes are read anyway, and a flipped bit must
// fail that model's requests with a clear error instead of serving garbage (bench/load_bench
// prints what the check costs next to the load itself).
//
// Threads: Add before any load (or under the caller's lock); loads run side by side.
class ZooBlockSource final : public BlockSource {
 public:
  explicit ZooBlockSource(const blockzoo::Zoo& zoo) : zoo_(zoo) {}
  // Makes `e`'s block (and LoRA block) known by id.
  void Add(const blockzoo::ChainEntry& e);
  // Every chain entry of every model the zoo holds now; returns how many models it read.
  absl::StatusOr<int> AddAllModels();
  absl::StatusOr<std::shared_ptr<runtime::Block>> LoadBlock(const BlockRef& ref) const override;
  absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> LoadAdapter(
      const BlockRef& ref) const override;
  bool Knows(const BlockRef& ref) const { return entries_.count({ref.id, ref.layer}) > 0; }

 private:
  absl::StatusOr<const blockzoo::ChainEntry*> Find(const BlockRef& ref) const;
  const blockzoo::Zoo& zoo_;
  // What the manifests say about each block (size, tensors), by (id, layer).
  std::map<std::pair<std::string, int>, blockzoo::ChainEntry> entries_;
};

}  // namespace blockserve::scheduler
