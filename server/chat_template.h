// Chat prompts. A model's chat template (GGUF `tokenizer.chat_template`, a Jinja program) is
// recognised by its markers as one of the common formats — as llama.cpp does — and rendered by
// our own code; models without one (or with one we do not recognise) use the plain template:
// the messages' contents joined by newlines.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace blockserve::server {

enum class ChatFormat { kPlain, kChatMl, kLlama2, kLlama3, kZephyr };

const char* ChatFormatName(ChatFormat f);

struct ChatMessage {
  std::string role;  // system, developer (as system), user, assistant
  std::string content;
};

// The format a Jinja chat template implements; kPlain when none is recognised.
ChatFormat DetectChatFormat(std::string_view jinja);

// The prompt text, ending with the assistant's turn opened (BOS is the tokenizer's business).
std::string RenderChat(ChatFormat f, const std::vector<ChatMessage>& messages);

// Marker strings of the format that tokenizers usually have as single special tokens.
std::vector<std::string> ChatMarkers(ChatFormat f);

// Where the assistant's turn ends (cut from the output like a stop string).
std::vector<std::string> ChatStops(ChatFormat f);

// Splits `text` at the markers: segments of plain text and markers, in order; `is_marker`
// tells which is which.
std::vector<std::pair<std::string, bool>> SplitAtMarkers(const std::string& text,
                                                         const std::vector<std::string>& markers);

}  // namespace blockserve::server
