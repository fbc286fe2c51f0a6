// A zoo model as the server presents it: name, lineage, context, tokenizer, chat format and
// the engine models of its policy variants — read from the zoo at start, one model at a time,
// so that a damaged model is down alone.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockzoo/equiv.h"
#include "blockzoo/zoo.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/chat_template.h"

namespace blockserve::server {

struct ServedModel {
  std::string name;
  std::string parent;       // base it derives from ("" for none)
  bool adapter = false;     // a LoRA model on its parent's blocks
  int context_length = 0;
  int vocab_size = 0;
  std::shared_ptr<const runtime::Tokenizer> tokenizer;
  std::vector<int32_t> stop_tokens;  // EOS (and BOS, as llama2.c) end a completion
  std::map<std::string, int> engine_model;  // policy key -> engine model index
  std::vector<std::string> blocks;          // instance names of its exact chain
  ChatFormat chat_format = ChatFormat::kPlain;  // from its tokenizer's chat template
  std::map<std::string, int32_t> marker_ids;    // chat markers that are single tokens
};

// Model `name` of `zoo` (manifest, tokenizer, chat template), its chain resolved under every
// one of `policies` (so that it can be served under each). Errors name the file and the reason;
// engine_model and blocks are left for the caller.
absl::StatusOr<ServedModel> DescribeModel(
    const blockzoo::Zoo& zoo, const std::string& name,
    const std::map<std::string, blockzoo::ResolvePolicy>& policies);

}  // namespace blockserve::server
