// Chat formats: recognised from real template markers, rendered as their models expect.
#include "server/chat_template.h"

#include "gtest/gtest.h"

namespace blockserve::server {
namespace {

const std::vector<ChatMessage> kChat = {
    {"system", "Be brief."}, {"user", "Hi"}, {"assistant", "Hello."}, {"user", "Tell a story"}};

TEST(ChatTemplate, DetectsFormatsByTheirMarkers) {
  EXPECT_EQ(DetectChatFormat("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"),
            ChatFormat::kChatMl);
  EXPECT_EQ(DetectChatFormat("{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"),
            ChatFormat::kLlama3);
  EXPECT_EQ(DetectChatFormat("{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"),
            ChatFormat::kLlama2);
  EXPECT_EQ(DetectChatFormat("{{ '<|user|>\\n' + message['content'] + eos_token }}{{ '<|assistant|>' }}"),
            ChatFormat::kZephyr);
  EXPECT_EQ(DetectChatFormat("{{ messages }}"), ChatFormat::kPlain);
}

TEST(ChatTemplate, RendersEachFormat) {
  EXPECT_EQ(RenderChat(ChatFormat::kChatMl, kChat),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nTell a story<|im_end|>\n"
            "<|im_start|>assistant\n");
  EXPECT_EQ(RenderChat(ChatFormat::kLlama3, {{"user", "Hi"}}),
            "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_EQ(RenderChat(ChatFormat::kLlama2, kChat),
            "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello. </s><s>[INST] Tell a story [/INST]");
  EXPECT_EQ(RenderChat(ChatFormat::kZephyr, {{"developer", "S"}, {"user", "Hi"}}),
            "<|system|>\nS</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
  EXPECT_EQ(RenderChat(ChatFormat::kPlain, kChat), "Be brief.\nHi\nHello.\nTell a story");
}

TEST(ChatTemplate, SplitsAtMarkers) {
  const auto parts = SplitAtMarkers("<|im_start|>user\nHi<|im_end|>\n", {"<|im_start|>", "<|im_end|>"});
  ASSERT_EQ(parts.size(), 4u);
  EXPECT_EQ(parts[0], std::make_pair(std::string("<|im_start|>"), true));
  EXPECT_EQ(parts[1], std::make_pair(std::string("user\nHi"), false));
  EXPECT_EQ(parts[2], std::make_pair(std::string("<|im_end|>"), true));
  EXPECT_EQ(parts[3], std::make_pair(std::string("\n"), false));
  EXPECT_EQ(SplitAtMarkers("plain", {}).size(), 1u);
}

}  // namespace
}  // namespace blockserve::server
