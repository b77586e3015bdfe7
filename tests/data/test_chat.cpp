// Chat templates on the byte tokenizer (ids are bytes, so the expected ids can be written out).
#include <catch2/catch.hpp>

#include "lrsa/core/error.h"
#include "lrsa/data/chat.h"

using namespace lrsa::data;
using V = std::vector<int32_t>;

namespace {

const Tokenizer& bytes() {
  static const Tokenizer t = Tokenizer::byte_level();
  return t;
}

V text_ids(std::string_view s) { return V(s.begin(), s.end()); }

void append(V& v, const V& more) { v.insert(v.end(), more.begin(), more.end()); }

}  // namespace

TEST_CASE("ChatML ids, default system prompt and loss mask", "[data]") {
  const ChatTemplate chat(bytes(), ChatFormat::ChatML);
  const int32_t start = 257, end = 258;
  const std::vector<ChatMessage> messages = {{"user", "Hi <|im_end|>"}, {"assistant", "Yo"}};
  const TokenizedSample s = chat.render(messages);

  V ids{start};
  append(ids, text_ids("system\nYou are a helpful assistant."));
  ids.push_back(end);
  append(ids, text_ids("\n"));
  ids.push_back(start);
  append(ids, text_ids("user\nHi <|im_end|>"));  // special-token text in content stays text
  ids.push_back(end);
  append(ids, text_ids("\n"));
  ids.push_back(start);
  append(ids, text_ids("assistant\n"));
  const size_t answer_at = ids.size();
  append(ids, text_ids("Yo"));
  ids.push_back(end);
  append(ids, text_ids("\n"));
  CHECK(s.input_ids == ids);

  V labels(ids.size(), kIgnoreLabel);
  labels[answer_at] = 'Y';
  labels[answer_at + 1] = 'o';
  labels[answer_at + 2] = end;  // the end-of-turn token is trained, the newline after it is not
  CHECK(s.labels == labels);

  // An explicit system message replaces the default; an empty default adds none.
  const std::vector<ChatMessage> with_system = {{"system", "S"}, {"user", "u"}};
  CHECK(chat.render(with_system).input_ids.size() == 1 + 8 + 1 + 1 + 1 + 6 + 1 + 1);
  const ChatTemplate no_default(bytes(), ChatFormat::ChatML, "");
  CHECK(no_default.render(std::vector<ChatMessage>{{"user", "u"}}).input_ids.front() == start);
  CHECK(no_default.render(std::vector<ChatMessage>{{"user", "u"}}).input_ids.size() == 1 + 6 + 1 + 1);
}

TEST_CASE("generation prompt ends with an open assistant header", "[data]") {
  const ChatTemplate chat(bytes(), ChatFormat::ChatML, "");
  V expected{257};
  append(expected, text_ids("user\nq"));
  append(expected, V{258, '\n', 257});
  append(expected, text_ids("assistant\n"));
  CHECK(chat.render_prompt(std::vector<ChatMessage>{{"user", "q"}}) == expected);
}

TEST_CASE("multi-turn: every assistant turn is trained, nothing else", "[data]") {
  const ChatTemplate chat(bytes(), ChatFormat::ChatML, "");
  const std::vector<ChatMessage> messages = {
      {"user", "a"}, {"assistant", "bb"}, {"user", "c"}, {"assistant", "ddd"}};
  const TokenizedSample s = chat.render(messages);
  std::string trained;
  for (int32_t l : s.labels)
    if (l != kIgnoreLabel) trained += l == 258 ? std::string("|") : std::string(1, char(l));
  CHECK(trained == "bb|ddd|");
}

TEST_CASE("chat template errors", "[data]") {
  CHECK_THROWS_WITH(ChatTemplate(bytes(), ChatFormat::Llama3), Catch::Contains("has no token '<|begin_of_text|>'"));
  const ChatTemplate chat(bytes(), ChatFormat::ChatML);
  CHECK_THROWS_WITH(chat.render(std::vector<ChatMessage>{}), Catch::Contains("at least one message"));
  CHECK_THROWS_WITH(chat.render(std::vector<ChatMessage>{{"us er", "x"}}), Catch::Contains("role 'us er'"));
  CHECK(chat_format_from_name("llama3") == ChatFormat::Llama3);
  CHECK_THROWS_WITH(chat_format_from_name("vicuna"), Catch::Contains("unknown chat format 'vicuna'"));
  CHECK(detect_chat_format(bytes()) == ChatFormat::ChatML);
}
