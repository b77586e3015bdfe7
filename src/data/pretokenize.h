#pragma once
// The split regexes of the byte-level BPE tokenizers, implemented by hand:
//
//   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,D}| ?[^\s\p{L}\p{N}]+[\r\n]*|
//   \s*[\r\n]+|\s+(?!\S)|\s+
//
// with D = 1 (Qwen2/Qwen3) or D = 3 (Llama-3), under Oniguruma's leftmost-first alternation.
// Every character matches some alternative, so the pieces tile the text.
#include <cstddef>
#include <string_view>

namespace lrsa::data {

enum class PreTokenizer { None, Qwen2, Llama3 };

// Byte length of the piece that starts at text[0] (text non-empty).
size_t pretoken_length(std::string_view text, PreTokenizer kind);

// Calls emit(piece) for every piece of text, in order.
template <typename Emit>
void pretokenize(std::string_view text, PreTokenizer kind, Emit&& emit) {
  if (kind == PreTokenizer::None) {
    if (!text.empty()) emit(text);
    return;
  }
  while (!text.empty()) {
    const size_t n = pretoken_length(text, kind);
    emit(text.substr(0, n));
    text.remove_prefix(n);
  }
}

}  // namespace lrsa::data
