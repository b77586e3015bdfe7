// Tokenizer behaviour that needs no real tokenizer files: the built-in byte tokenizer, and tiny
// hand-made tokenizer.json files (both merge serializations, ignore_merges, added tokens, errors).
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>
#include <thread>

#include "lrsa/core/error.h"
#include "lrsa/data/tokenizer.h"

using namespace lrsa::data;
using V = std::vector<int32_t>;

namespace {

// GPT-2 byte-level characters for the printable ASCII used below stand for themselves; a space
// is U+0120 ("Ġ").
const std::string kSpace = "\xC4\xA0";

// A byte-level BPE over the 256 byte tokens (ids = byte values) plus merged tokens:
// 256 "ab", 257 "abc", 258 " a" (byte-level "Ġa"), 259 "aa", 260 "aaaa"; merges in rank order.
nlohmann::json tiny_tokenizer(bool pair_merges, bool ignore_merges, const std::string& regex) {
  nlohmann::json vocab = nlohmann::json::object();
  auto byte_char = [](int b) {
    // Printable bytes map to themselves; the 68 others to U+0100 onwards in byte order.
    int next = 256;
    for (int x = 0; x < 256; ++x) {
      const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
      const int cp = printable ? x : next++;
      if (x == b) {
        std::string s;
        if (cp < 0x80) s += char(cp);
        else { s += char(0xC0 | (cp >> 6)); s += char(0x80 | (cp & 0x3F)); }
        return s;
      }
    }
    return std::string();
  };
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  vocab["ab"] = 256;
  vocab["abc"] = 257;
  vocab[kSpace + "a"] = 258;
  vocab["aa"] = 259;
  vocab["aaaa"] = 260;
  vocab["bcd"] = 261;  // reachable only as a whole word under ignore_merges (no merge builds it)
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "b"}, {"ab", "c"}, {kSpace, "a"}, {"a", "a"}, {"aa", "aa"}};
  nlohmann::json m = nlohmann::json::array();
  for (const auto& [l, r] : merges) m.push_back(pair_merges ? nlohmann::json{l, r} : nlohmann::json(l + " " + r));
  return {
      {"added_tokens",
       {{{"id", 262}, {"content", "<|end|>"}, {"special", true}, {"normalized", false}},
        {{"id", 263}, {"content", "<tag>"}, {"special", false}, {"normalized", false}},
        {{"id", 264}, {"content", "<n>"}, {"special", false}, {"normalized", true}}}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}}}}},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model", {{"type", "BPE"}, {"ignore_merges", ignore_merges}, {"vocab", vocab}, {"merges", m}}}};
}

const std::string kQwenRegex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Tokenizer tiny(bool pair_merges, bool ignore_merges = false) {
  return Tokenizer::from_json_text(tiny_tokenizer(pair_merges, ignore_merges, kQwenRegex).dump(), "tiny.json");
}

}  // namespace

TEST_CASE("byte tokenizer: bytes and ChatML specials", "[data]") {
  const Tokenizer t = Tokenizer::byte_level();
  CHECK(t.vocab_size() == 259);
  CHECK(t.encode("hi\xFF") == V{'h', 'i', 0xFF});
  CHECK(t.encode("a<|im_end|>b") == V{'a', 258, 'b'});
  CHECK(t.encode("a<|im_end|>b", false).size() == 12);
  CHECK(t.token_id("<|im_start|>") == 257);
  CHECK(t.is_special(256));
  CHECK_FALSE(t.is_special('a'));
  CHECK(t.decode(V{'a', 258, 'b'}) == "a<|im_end|>b");
  CHECK(t.decode(V{'a', 258, 'b'}, /*skip_special=*/true) == "ab");
  CHECK(t.decode(V{0xC3}) == "\xEF\xBF\xBD");  // half a character: U+FFFD
  CHECK(Tokenizer::load("bytes").vocab_size() == 259);
}

