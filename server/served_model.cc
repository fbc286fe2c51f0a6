#include "server/served_model.h"

#include "absl/strings/str_cat.h"
#include "blockzoo/file_util.h"
#include "blockzoo/formats/gguf.h"
#include "runtime/status_macros.h"
#include "spdlog/spdlog.h"

namespace blockserve::server {

namespace {

// The chat template a model's tokenizer carries: the manifest's, or a GGUF tokenizer's own.
absl::StatusOr<std::string> ChatTemplate(const blockzoo::Zoo& zoo, const blockzoo::Manifest& m) {
  if (!m.chat_template.empty() || m.tokenizer_format != "gguf") return m.chat_template;
  // A GGUF tokenizer given at import (--tokenizer) keeps its template.
  const std::string path = zoo.TokenizerPath(m.tokenizer, m.tokenizer_format);
  ASSIGN_OR_RETURN(std::string bytes, blockzoo::ReadWholeFile(path, size_t{1} << 30));
  ASSIGN_OR_RETURN(blockzoo::GgufFile g,
                   blockzoo::ParseGguf(reinterpret_cast<const uint8_t*>(bytes.data()),
                                       bytes.size(), path));
  return g.GetString("tokenizer.chat_template").value_or("");
}

absl::Status DescribeTokenizer(const blockzoo::Zoo& zoo, const blockzoo::Manifest& m,
                               ServedModel* sm) {
  ASSIGN_OR_RETURN(auto tok, zoo.LoadTokenizer(m));
  sm->tokenizer = std::move(tok);
  for (int32_t id : {sm->tokenizer->eos_id(), sm->tokenizer->bos_id()}) {
    if (id >= 0) sm->stop_tokens.push_back(id);
  }
  ASSIGN_OR_RETURN(const std::string chat_template, ChatTemplate(zoo, m));
  if (!chat_template.empty()) {
    sm->chat_format = DetectChatFormat(chat_template);
    if (sm->chat_format == ChatFormat::kPlain) {
      spdlog::warn("{}: chat template not recognised; chat uses the plain template", m.name);
    }
  }
  const std::vector<std::string> markers = ChatMarkers(sm->chat_format);
  for (int32_t id = 0; id < sm->tokenizer->vocab_size() && !markers.empty(); ++id) {
    const std::string piece = sm->tokenizer->Decode(-1, id);
    for (const std::string& mk : markers) {
      if (piece == mk && !sm->marker_ids.count(mk)) sm->marker_ids[mk] = id;
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ServedModel> DescribeModel(
    const blockzoo::Zoo& zoo, const std::string& name,
    const std::map<std::string, blockzoo::ResolvePolicy>& policies) {
  ServedModel sm;
  sm.name = name;
  ASSIGN_OR_RETURN(blockzoo::Manifest m, zoo.GetManifest(name));
  sm.parent = m.parent;
  sm.context_length = m.family.max_seq_len;
  sm.vocab_size = m.family.vocab_size;
  for (const auto& e : m.chain) sm.adapter |= !e.lora.empty();
  if (!m.tokenizer.empty()) RETURN_IF_ERROR(DescribeTokenizer(zoo, m, &sm));
  for (const auto& [key, policy] : policies) {
    auto chain = blockzoo::ResolveChain(zoo, name, policy);
    if (!chain.ok()) {
      return absl::Status(chain.status().code(),
                          absl::StrCat("policy ", key, ": ", chain.status().message()));
    }
  }
  return sm;
}

}  // namespace blockserve::server
