#include <catch2/catch.hpp>

#include "data/pretokenize.h"
#include "data/unicode.h"

using namespace lrsa::data;

TEST_CASE("utf8 decoding follows the maximal-subpart rule", "[data]") {
  CHECK(unicode::utf8_lossy("a\xC3\xA9z") == "a\xC3\xA9z");
  CHECK(unicode::utf8_lossy("\xF0\x9F\x98") == "\xEF\xBF\xBD");                    // truncated emoji: one U+FFFD
  CHECK(unicode::utf8_lossy("\xE0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD");            // E0 needs A0..BF next
  CHECK(unicode::utf8_lossy("\xED\xA0\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
  CHECK(unicode::utf8_lossy("\xC0\xAF") == "\xEF\xBF\xBD\xEF\xBF\xBD");            // overlong
  CHECK(unicode::utf8_lossy("\xF4\x90\x80\x80") == "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST_CASE("character classes match the regex definitions", "[data]") {
  CHECK(unicode::char_class('a') == unicode::kLetter);
  CHECK(unicode::char_class(0x4E2D) == unicode::kLetter);   // 中
  CHECK(unicode::char_class(0x1D400) == unicode::kLetter);  // mathematical bold A (outside the BMP)
  CHECK(unicode::char_class('7') == unicode::kNumber);
  CHECK(unicode::char_class(0x00BD) == unicode::kNumber);  // ½ (No)
  CHECK(unicode::char_class(0x216B) == unicode::kNumber);  // Ⅻ (Nl)
  CHECK(unicode::char_class(0x00A0) == unicode::kSpace);
  CHECK(unicode::char_class(0x3000) == unicode::kSpace);
  CHECK(unicode::char_class(0x0085) == unicode::kSpace);
  CHECK(unicode::char_class(0x001C) == unicode::kOther);  // Python's isspace() says yes; \s does not
  CHECK(unicode::char_class(0x0301) == unicode::kOther);  // combining acute (Mn)
  CHECK(unicode::char_class(0x1F600) == unicode::kOther);
  CHECK(unicode::char_class(0x14256) == unicode::kLetter);  // Egyptian hieroglyph, new in Unicode 16.0
}

TEST_CASE("nfc composes, reorders and leaves normalized text alone", "[data]") {
  CHECK(unicode::nfc("e\xCC\x81") == "\xC3\xA9");                 // e + U+0301 -> é
  CHECK(unicode::nfc("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB") == "\xED\x95\x9C");  // Hangul L V T -> 한
  CHECK(unicode::nfc("\xE2\x84\xAB") == "\xC3\x85");              // Ångström sign (singleton) -> Å
  // a + dot below (220) + acute (230) in the wrong order: reordered, then composed with a.
  CHECK(unicode::nfc("a\xCC\x81\xCC\xA3") == unicode::nfc("a\xCC\xA3\xCC\x81"));
  CHECK(unicode::nfc("a\xCC\xA3\xCC\x81") == "\xE1\xBA\xA1\xCC\x81");  // ạ + acute
  CHECK(unicode::nfc("\xEF\xAC\x81") == "\xEF\xAC\x81");          // ﬁ: compatibility only, untouched
  CHECK(unicode::nfc("\xE0\xA5\x98") == "\xE0\xA4\x95\xE0\xA4\xBC");  // excluded composite stays decomposed
  CHECK(unicode::nfc("x\xFF" "e\xCC\x81") == "x\xFF\xC3\xA9");    // invalid bytes pass through
  // As in HF tokenizers, a mark newer than its normalizer's data (U+1AC6, class 230 since
  // Unicode 14) is not moved behind a following U+0339 (class 220).
  CHECK(unicode::combining_class(0x1AC6) == 0);
  CHECK(unicode::combining_class(0x0339) == 220);
  CHECK(unicode::nfc("a\xE1\xAB\x86\xCC\xB9") == "a\xE1\xAB\x86\xCC\xB9");
  CHECK(unicode::is_nfc_quick("plain ascii, caf\xC3\xA9"));
  CHECK_FALSE(unicode::is_nfc_quick("e\xCC\x81"));
}

namespace {
std::vector<std::string> split(std::string_view text, PreTokenizer kind) {
  std::vector<std::string> pieces;
  pretokenize(text, kind, [&](std::string_view p) { pieces.emplace_back(p); });
  return pieces;
}
}  // namespace

TEST_CASE("pre-tokenizer pieces follow the regex alternatives", "[data]") {
  using V = std::vector<std::string>;
  CHECK(split("Hello world", PreTokenizer::Qwen2) == V{"Hello", " world"});
  CHECK(split("I'm don'T it's", PreTokenizer::Qwen2) == V{"I", "'m", " don", "'T", " it", "'s"});
  CHECK(split("12345", PreTokenizer::Qwen2) == V{"1", "2", "3", "4", "5"});
  CHECK(split("12345", PreTokenizer::Llama3) == V{"123", "45"});
  CHECK(split("a  b", PreTokenizer::Qwen2) == V{"a", " ", " b"});
  CHECK(split("a \n\n b", PreTokenizer::Qwen2) == V{"a", " \n\n", " b"});
  CHECK(split("x   ", PreTokenizer::Qwen2) == V{"x", "   "});
  CHECK(split(" 42", PreTokenizer::Qwen2) == V{" ", "4", "2"});
  CHECK(split("(ok)!!\n\nyes", PreTokenizer::Qwen2) == V{"(ok", ")!!\n\n", "yes"});
  CHECK(split("\"quote", PreTokenizer::Qwen2) == V{"\"quote"});
  CHECK(split("\n\nword", PreTokenizer::Qwen2) == V{"\n\n", "word"});
}
