// Synthetic passkey and key/value retrieval QA data.
#include <catch2/catch.hpp>

#include <fstream>
#include <set>

#include "lrsa/core/error.h"
#include "lrsa/data/dataset.h"
#include "lrsa/data/synthetic.h"
#include "temp_dir.h"

using namespace lrsa;
using namespace lrsa::data;

namespace {
const Tokenizer& bytes() {
  static const Tokenizer t = Tokenizer::byte_level();
  return t;
}
size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("filler is deterministic sentences of about the requested length", "[data]") {
  const std::string a = make_filler(bytes(), 2000, 1, 0);
  CHECK(a == make_filler(bytes(), 2000, 1, 0));
  CHECK(a != make_filler(bytes(), 2000, 2, 0));
  CHECK(a != make_filler(bytes(), 2000, 1, 1));
  CHECK(a.size() >= 2000);
  CHECK(a.size() < 2000 + 80);  // ends within one sentence
  CHECK(a.back() == '.');
  for (char c : a) CHECK(((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == ' ' || c == '.' || c == ','));
}

TEST_CASE("passkey samples state the key once at a random depth", "[data]") {
  SyntheticQaOptions o;
  o.context_tokens = 3000;
  o.seed = 5;
  std::set<size_t> depths;
  for (int64_t i = 0; i < 8; ++i) {
    const QaRecord r = make_synthetic_qa(o, bytes(), i);
    CHECK(r.question == "What is the pass key?");
    CHECK(r.answer.size() == 5);
    CHECK(count(r.context, r.answer) == 2);  // "The pass key is K. Remember it. K is the pass key."
    CHECK(count(r.context, "pass key") == 2);
    CHECK(r.context.size() >= 3000);
    CHECK(r.context.size() < 3000 + 80);
    depths.insert(r.context.find(r.answer) * 10 / r.context.size());
    CHECK(make_synthetic_qa(o, bytes(), i).context == r.context);
  }
  CHECK(depths.size() >= 3);  // the needle moves around
}

TEST_CASE("kv samples hold every pair and ask for one of them", "[data]") {
  SyntheticQaOptions o;
  o.kind = "kv";
  o.context_tokens = 4000;
  o.num_pairs = 20;
  for (int64_t i = 0; i < 4; ++i) {
    const QaRecord r = make_synthetic_qa(o, bytes(), i);
    CHECK(count(r.context, "The value of key ") == 20);
    const std::string key = r.question.substr(std::string("What is the value of key ").size(), 9);
    CHECK(r.question == "What is the value of key " + key + "?");
    CHECK(count(r.context, "key " + key + " is") == 1);
    CHECK(r.context.find("The value of key " + key + " is " + r.answer + ".") != std::string::npos);
  }
}

TEST_CASE("write_synthetic_qa writes QA JSONL the dataset reader accepts", "[data]") {
  SyntheticQaOptions o;
  o.output_path = (lrsa::test::temp_dir() / "passkey.jsonl").string();
  o.num_samples = 6;
  o.context_tokens = 500;
  write_synthetic_qa(o);
  std::ifstream f(o.output_path);
  int lines = 0;
  for (std::string line; std::getline(f, line);) ++lines;
  CHECK(lines == 6);
  DatasetOptions d;
  d.max_tokens = 2048;
  const Dataset data = load_jsonl({o.output_path}, bytes(), d);
  CHECK(data.size() == 6);
  CHECK(data.stats().truncated == 0);

  auto bad = [](auto edit) {
    SyntheticQaOptions b;
    b.output_path = (lrsa::test::temp_dir() / "bad.jsonl").string();
    edit(b);
    return b;
  };
  CHECK_THROWS_WITH(write_synthetic_qa(bad([](auto& b) { b.kind = "maze"; })), Catch::Contains("unknown kind 'maze'"));
  CHECK_THROWS_WITH(write_synthetic_qa(bad([](auto& b) { b.output_path = ""; })), Catch::Contains("no output path"));
  CHECK_THROWS_WITH(write_synthetic_qa(bad([](auto& b) { b.output_path = "/nonexistent/dir/x.jsonl"; })),
                    Catch::Contains("cannot write"));
  CHECK_THROWS_WITH(write_synthetic_qa(bad([](auto& b) {
                      b.kind = "kv";
                      b.num_pairs = 0;
                    })),
                    Catch::Contains("num_pairs"));
  CHECK_THROWS_WITH(write_synthetic_qa(bad([](auto& b) { b.tokenizer = "/nonexistent/tokenizer.json"; })),
                    Catch::Contains("cannot open"));
}
