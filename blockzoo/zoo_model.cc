#include "blockzoo/zoo_model.h"

#include "absl/strings/str_cat.h"
#include "runtime/status_macros.h"

namespace blockserve::blockzoo {

using runtime::BlockKind;

absl::StatusOr<runtime::ModelWeights> BlockWeights(const Zoo& zoo, const ChainEntry& e,
                                                   const runtime::ModelConfig& family,
                                                   bool verify_hash) {
  ASSIGN_OR_RETURN(SafetensorsFile f, zoo.ReadBlock(e.block, &e, verify_hash));
  runtime::ModelWeights w;
  w.config = family;
  w.config.tied_embeddings = false;  // a head block carries its own output matrix
  w.source = zoo.BlockPath(e.block);
  for (auto& [name, t] : f.tensors) {
    const bool layered = e.kind == BlockKind::kAttn || e.kind == BlockKind::kFfn;
    w.tensors[layered ? runtime::LayerTensor(e.layer, name) : name] = t;
  }
  return w;
}

absl::StatusOr<std::shared_ptr<runtime::Block>> LoadBlock(const Zoo& zoo, const ChainEntry& e,
                                                          const runtime::ModelConfig& family,
                                                          const runtime::BlockOptions& opt,
                                                          bool verify_hash) {
  ASSIGN_OR_RETURN(runtime::ModelWeights w, BlockWeights(zoo, e, family, verify_hash));
  runtime::Backend& backend = opt.backend ? *opt.backend : runtime::DefaultCpuBackend();
  return backend.MakeBlock(e.kind, w, e.layer, opt);
}

absl::StatusOr<std::shared_ptr<const runtime::LoraAdapter>> LoadLora(
    const Zoo& zoo, const ChainEntry& e, const runtime::ModelConfig& family, bool verify_hash) {
  ASSIGN_OR_RETURN(LoraBlock l, zoo.ReadLora(e.lora, e.kind, family, verify_hash));
  return runtime::LoraAdapter::Create(e.kind, family, l.tensors, l.alpha, zoo.BlockPath(e.lora));
}

absl::StatusOr<std::shared_ptr<runtime::Block>> LoadUnit(const Zoo& zoo, const ChainEntry& e,
                                                         const runtime::ModelConfig& family,
                                                         const runtime::BlockOptions& opt,
                                                         bool verify_hash) {
  ASSIGN_OR_RETURN(auto block, LoadBlock(zoo, e, family, opt, verify_hash));
  if (!e.lora.empty()) {
    ASSIGN_OR_RETURN(auto adapter, LoadLora(zoo, e, family, verify_hash));
    RETURN_IF_ERROR(block->AttachAdapter(kModelAdapterKey, std::move(adapter)));
  }
  return block;
}

absl::StatusOr<ZooModel> LoadZooModel(const Zoo& zoo, const std::string& name,
                                      const runtime::BlockOptions& opt, bool verify_hash) {
  ZooModel out;
  ASSIGN_OR_RETURN(out.manifest, zoo.GetManifest(name));
  std::vector<std::shared_ptr<runtime::Block>> blocks;
  for (const ChainEntry& e : out.manifest.chain) {
    ASSIGN_OR_RETURN(auto block, LoadUnit(zoo, e, out.manifest.family, opt, verify_hash));
    if (!e.lora.empty()) out.adapter = kModelAdapterKey;
    blocks.push_back(std::move(block));
  }
  ASSIGN_OR_RETURN(runtime::Chain chain, runtime::Chain::Create(out.manifest.family, std::move(blocks)));
  out.chain = std::make_unique<runtime::Chain>(std::move(chain));
  if (!out.manifest.tokenizer.empty()) {
    ASSIGN_OR_RETURN(out.tokenizer, zoo.LoadTokenizer(out.manifest));
  }
  return out;
}

}  // namespace blockserve::blockzoo
