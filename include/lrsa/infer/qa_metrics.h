#pragma once
// QA answer metrics (SQuAD conventions; docs/inference.md). Answers are compared after
// normalize_answer: ASCII lowercase, ASCII punctuation removed, the articles a/an/the removed as
// words, whitespace runs collapsed to one space, trimmed. Each metric takes the best match over
// the reference answers.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace lrsa::infer {

std::string normalize_answer(std::string_view text);
std::vector<std::string> answer_tokens(std::string_view text);  // normalized, split on spaces

// 1 when the normalized prediction equals a normalized reference.
double exact_match(std::string_view prediction, const std::vector<std::string>& references);
// Token F1 (multiset overlap of normalized tokens); 1 when both are empty, 0 when one is.
double token_f1(std::string_view prediction, const std::vector<std::string>& references);
// 1 when a normalized reference occurs in the normalized prediction (a non-empty one).
double substring_recall(std::string_view prediction, const std::vector<std::string>& references);

struct QaScores {
  double exact_match = 0, f1 = 0, recall = 0;  // sums; mean() divides by samples
  int64_t samples = 0;
  void add(std::string_view prediction, const std::vector<std::string>& references);
  QaScores mean() const;
};

}  // namespace lrsa::infer
