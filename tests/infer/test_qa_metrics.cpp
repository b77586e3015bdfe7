#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>

#include "lrsa/infer/eval_qa.h"
#include "lrsa/infer/qa_metrics.h"

using namespace lrsa::infer;

TEST_CASE("answers are normalized as in SQuAD", "[infer]") {
  CHECK(normalize_answer("  The  Eiffel-Tower, in PARIS!  ") == "eiffeltower in paris");
  CHECK(normalize_answer("an apple a day") == "apple day");
  CHECK(normalize_answer("theory") == "theory");  // articles only as whole words
  CHECK(normalize_answer("A.") == "");            // punctuation goes first, then the article
  CHECK(normalize_answer("don't\tstop\n") == "dont stop");
  CHECK(answer_tokens("The cat, the hat") == std::vector<std::string>{"cat", "hat"});
}

TEST_CASE("exact match, token F1 and substring recall take the best reference", "[infer]") {
  CHECK(exact_match("The answer is 42.", {"42"}) == 0.0);
  CHECK(exact_match("42.", {"forty-two", "42"}) == 1.0);
  // pred {answer, is, 42}, ref {42}: precision 1/3, recall 1 -> F1 0.5
  CHECK(token_f1("The answer is 42.", {"42"}) == Approx(0.5));
  CHECK(token_f1("red red blue", {"red blue blue"}) == Approx(2.0 / 3.0));  // multiset overlap 2
  CHECK(token_f1("green", {"red", "green light"}) == Approx(2.0 / 3.0));
  CHECK(token_f1("", {"the"}) == 1.0);  // both empty after normalization
  CHECK(token_f1("", {"x"}) == 0.0);
  CHECK(substring_recall("The passkey is 12345.", {"12345"}) == 1.0);
  CHECK(substring_recall("The passkey is 1234", {"12345"}) == 0.0);
  CHECK(substring_recall("anything", {"the"}) == 0.0);  // an empty reference never counts

  QaScores s;
  s.add("42", {"42"});
  s.add("41", {"42"});
  const QaScores m = s.mean();
  CHECK(m.samples == 2);
  CHECK(m.exact_match == Approx(0.5));
  CHECK(m.f1 == Approx(0.5));
  CHECK(m.recall == Approx(0.5));
}

TEST_CASE("QA files and cache settings are read with clear errors", "[infer]") {
  const std::filesystem::path path = std::filesystem::temp_directory_path() / "lrsa_infer_qa_test.jsonl";
  {
    std::ofstream out(path);
    out << R"({"context": "c", "question": "q", "answer": "a"})" << "\n\n"
        << R"({"context": "c2", "question": "q2", "answer": ["x", "y"]})" << "\n";
  }
  const std::vector<QaSample> samples = load_qa_samples(path.string());
  REQUIRE(samples.size() == 2);
  CHECK(samples[1].answers == std::vector<std::string>{"x", "y"});
  {
    std::ofstream out(path, std::ios::app);
    out << R"({"context": "c", "question": 3, "answer": "a"})" << "\n";
  }
  CHECK_THROWS_WITH(load_qa_samples(path.string()), Catch::Contains(":4:") && Catch::Contains("\"question\" must be a string"));
  std::filesystem::remove(path);

  lrsa::attn::LrsaParams base;
  base.sink = 4;
  base.lag = 64;
  CHECK_FALSE(parse_cache_setting("dense", base).compress);
  const CacheSpec s = parse_cache_setting("0.125", base);
  CHECK(s.compress);
  CHECK(s.lrsa.kept() == 8);
  CHECK(s.lrsa.sink == 4);
  CHECK_THROWS_WITH(parse_cache_setting("0.3x", base), Catch::Contains("neither 'dense' nor a ratio"));
  CHECK_THROWS_WITH(parse_cache_setting("1.5", base), Catch::Contains("neither 'dense' nor a ratio"));
}
