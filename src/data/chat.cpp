#include "lrsa/data/chat.h"

#include "lrsa/core/error.h"

namespace lrsa::data {

namespace {

// Appends the ids of `text` (special-token text stays text); the tokens that carry bytes beyond
// the first `header_bytes` (the role line) are trained when `trained`.
void append_text(const Tokenizer& tokenizer, std::string_view text, size_t header_bytes, bool trained,
                 TokenizedSample& out) {
  const size_t first = out.input_ids.size();
  tokenizer.encode_append(text, /*parse_special=*/false, out.input_ids);
  size_t end = 0;
  for (size_t i = first; i < out.input_ids.size(); ++i) {
    end += tokenizer.token_bytes(out.input_ids[i]).size();
    out.labels.push_back(trained && end > header_bytes ? out.input_ids[i] : kIgnoreLabel);
  }
}

void append_control(int32_t id, bool trained, TokenizedSample& out) {
  out.input_ids.push_back(id);
  out.labels.push_back(trained ? id : kIgnoreLabel);
}

// Roles are ASCII names, so the role line keeps its byte length under NFC and never merges
// with the content into one token except across the newline that ends it.
void check_role(std::string_view role) {
  LRSA_CHECK(!role.empty(), "chat: a message has an empty role");
  for (char c : role)
    LRSA_CHECK((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-',
               "chat: role '{}' must be ASCII letters, digits, '_' or '-'", role);
}

}  // namespace

ChatFormat chat_format_from_name(std::string_view name) {
  if (name == "chatml") return ChatFormat::ChatML;
  if (name == "llama3") return ChatFormat::Llama3;
  fail("chat: unknown chat format '{}' (expected chatml or llama3)", name);
}

std::optional<ChatFormat> detect_chat_format(const Tokenizer& tokenizer) {
  if (tokenizer.find_token("<|im_start|>") && tokenizer.find_token("<|im_end|>")) return ChatFormat::ChatML;
  if (tokenizer.find_token("<|start_header_id|>")) return ChatFormat::Llama3;
  return std::nullopt;
}

ChatTemplate::ChatTemplate(const Tokenizer& tokenizer, ChatFormat format, std::string default_system_prompt)
    : tokenizer_(tokenizer), format_(format), default_system_prompt_(std::move(default_system_prompt)) {
  if (format == ChatFormat::ChatML) {
    start_header_ = tokenizer.token_id("<|im_start|>");
    end_of_turn_ = tokenizer.token_id("<|im_end|>");
  } else {
    begin_of_text_ = tokenizer.token_id("<|begin_of_text|>");
    start_header_ = tokenizer.token_id("<|start_header_id|>");
    end_header_ = tokenizer.token_id("<|end_header_id|>");
    end_of_turn_ = tokenizer.token_id("<|eot_id|>");
  }
}

void ChatTemplate::append_header(std::string_view role, TokenizedSample& out) const {
  check_role(role);
  append_control(start_header_, false, out);
  if (format_ == ChatFormat::ChatML) {
    append_text(tokenizer_, std::string(role) + "\n", 0, false, out);
  } else {
    append_text(tokenizer_, role, 0, false, out);
    append_control(end_header_, false, out);
    append_text(tokenizer_, "\n\n", 0, false, out);
  }
}

void ChatTemplate::append_turn(const ChatMessage& message, TokenizedSample& out) const {
  check_role(message.role);
  const bool trained = message.role == "assistant";
  append_control(start_header_, false, out);
  // The role line and the content are one encoded text, as when the template is rendered to a
  // string and tokenized (a content that starts with whitespace may share a token with it).
  if (format_ == ChatFormat::ChatML) {
    append_text(tokenizer_, message.role + "\n" + message.content, message.role.size() + 1, trained, out);
    append_control(end_of_turn_, trained, out);
    append_text(tokenizer_, "\n", 0, false, out);
  } else {
    append_text(tokenizer_, message.role, 0, false, out);
    append_control(end_header_, false, out);
    append_text(tokenizer_, "\n\n" + message.content, 2, trained, out);
    append_control(end_of_turn_, trained, out);
  }
}

TokenizedSample ChatTemplate::render_turns(std::span<const ChatMessage> messages) const {
  TokenizedSample out;
  if (format_ == ChatFormat::Llama3) append_control(begin_of_text_, false, out);
  const bool has_system = !messages.empty() && messages.front().role == "system";
  if (format_ == ChatFormat::ChatML && !has_system && !default_system_prompt_.empty())
    append_turn(ChatMessage{"system", default_system_prompt_}, out);
  for (const ChatMessage& m : messages) append_turn(m, out);
  return out;
}

TokenizedSample ChatTemplate::render(std::span<const ChatMessage> messages) const {
  LRSA_CHECK(!messages.empty(), "chat: a conversation needs at least one message");
  return render_turns(messages);
}

std::vector<int32_t> ChatTemplate::render_prompt(std::span<const ChatMessage> messages) const {
  TokenizedSample out = render_turns(messages);
  append_header("assistant", out);
  return std::move(out.input_ids);
}

}  // namespace lrsa::data
