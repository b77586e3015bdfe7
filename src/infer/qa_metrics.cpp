#include "lrsa/infer/qa_metrics.h"

#include <algorithm>
#include <map>

namespace lrsa::infer {

namespace {
bool is_ascii_punct(char c) {
  return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') || (c >= '{' && c <= '~');
}
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }

template <typename Score>
double best_over(const std::vector<std::string>& references, Score&& score) {
  double best = 0;
  for (const std::string& r : references) best = std::max(best, score(r));
  return best;
}
}  // namespace

std::vector<std::string> answer_tokens(std::string_view text) {
  std::vector<std::string> words;
  std::string word;
  auto flush = [&] {
    if (!word.empty() && word != "a" && word != "an" && word != "the") words.push_back(word);
    word.clear();
  };
  for (char c : text) {
    if (is_ascii_punct(c)) continue;  // removed before splitting: "don't" -> "dont"
    if (is_space(c)) flush();
    else word.push_back(c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c);
  }
  flush();
  return words;
}

std::string normalize_answer(std::string_view text) {
  std::string out;
  for (const std::string& w : answer_tokens(text)) {
    if (!out.empty()) out.push_back(' ');
    out += w;
  }
  return out;
}

double exact_match(std::string_view prediction, const std::vector<std::string>& references) {
  const std::string p = normalize_answer(prediction);
  return best_over(references, [&](const std::string& r) { return p == normalize_answer(r) ? 1.0 : 0.0; });
}

double token_f1(std::string_view prediction, const std::vector<std::string>& references) {
  const std::vector<std::string> p = answer_tokens(prediction);
  return best_over(references, [&](const std::string& ref) {
    const std::vector<std::string> r = answer_tokens(ref);
    if (p.empty() || r.empty()) return p.empty() && r.empty() ? 1.0 : 0.0;
    std::map<std::string, int64_t> counts;
    for (const std::string& w : r) ++counts[w];
    int64_t common = 0;
    for (const std::string& w : p)
      if (auto it = counts.find(w); it != counts.end() && it->second > 0) {
        --it->second;
        ++common;
      }
    if (common == 0) return 0.0;
    const double precision = double(common) / double(p.size()), recall = double(common) / double(r.size());
    return 2 * precision * recall / (precision + recall);
  });
}

double substring_recall(std::string_view prediction, const std::vector<std::string>& references) {
  const std::string p = normalize_answer(prediction);
  return best_over(references, [&](const std::string& ref) {
    const std::string r = normalize_answer(ref);
    return !r.empty() && p.find(r) != std::string::npos ? 1.0 : 0.0;
  });
}

void QaScores::add(std::string_view prediction, const std::vector<std::string>& references) {
  exact_match += infer::exact_match(prediction, references);
  f1 += token_f1(prediction, references);
  recall += substring_recall(prediction, references);
  ++samples;
}

QaScores QaScores::mean() const {
  QaScores m = *this;
  const double n = samples > 0 ? double(samples) : 1.0;
  m.exact_match /= n;
  m.f1 /= n;
  m.recall /= n;
  return m;
}

}  // namespace lrsa::infer
