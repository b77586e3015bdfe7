// Exact agreement with HF `tokenizers` on the real Qwen3 and Llama-3 tokenizers (goldens made by
// scripts/fixtures/make_tokenizer_goldens.py). Skipped, with the reason, without ../shared.
#include <catch2/catch.hpp>

#include <chrono>

#include "data/unicode.h"
#include "lrsa/data/chat.h"
#include "shared_tokenizers.h"

using namespace lrsa;
using namespace lrsa::data;
using lrsa::test::shared_tokenizer;
using lrsa::test::tokenizer_goldens;

namespace {
std::vector<int32_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int32_t>>(); }
const char* kNames[] = {"qwen3", "llama3"};
}  // namespace

TEST_CASE("real tokenizers load fast and expose their special tokens", "[data]") {
  const auto t0 = std::chrono::steady_clock::now();
  const Tokenizer& qwen = shared_tokenizer("qwen3");
  const Tokenizer& llama = shared_tokenizer("llama3");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  WARN("loading both tokenizer.json files took " << seconds << " s");
  CHECK(qwen.vocab_size() == 151669);
  CHECK(llama.vocab_size() == 128256);
  CHECK(qwen.token_id("<|im_end|>") == 151645);
  CHECK(qwen.is_special(151645));
  CHECK_FALSE(qwen.is_special(qwen.token_id("<think>")));  // Qwen3's added but non-special tokens
  CHECK(llama.token_id("<|eot_id|>") == 128009);
  CHECK(detect_chat_format(qwen) == ChatFormat::ChatML);
  CHECK(detect_chat_format(llama) == ChatFormat::Llama3);
  CHECK_THROWS_WITH(qwen.token_id("<|nope|>"), Catch::Contains("has no token '<|nope|>'"));
  CHECK_THROWS_WITH(qwen.decode(std::vector<int32_t>{200000}), Catch::Contains("unknown token id 200000"));
}

TEST_CASE("encode matches HF tokenizers exactly, with and without special-token parsing", "[data]") {
  for (const char* name : kNames) {
    const Tokenizer& tok = shared_tokenizer(name);
    for (const auto& c : tokenizer_goldens()["tokenizers"][name]["cases"]) {
      const std::string text = c["text"];
      INFO(name << " text: " << nlohmann::json(text).dump());
      CHECK(tok.encode(text) == ids_of(c["ids"]));
      CHECK(tok.encode(text, /*parse_special=*/false) == ids_of(c["ids_no_special"]));
    }
  }
}

TEST_CASE("decode matches HF and round-trips (NFC for Qwen)", "[data]") {
  for (const char* name : kNames) {
    const Tokenizer& tok = shared_tokenizer(name);
    const bool nfc = std::string(name) == "qwen3";
    for (const auto& c : tokenizer_goldens()["tokenizers"][name]["cases"]) {
      const std::string text = c["text"];
      INFO(name << " text: " << nlohmann::json(text).dump());
      CHECK(tok.decode(ids_of(c["ids"])) == c["decoded"].get<std::string>());
      CHECK(tok.decode(tok.encode(text)) == (nfc ? unicode::nfc(text) : text));
      CHECK(tok.decode(tok.encode(text, false)) == (nfc ? unicode::nfc(text) : text));
    }
    // Prefixes cut inside a character decode like HF: the text before it plus U+FFFD.
    for (const auto& p : tokenizer_goldens()["tokenizers"][name]["prefix_decodes"]) {
      const std::vector<int32_t> ids = ids_of(p["ids"]);
      for (size_t k = 1; k <= ids.size(); ++k)
        CHECK(tok.decode(std::span(ids).first(k)) == p["decoded_prefixes"][k - 1].get<std::string>());
    }
  }
}

TEST_CASE("stream decoding never emits a partial character", "[data]") {
  const Tokenizer& tok = shared_tokenizer("qwen3");
  for (const auto& p : tokenizer_goldens()["tokenizers"]["qwen3"]["prefix_decodes"]) {
    const std::vector<int32_t> ids = ids_of(p["ids"]);
    StreamDecoder stream(tok);
    std::string text;
    for (int32_t id : ids) {
      const std::string piece = stream.push(id);
      CHECK(piece.find("\xEF\xBF\xBD") == std::string::npos);
      text += piece;
    }
    text += stream.finish();
    CHECK(text == tok.decode(ids));
  }
  StreamDecoder cut(tok);
  const std::vector<int32_t> emoji = tok.encode("\xF0\x9F\xAB\xA8");  // U+1FAE8: not in the vocab, 3 tokens
  REQUIRE(emoji.size() > 1);
  CHECK(cut.push(emoji[0]).empty());
  CHECK(cut.finish() == "\xEF\xBF\xBD");
}

TEST_CASE("chat templates assembled from ids match HF", "[data]") {
  for (const char* name : kNames) {
    const Tokenizer& tok = shared_tokenizer(name);
    const ChatTemplate chat(tok, *detect_chat_format(tok));
    for (const auto& c : tokenizer_goldens()["tokenizers"][name]["chats"]) {
      std::vector<ChatMessage> messages;
      for (const auto& m : c["messages"]) messages.push_back({m["role"], m["content"]});
      INFO(name << " chat: " << c["messages"].dump());
      const TokenizedSample s = chat.render(messages);
      CHECK(s.input_ids == ids_of(c["ids"]));
      // Each run of trained tokens is one assistant content and its end-of-turn token; it may
      // start with newlines of the role line that share a token with the content's whitespace.
      std::vector<std::string> runs;
      for (size_t i = 0; i < s.labels.size(); ++i) {
        if (s.labels[i] == kIgnoreLabel) continue;
        CHECK(s.labels[i] == s.input_ids[i]);
        if (i == 0 || s.labels[i - 1] == kIgnoreLabel) runs.emplace_back();
        runs.back() += tok.token_bytes(s.labels[i]);
      }
      std::vector<std::string> answers;
      for (const ChatMessage& m : messages)
        if (m.role == "assistant") answers.push_back(m.content + std::string(tok.token_bytes(chat.end_of_turn())));
      REQUIRE(runs.size() == answers.size());
      for (size_t r = 0; r < runs.size(); ++r) {
        REQUIRE(runs[r].size() >= answers[r].size());
        const size_t extra = runs[r].size() - answers[r].size();
        CHECK(runs[r].substr(extra) == answers[r]);
        CHECK(runs[r].substr(0, extra) == std::string(extra, '\n'));
      }
    }
  }
}
