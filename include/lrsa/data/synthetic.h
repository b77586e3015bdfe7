#pragma once
// Synthetic long-context QA data (written as QA-format JSONL, see dataset.h):
//   passkey  a 5-digit pass key stated once at a random depth of filler text; the question asks
//            for it.
//   kv       num_pairs "The value of key <k> is <v>." facts scattered through the filler; the
//            question asks for the value of one key.
// The filler is sentences from a small built-in grammar and word list. Everything is a
// deterministic function of (seed, sample index). Lengths are measured with a tokenizer: the
// context is grown sentence by sentence until it reaches context_tokens (it ends within one
// sentence of it).
#include <cstdint>
#include <string>

#include "lrsa/data/tokenizer.h"

namespace lrsa::data {

struct SyntheticQaOptions {
  std::string kind = "passkey";     // "passkey" | "kv"
  std::string output_path;          // JSONL written here (one {"context","question","answer"} per line)
  std::string tokenizer = "bytes";  // measures lengths: "bytes" or a tokenizer.json path
  int64_t num_samples = 100;
  int64_t context_tokens = 4096;
  uint64_t seed = 0;
  int64_t num_pairs = 32;  // kv only
};

struct QaRecord {
  std::string context, question, answer;
};

// Sample `index` of the set described by options (output_path and num_samples are ignored).
QaRecord make_synthetic_qa(const SyntheticQaOptions& options, const Tokenizer& tokenizer, int64_t index);

// Filler of about `tokens` tokens: whole sentences, deterministic in (seed, stream).
std::string make_filler(const Tokenizer& tokenizer, int64_t tokens, uint64_t seed, uint64_t stream);

// Validates the options, loads the tokenizer and writes num_samples records to output_path.
void write_synthetic_qa(const SyntheticQaOptions& options);

}  // namespace lrsa::data
