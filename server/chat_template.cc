#include "server/chat_template.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace blockserve::server {

namespace {

bool Has(std::string_view s, std::string_view what) { return s.find(what) != std::string_view::npos; }

std::string Role(const std::string& r) { return r == "developer" ? "system" : r; }

}  // namespace

const char* ChatFormatName(ChatFormat f) {
  switch (f) {
    case ChatFormat::kChatMl: return "chatml";
    case ChatFormat::kLlama2: return "llama2";
    case ChatFormat::kLlama3: return "llama3";
    case ChatFormat::kZephyr: return "zephyr";
    default: return "plain";
  }
}

ChatFormat DetectChatFormat(std::string_view t) {
  if (Has(t, "<|im_start|>")) return ChatFormat::kChatMl;
  if (Has(t, "<|start_header_id|>")) return ChatFormat::kLlama3;
  if (Has(t, "[INST]")) return ChatFormat::kLlama2;
  if (Has(t, "<|user|>") && Has(t, "<|assistant|>")) return ChatFormat::kZephyr;
  return ChatFormat::kPlain;
}

std::string RenderChat(ChatFormat f, const std::vector<ChatMessage>& msgs) {
  std::string out;
  switch (f) {
    case ChatFormat::kChatMl:
      for (const auto& m : msgs) absl::StrAppend(&out, "<|im_start|>", Role(m.role), "\n", m.content, "<|im_end|>\n");
      return out + "<|im_start|>assistant\n";
    case ChatFormat::kLlama3:
      for (const auto& m : msgs) {
        absl::StrAppend(&out, "<|start_header_id|>", Role(m.role), "<|end_header_id|>\n\n", m.content, "<|eot_id|>");
      }
      return out + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    case ChatFormat::kZephyr:
      for (const auto& m : msgs) absl::StrAppend(&out, "<|", Role(m.role), "|>\n", m.content, "</s>\n");
      return out + "<|assistant|>\n";
    case ChatFormat::kLlama2: {
      // [INST] <<SYS>>\nsystem\n<</SYS>>\n\nuser [/INST] assistant </s><s>[INST] user [/INST]
      std::string system;
      bool open = false;  // an [INST] waiting for its [/INST]
      for (const auto& m : msgs) {
        const std::string role = Role(m.role);
        if (role == "system") {
          system += (system.empty() ? "" : "\n") + m.content;
        } else if (role == "user") {
          if (!out.empty()) out += "<s>";
          out += "[INST] ";
          if (!system.empty()) {
            absl::StrAppend(&out, "<<SYS>>\n", system, "\n<</SYS>>\n\n");
            system.clear();
          }
          absl::StrAppend(&out, m.content, " [/INST]");
          open = true;
        } else {
          absl::StrAppend(&out, " ", m.content, " </s>");
          open = false;
        }
      }
      if (!open && !system.empty()) absl::StrAppend(&out, "[INST] <<SYS>>\n", system, "\n<</SYS>>\n\n [/INST]");
      return out;
    }
    default: {
      std::vector<std::string> parts;
      for (const auto& m : msgs) parts.push_back(m.content);
      return absl::StrJoin(parts, "\n");
    }
  }
}

std::vector<std::string> ChatMarkers(ChatFormat f) {
  switch (f) {
    case ChatFormat::kChatMl: return {"<|im_start|>", "<|im_end|>"};
    case ChatFormat::kLlama3: return {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"};
    case ChatFormat::kZephyr: return {"<|system|>", "<|user|>", "<|assistant|>", "</s>"};
    case ChatFormat::kLlama2: return {"<s>", "</s>"};
    default: return {};
  }
}

std::vector<std::string> ChatStops(ChatFormat f) {
  switch (f) {
    case ChatFormat::kChatMl: return {"<|im_end|>", "<|im_start|>"};
    case ChatFormat::kLlama3: return {"<|eot_id|>", "<|start_header_id|>"};
    case ChatFormat::kZephyr: return {"</s>", "<|user|>"};
    case ChatFormat::kLlama2: return {"</s>", "[INST]"};
    default: return {};
  }
}

std::vector<std::pair<std::string, bool>> SplitAtMarkers(const std::string& text,
                                                         const std::vector<std::string>& markers) {
  std::vector<std::pair<std::string, bool>> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string::npos, len = 0;
    for (const std::string& m : markers) {
      const size_t at = text.find(m, pos);
      if (at != std::string::npos && (at < best || (at == best && m.size() > len))) {
        best = at;
        len = m.size();
      }
    }
    if (best == std::string::npos) {
      out.emplace_back(text.substr(pos), false);
      break;
    }
    if (best > pos) out.emplace_back(text.substr(pos, best - pos), false);
    out.emplace_back(text.substr(best, len), true);
    pos = best + len;
  }
  return out;
}

}  // namespace blockserve::server
