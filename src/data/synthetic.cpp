#include "lrsa/data/synthetic.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string_view>
#include <vector>

#include "lrsa/core/error.h"
#include "lrsa/core/rng.h"

namespace lrsa::data {

namespace {

// Counter-based draws: (seed, stream, counter) -> bits, the same on every machine.
class Draws {
 public:
  Draws(uint64_t seed, uint64_t stream) : seed_(seed), stream_(stream) {}
  uint64_t bits() {
    const Philox4 r = philox4x32_10(counter_++, stream_, seed_);
    return (uint64_t(r.v[0]) << 32) | r.v[1];
  }
  size_t below(size_t n) { return size_t(bits() % n); }
  template <size_t N>
  std::string_view pick(const std::array<std::string_view, N>& words) { return words[below(N)]; }

 private:
  uint64_t seed_, stream_, counter_ = 0;
};

constexpr std::array<std::string_view, 20> kAdjectives = {
    "quiet", "old", "small", "bright", "distant", "gentle", "busy", "narrow", "ancient", "curious",
    "patient", "silver", "wooden", "crowded", "empty", "sunny", "calm", "heavy", "careful", "friendly"};
constexpr std::array<std::string_view, 20> kNouns = {
    "farmer", "river", "village", "teacher", "garden", "window", "merchant", "bridge", "lantern", "forest",
    "library", "traveler", "harbor", "painter", "market", "mountain", "kitchen", "letter", "orchard", "clock"};
constexpr std::array<std::string_view, 12> kNames = {"Anna",  "Marco", "Lena", "Tomas", "Priya", "Jonas",
                                                     "Elena", "Kenji", "Sofia", "David", "Amara", "Leo"};
constexpr std::array<std::string_view, 12> kVerbs = {"carried", "painted",  "watched",  "repaired",
                                                     "visited", "found",    "described", "followed",
                                                     "cleaned", "admired", "measured", "remembered"};
constexpr std::array<std::string_view, 8> kPrepositions = {"across", "near",   "behind", "beside",
                                                           "above",  "around", "toward", "past"};
constexpr std::array<std::string_view, 6> kTimes = {"morning", "evening", "afternoon", "winter", "spring", "night"};
constexpr std::array<std::string_view, 8> kAdverbs = {"slowly", "quietly", "carefully", "happily",
                                                      "often",  "rarely",  "eagerly",   "again"};
constexpr std::array<std::string_view, 6> kPlaces = {"village", "valley", "city", "harbor", "market", "square"};

std::string capitalized(std::string_view w) {
  std::string s(w);
  if (!s.empty() && s[0] >= 'a' && s[0] <= 'z') s[0] = char(s[0] - 'a' + 'A');
  return s;
}

std::string sentence(Draws& d) {
  switch (d.below(6)) {
    case 0:
      return fmt::format("The {} {} {} the {} {} {} the {}.", d.pick(kAdjectives), d.pick(kNouns), d.pick(kVerbs),
                         d.pick(kAdjectives), d.pick(kNouns), d.pick(kPrepositions), d.pick(kNouns));
    case 1:
      return fmt::format("{} {} a {} {} in the {}.", d.pick(kNames), d.pick(kVerbs), d.pick(kAdjectives),
                         d.pick(kNouns), d.pick(kTimes));
    case 2:
      return fmt::format("In the {}, the {} near the {} was {} and {}.", d.pick(kTimes), d.pick(kNouns),
                         d.pick(kPlaces), d.pick(kAdjectives), d.pick(kAdjectives));
    case 3:
      return fmt::format("Every {} in the {} {} the {} {}.", d.pick(kNouns), d.pick(kPlaces), d.pick(kVerbs),
                         d.pick(kNouns), d.pick(kAdverbs));
    case 4:
      return fmt::format("{} and {} walked {} the {} {} {}.", d.pick(kNames), d.pick(kNames), d.pick(kPrepositions),
                         d.pick(kAdjectives), d.pick(kNouns), d.pick(kAdverbs));
    default:
      return fmt::format("{} the {} was {}, nobody asked why.", capitalized(d.pick(kAdverbs)), d.pick(kNouns),
                         d.pick(kAdjectives));
  }
}

// Tokens a sentence adds to a space-joined text. Sentences end in '.' and the next starts with
// " Word", which the pre-tokenizers always split, so these counts add up (to within a token
// for the first sentence, which has no leading space).
int64_t sentence_tokens(const Tokenizer& tokenizer, const std::string& s) {
  return int64_t(tokenizer.encode(" " + s, /*parse_special=*/false).size());
}

// Filler sentences totalling at least `tokens` tokens (none when tokens <= 0).
std::vector<std::string> filler_sentences(const Tokenizer& tokenizer, int64_t tokens, Draws& d) {
  std::vector<std::string> out;
  for (int64_t total = 0; total < tokens;) {
    out.push_back(sentence(d));
    total += sentence_tokens(tokenizer, out.back());
  }
  return out;
}

std::string join(const std::vector<std::string>& sentences) {
  std::string text;
  for (const std::string& s : sentences) {
    if (!text.empty()) text += ' ';
    text += s;
  }
  return text;
}

std::string hex_id(Draws& d) {
  const uint64_t b = d.bits();
  return fmt::format("{:04x}-{:04x}", uint32_t(b & 0xFFFF), uint32_t((b >> 16) & 0xFFFF));
}

// Puts `facts` between random sentences (several may share a gap), keeping their order.
void scatter(std::vector<std::string>& sentences, const std::vector<std::string>& facts, Draws& d) {
  std::vector<size_t> gaps;
  for (size_t i = 0; i < facts.size(); ++i) gaps.push_back(d.below(sentences.size() + 1));
  std::sort(gaps.begin(), gaps.end());
  for (size_t i = facts.size(); i-- > 0;) sentences.insert(sentences.begin() + ptrdiff_t(gaps[i]), facts[i]);
}

void check_options(const SyntheticQaOptions& o) {
  LRSA_CHECK(o.kind == "passkey" || o.kind == "kv", "make-data: unknown kind '{}' (expected passkey or kv)", o.kind);
  LRSA_CHECK(o.context_tokens >= 1, "make-data: context_tokens must be >= 1, got {}", o.context_tokens);
  LRSA_CHECK(o.kind != "kv" || (o.num_pairs >= 1 && o.num_pairs <= 65536),
             "make-data: num_pairs must be in [1, 65536], got {}", o.num_pairs);
}

}  // namespace

std::string make_filler(const Tokenizer& tokenizer, int64_t tokens, uint64_t seed, uint64_t stream) {
  Draws d(seed, stream);
  return join(filler_sentences(tokenizer, tokens, d));
}

QaRecord make_synthetic_qa(const SyntheticQaOptions& options, const Tokenizer& tokenizer, int64_t index) {
  check_options(options);
  Draws d(options.seed, uint64_t(index));
  std::vector<std::string> facts;
  QaRecord r;
  if (options.kind == "passkey") {
    const std::string key = std::to_string(10000 + d.below(90000));
    facts.push_back(fmt::format("The pass key is {}. Remember it. {} is the pass key.", key, key));
    r.question = "What is the pass key?";
    r.answer = key;
  } else {
    std::set<std::string> used;
    std::vector<std::string> keys;
    while (int64_t(keys.size()) < options.num_pairs) {
      std::string k = hex_id(d);
      if (used.insert(k).second) keys.push_back(std::move(k));
    }
    const size_t asked = d.below(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      const std::string value = hex_id(d);
      facts.push_back(fmt::format("The value of key {} is {}.", keys[i], value));
      if (i == asked) r.answer = value;
    }
    r.question = fmt::format("What is the value of key {}?", keys[asked]);
  }
  int64_t fact_tokens = 0;
  for (const std::string& f : facts) fact_tokens += sentence_tokens(tokenizer, f);
  std::vector<std::string> sentences = filler_sentences(tokenizer, options.context_tokens - fact_tokens, d);
  scatter(sentences, facts, d);
  r.context = join(sentences);
  return r;
}

void write_synthetic_qa(const SyntheticQaOptions& options) {
  check_options(options);
  LRSA_CHECK(options.num_samples >= 1, "make-data: num_samples must be >= 1, got {}", options.num_samples);
  LRSA_CHECK(!options.output_path.empty(), "make-data: no output path");
  const Tokenizer tokenizer = Tokenizer::load(options.tokenizer);
  std::ofstream out(options.output_path, std::ios::binary);
  LRSA_CHECK(out, "make-data: cannot write '{}'", options.output_path);
  for (int64_t i = 0; i < options.num_samples; ++i) {
    const QaRecord r = make_synthetic_qa(options, tokenizer, i);
    out << nlohmann::json{{"context", r.context}, {"question", r.question}, {"answer", r.answer}}.dump() << '\n';
  }
  out.close();
  LRSA_CHECK(out, "make-data: error while writing '{}'", options.output_path);
}

}  // namespace lrsa::data
