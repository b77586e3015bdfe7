#pragma once
// Chat templates assembled from token ids: control tokens come from the template only, and the
// text between them is encoded with special-token parsing off, so "<|im_end|>" typed inside a
// message stays text. Loss mask: only assistant content and its end-of-turn token are trained.
//
//   ChatML (Qwen):  <|im_start|>role\ncontent<|im_end|>\n ...  (a system turn with
//                   default_system_prompt is prepended when the first message is not a system
//                   message and the default is non-empty, as Qwen2's template does)
//   Llama-3:        <|begin_of_text|><|start_header_id|>role<|end_header_id|>\n\ncontent<|eot_id|> ...
//
// Content is used as given (Llama-3's official template trims it; we do not).
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "lrsa/data/tokenizer.h"

namespace lrsa::data {

constexpr int32_t kIgnoreLabel = -100;

// One training sample: labels aligned with input_ids (labels[i] = input_ids[i] where position i
// is trained, kIgnoreLabel elsewhere); the model shifts them to next-token targets.
struct TokenizedSample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
};

enum class ChatFormat { ChatML, Llama3 };

// "chatml" | "llama3"; throws on anything else.
ChatFormat chat_format_from_name(std::string_view name);
// ChatML if the tokenizer has <|im_start|>/<|im_end|>, Llama-3 if it has <|start_header_id|>.
std::optional<ChatFormat> detect_chat_format(const Tokenizer& tokenizer);

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or another role name (never trained)
  std::string content;
};

class ChatTemplate {
 public:
  // Looks up the format's control tokens; throws when the tokenizer lacks one.
  ChatTemplate(const Tokenizer& tokenizer, ChatFormat format,
               std::string default_system_prompt = "You are a helpful assistant.");

  // The whole conversation; trained: assistant content and the end-of-turn token after it.
  TokenizedSample render(std::span<const ChatMessage> messages) const;
  // For generation: the conversation followed by an open assistant header.
  std::vector<int32_t> render_prompt(std::span<const ChatMessage> messages) const;

  ChatFormat format() const { return format_; }
  int32_t end_of_turn() const { return end_of_turn_; }  // <|im_end|> or <|eot_id|>

 private:
  TokenizedSample render_turns(std::span<const ChatMessage> messages) const;
  void append_turn(const ChatMessage& message, TokenizedSample& out) const;
  void append_header(std::string_view role, TokenizedSample& out) const;

  const Tokenizer& tokenizer_;
  ChatFormat format_;
  std::string default_system_prompt_;
  int32_t begin_of_text_ = -1, start_header_ = -1, end_header_ = -1, end_of_turn_ = -1;
};

}  // namespace lrsa::data
