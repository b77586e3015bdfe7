#pragma once
// JSONL datasets, tokenized at load time into documents (input_ids + aligned labels).
//
// Line formats (Auto picks per line by its keys):
//   chat    {"messages": [{"role": "user", "content": "..."}, ...]}     through the chat template
//   qa      {"context": "...", "question": "...", "answer": "..."}      prompt_template fills
//           {context} and {question}; as a chat (user: prompt, assistant: answer) or plain
//           (prompt, then " " + answer, then end-of-text; the answer and end-of-text trained)
//   tokens  {"input_ids": [...], "labels": [...]}  labels aligned with input_ids (-100 = not
//           trained; the model shifts), optional (then every position is trained)
//
// Over-long samples: a QA context is cut (at truncate_side) until the sample fits max_tokens;
// the question and answer are never cut. A sample still longer than max_tokens (any format) is
// split into chunks of max_tokens, each its own document. Samples without any trained token are
// dropped. All of it is counted in DatasetStats.
//
// Bad input: a malformed line or field throws lrsa::Error "path:line: problem"; with
// skip_bad_lines the line is counted and skipped instead. A dataset with no documents left is
// an error.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "lrsa/data/chat.h"
#include "lrsa/data/tokenizer.h"

namespace lrsa::data {

enum class DataFormat { Auto, Chat, Qa, Tokens };
enum class TruncateSide { Left, Right };  // Left drops the context's beginning, Right its end
enum class QaStyle { Chat, Plain };

DataFormat data_format_from_name(std::string_view name);      // auto | chat | qa | tokens
TruncateSide truncate_side_from_name(std::string_view name);  // left | right
QaStyle qa_style_from_name(std::string_view name);            // chat | plain

struct DatasetOptions {
  DataFormat format = DataFormat::Auto;
  int64_t max_tokens = 4096;  // longest document (normally the loader's max_seq_len)
  TruncateSide truncate_side = TruncateSide::Left;
  std::string prompt_template = "{context}\n\nQuestion: {question}\nAnswer:";
  QaStyle qa_style = QaStyle::Chat;
  std::optional<ChatFormat> chat_format;  // default: detected from the tokenizer's special tokens
  std::string default_system_prompt = "You are a helpful assistant.";  // ChatML only; "" = none
  bool skip_bad_lines = false;
};

struct DatasetStats {
  int64_t lines = 0;              // non-empty lines read
  int64_t bad_lines = 0;          // skipped (skip_bad_lines)
  int64_t truncated = 0;          // QA contexts cut to fit
  int64_t split = 0;              // samples split into several documents
  int64_t no_trained_tokens = 0;  // samples dropped: nothing to learn
  int64_t documents = 0;
  int64_t tokens = 0;
  int64_t trained_tokens = 0;          // labels != -100
  std::vector<std::string> bad_line_errors;  // the first few, "path:line: problem"
  std::string summary() const;
};

class Dataset {
 public:
  Dataset() = default;
  explicit Dataset(int64_t max_tokens) : max_tokens_(max_tokens) {}

  // Adds a sample, split into documents of at most max_tokens; false if it has no trained token.
  bool add(std::span<const int32_t> input_ids, std::span<const int32_t> labels);

  int64_t size() const { return int64_t(offsets_.size()) - 1; }  // documents
  int64_t length(int64_t doc) const { return offsets_[size_t(doc) + 1] - offsets_[size_t(doc)]; }
  std::span<const int32_t> input_ids(int64_t doc) const;
  std::span<const int32_t> labels(int64_t doc) const;
  int64_t max_tokens() const { return max_tokens_; }
  DatasetStats& stats() { return stats_; }
  const DatasetStats& stats() const { return stats_; }

 private:
  int64_t max_tokens_ = 0;
  std::vector<int32_t> ids_, labels_;
  std::vector<int64_t> offsets_{0};  // [documents + 1]
  DatasetStats stats_;
};

// Reads and tokenizes JSONL files (in order; lines are tokenized in parallel).
Dataset load_jsonl(const std::vector<std::string>& paths, const Tokenizer& tokenizer, const DatasetOptions& options);

// One QA sample rendered with the options' template and style, its context cut (at
// truncate_side) until it fits max_tokens; `truncated` tells whether it was cut. A sample whose
// question and answer alone exceed max_tokens comes back longer than max_tokens.
TokenizedSample render_qa(const Tokenizer& tokenizer, const DatasetOptions& options, std::string_view context,
                          std::string_view question, std::string_view answer, bool* truncated = nullptr);
// The prompt of a QA sample for generation (chat: ending in the open assistant header), its
// context cut so that the prompt plus `reserve` generated tokens fit max_tokens.
std::vector<int32_t> render_qa_prompt(const Tokenizer& tokenizer, const DatasetOptions& options,
                                      std::string_view context, std::string_view question, int64_t reserve);

}  // namespace lrsa::data