TEST_CASE("BPE merges by rank, leftmost first, with either merge serialization", "[data]") {
  for (bool pairs : {false, true}) {
    const Tokenizer t = tiny(pairs);
    INFO("pair merges: " << pairs);
    CHECK(t.encode("abc") == V{257});
    CHECK(t.encode("abd") == V{256, 'd'});
    CHECK(t.encode("aaa") == V{259, 'a'});          // equal ranks: the leftmost pair merges first
    CHECK(t.encode("aaaaa") == V{260, 'a'});        // aa+aa (rank 4) after both a+a (rank 3)
    CHECK(t.encode("x abc") == V{'x', ' ', 257});  // "ab" (rank 0) beats " a" (rank 2)
    CHECK(t.encode("x ac") == V{'x', 258, 'c'});
    CHECK(t.encode("bcd") == V{'b', 'c', 'd'});     // in the vocab, but merges cannot build it
    CHECK(t.encode("a<|end|>b<tag>") == V{'a', 262, 'b', 263});
    CHECK(t.encode("a<|end|>b<tag>", false) == V{'a', '<', '|', 'e', 'n', 'd', '|', '>', 'b', 263});
    CHECK(t.encode("x<n>abc<|end|>") == V{'x', 264, 257, 262});  // matched after normalization
    CHECK(t.vocab_size() == 265);
    CHECK(t.decode(t.encode("x aaaaa abc")) == "x aaaaa abc");
  }
}

TEST_CASE("ignore_merges emits a word that is in the vocabulary whole", "[data]") {
  const Tokenizer t = tiny(false, /*ignore_merges=*/true);
  CHECK(t.encode("bcd") == V{261});
  CHECK(t.encode("aaa") == V{259, 'a'});
}

TEST_CASE("the word cache gives the same ids as a fresh merge, across threads", "[data]") {
  const Tokenizer t = tiny(true);
  const V first = t.encode("abc aaaaa abc aaaaa");
  std::vector<V> results(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&, i] {
      for (int r = 0; r < 200; ++r) results[size_t(i)] = t.encode("abc aaaaa abc aaaaa");
    });
  for (auto& th : threads) th.join();
  for (const V& r : results) CHECK(r == first);
}

TEST_CASE("unsupported or broken tokenizer.json files are rejected with the reason", "[data]") {
  auto with = [](auto edit) {
    nlohmann::json j = tiny_tokenizer(false, false, kQwenRegex);
    edit(j);
    return j.dump();
  };
  CHECK_THROWS_WITH(Tokenizer::from_json_text("{", "bad.json"), Catch::Contains("bad.json") && Catch::Contains("invalid JSON"));
  CHECK_THROWS_WITH(Tokenizer::from_json_text(with([](auto& j) { j["model"]["type"] = "WordPiece"; }), "t.json"),
                    Catch::Contains("unsupported model.type"));
  CHECK_THROWS_WITH(Tokenizer::from_json_text(with([](auto& j) { j["normalizer"] = {{"type", "NFKC"}}; }), "t.json"),
                    Catch::Contains("unsupported normalizer"));
  CHECK_THROWS_WITH(Tokenizer::from_json_text(
                        tiny_tokenizer(false, false, R"('s|'t| ?\p{L}+| ?\p{N}+|\s+)").dump(), "t.json"),
                    Catch::Contains("unsupported pre_tokenizer split pattern"));
  CHECK_THROWS_WITH(Tokenizer::from_json_text(with([](auto& j) { j["model"]["merges"].push_back("ab zz"); }), "t.json"),
                    Catch::Contains("model.merges[5] uses 'zz', which is not in the vocab"));
  CHECK_THROWS_WITH(Tokenizer::from_json_text(with([](auto& j) { j["model"]["merges"].push_back("abc"); }), "t.json"),
                    Catch::Contains("model.merges[5] 'abc' is not two tokens"));
  CHECK_THROWS_WITH(
      Tokenizer::from_json_text(with([](auto& j) { j["added_tokens"][0]["lstrip"] = true; }), "t.json"),
      Catch::Contains("unsupported added token '<|end|>' flag"));
  CHECK_THROWS_WITH(Tokenizer::from_file("/nonexistent/tokenizer.json"), Catch::Contains("cannot open"));
}
