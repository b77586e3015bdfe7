#include "data/pretokenize.h"

#include <array>

#include "data/unicode.h"

namespace lrsa::data {

namespace {

using unicode::CharClass;

struct Char {
  uint32_t cp;
  CharClass cls;
  int len;
};

const std::array<CharClass, 128>& ascii_classes() {
  static const std::array<CharClass, 128> table = [] {
    std::array<CharClass, 128> t{};
    for (uint32_t c = 0; c < 128; ++c) t[c] = unicode::char_class(c);
    return t;
  }();
  return table;
}

// The character at p (p < end); ASCII without a table lookup beyond 128 entries.
inline Char char_at(const unsigned char* p, const unsigned char* end) {
  if (*p < 0x80) return {*p, ascii_classes()[*p], 1};
  int len;
  const uint32_t cp = unicode::decode_utf8(p, end, len);
  return {cp, unicode::char_class(cp), len};
}

inline bool is_newline(uint32_t cp) { return cp == '\r' || cp == '\n'; }

// End of the run of characters of class `cls` starting at p, stopping after max_chars.
const unsigned char* class_run_end(const unsigned char* p, const unsigned char* end, CharClass cls,
                                   size_t max_chars = SIZE_MAX) {
  for (size_t n = 0; p < end && n < max_chars; ++n) {
    const Char c = char_at(p, end);
    if (c.cls != cls) break;
    p += c.len;
  }
  return p;
}

// (?i:'s|'t|'re|'ve|'m|'ll|'d): ASCII case folding only (Oniguruma does not fold U+017F here).
size_t contraction_length(const unsigned char* s, const unsigned char* end) {
  if (s[0] != '\'' || end - s < 2) return 0;
  auto lower_letter = [](unsigned char c) -> int {
    const int l = c | 0x20;  // ASCII letters fold to lower case; nothing else lands in a-z
    return l >= 'a' && l <= 'z' ? l : 0;
  };
  const int a = lower_letter(s[1]);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
  if (end - s < 3) return 0;
  const int b = lower_letter(s[2]);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
  return 0;
}

}  // namespace

size_t pretoken_length(std::string_view text, PreTokenizer kind) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = s + text.size();
  if (const size_t n = contraction_length(s, end)) return n;

  const Char c0 = char_at(s, end);
  const unsigned char* after0 = s + c0.len;
  const Char c1 = after0 < end ? char_at(after0, end) : Char{0, unicode::kOther, 0};
  const bool has_c1 = after0 < end;

  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (c0.cls == unicode::kLetter) return size_t(class_run_end(s, end, unicode::kLetter) - s);
  if (c0.cls != unicode::kNumber && !is_newline(c0.cp) && has_c1 && c1.cls == unicode::kLetter)
    return size_t(class_run_end(after0, end, unicode::kLetter) - s);

  // \p{N}{1,D}
  if (c0.cls == unicode::kNumber)
    return size_t(class_run_end(s, end, unicode::kNumber, kind == PreTokenizer::Llama3 ? 3 : 1) - s);

  //  ?[^\s\p{L}\p{N}]+[\r\n]*
  const unsigned char* punct = nullptr;
  if (c0.cp == ' ' && has_c1 && c1.cls == unicode::kOther) punct = after0;
  else if (c0.cls == unicode::kOther) punct = s;
  if (punct) {
    const unsigned char* p = class_run_end(punct, end, unicode::kOther);
    while (p < end && (*p == '\r' || *p == '\n')) ++p;
    return size_t(p - s);
  }

  // c0 is whitespace. \s*[\r\n]+ ends after the run's last newline; \s+(?!\S) takes the whole
  // run at the end of the text, else all but its last character; \s+ the single character.
  const unsigned char* p = s;
  const unsigned char* after_last_newline = nullptr;
  const unsigned char* last_char = s;
  size_t count = 0;
  while (p < end) {
    const Char c = char_at(p, end);
    if (c.cls != unicode::kSpace) break;
    if (is_newline(c.cp)) after_last_newline = p + c.len;
    last_char = p;
    p += c.len;
    ++count;
  }
  if (after_last_newline) return size_t(after_last_newline - s);
  if (p == end || count == 1) return size_t(p - s);
  return size_t(last_char - s);
}

}  // namespace lrsa::data
