#pragma once
// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json, producing the same ids as HF
// `tokenizers` for the Qwen2/Qwen2.5/Qwen3 and Llama-3 tokenizers, plus a built-in byte
// tokenizer (256 bytes + ChatML special tokens) for from-scratch runs.
//
// Encoding: added tokens are cut out of the raw text first (leftmost-longest; special ones only
// when parse_special), each remaining piece is normalized (NFC for Qwen), split by the model's
// pre-tokenizer regex (implemented by hand: Qwen splits digits singly, Llama-3 in groups of 1-3)
// and every piece is BPE-merged by rank (Llama-3's ignore_merges: a piece that is itself in the
// vocabulary is emitted whole). Invalid UTF-8 in the input is tokenized byte for byte.
//
// Decoding: the tokens' bytes are concatenated and every maximal invalid UTF-8 subsequence is
// replaced by one U+FFFD (the policy of HF's decode). So decoding a prefix of ids that ends
// inside a multi-byte character yields the complete text before it plus one U+FFFD; use
// StreamDecoder to print text as ids arrive without ever emitting such a partial character.
//
// Thread safety: a Tokenizer is immutable after loading except for its word cache, which is
// guarded by a lock; encode/decode may be called from several threads at once.
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace lrsa::data {

class Tokenizer {
 public:
  // "bytes" (the built-in byte tokenizer) or the path of an HF tokenizer.json.
  static Tokenizer load(const std::string& spec);
  static Tokenizer from_file(const std::string& path);
  // `source` names the JSON in error messages (a path).
  static Tokenizer from_json_text(std::string_view json_text, const std::string& source);
  // Ids 0-255 are the bytes; 256 <|endoftext|>, 257 <|im_start|>, 258 <|im_end|> (special).
  static Tokenizer byte_level();

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // parse_special = false treats special-token text ("<|im_end|>") as plain text; non-special
  // added tokens (Qwen3's "<think>") are still matched, as in HF (encode_special_tokens).
  std::vector<int32_t> encode(std::string_view text, bool parse_special = true) const;
  void encode_append(std::string_view text, bool parse_special, std::vector<int32_t>& out) const;

  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;
  // The exact bytes of a token (an added token's content); throws for an unknown id.
  std::string_view token_bytes(int32_t id) const;

  // Id of an added/special token by its content ("<|im_end|>"), or of a vocabulary token by
  // its bytes; nullopt when absent. token_id throws an lrsa::Error naming the tokenizer instead.
  std::optional<int32_t> find_token(std::string_view text) const;
  int32_t token_id(std::string_view text) const;
  bool is_special(int32_t id) const;

  int64_t vocab_size() const;  // 1 + the largest id
  const std::string& source() const;

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Incremental decoding for printing generated text: push() returns the text that became
// complete, holding back the bytes of a character that is not finished yet (at most 3); a
// sequence that can no longer become valid is emitted as U+FFFD at once. finish() flushes what
// is held (as U+FFFD).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false)
      : tokenizer_(tokenizer), skip_special_(skip_special) {}
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  bool skip_special_;
  std::string pending_;
};

}  // namespace lrsa::data
