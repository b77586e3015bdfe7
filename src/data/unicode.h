#pragma once
// Unicode support for the tokenizer: UTF-8 decoding that tolerates invalid bytes, the character
// classes of the pre-tokenizer regexes, and NFC normalization. The tables
// (src/data/unicode_tables.cpp, made by scripts/fixtures/make_unicode_tables.py) reproduce HF
// tokenizers: classes from Unicode 16.0 (its Oniguruma), NFC with the older Unicode data of its
// normalizer (combining marks added after about Unicode 9.0 are neither reordered nor composed).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace lrsa::data::unicode {

// Pre-tokenizer classes: [^\s\p{L}\p{N}], \p{L}, \p{N}, \s (Oniguruma's Unicode \s).
enum CharClass : uint8_t { kOther = 0, kLetter = 1, kNumber = 2, kSpace = 3 };

struct PropRun { uint32_t start; uint8_t props; };
struct CccRun { uint32_t start; uint8_t ccc; };
struct Decomposition { uint32_t cp, first, second; };
struct Composition { uint32_t first, second, composite; };

extern const PropRun kPropRuns[];
extern const size_t kPropRunCount;
extern const CccRun kCccRuns[];
extern const size_t kCccRunCount;
extern const Decomposition kDecompositions[];
extern const size_t kDecompositionCount;
extern const Composition kCompositions[];
extern const size_t kCompositionCount;

// An invalid UTF-8 byte decodes to this value (outside Unicode) with length 1; it is class
// kOther and NFC-stable, so invalid input passes through the tokenizer byte for byte.
constexpr uint32_t kInvalid = 0x110000;

// Decodes one code point at p (p < end); sets `len` to the bytes consumed (1..4). Overlong
// forms, surrogates and truncated sequences are invalid.
uint32_t decode_utf8(const unsigned char* p, const unsigned char* end, int& len);
void append_utf8(std::string& out, uint32_t cp);

// Bits 0-1: CharClass; bit 2: the character may change under NFC.
uint8_t props(uint32_t cp);
inline CharClass char_class(uint32_t cp) { return CharClass(props(cp) & 3); }

uint8_t combining_class(uint32_t cp);

// NFC (canonical decomposition, canonical ordering, canonical composition), applied only to
// the stretches around characters that may change; everything else is copied as is.
std::string nfc(std::string_view text);
// True when every character is NFC-safe (then nfc(text) == text).
bool is_nfc_quick(std::string_view text);

// Replaces every maximal invalid subsequence with U+FFFD (the WHATWG / Python errors="replace"
// policy, which is also Rust's String::from_utf8_lossy and so HF tokenizers' decode).
std::string utf8_lossy(std::string_view bytes);

}  // namespace lrsa::data::unicode
