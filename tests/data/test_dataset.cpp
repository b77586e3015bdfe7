// JSONL readers: chat, QA (template, styles, context truncation), pre-tokenized; errors with
// file:line; skipping bad lines; splitting and dropping; stats. Byte tokenizer: 1 byte = 1 id.
#include <catch2/catch.hpp>

#include "lrsa/core/error.h"
#include "lrsa/data/dataset.h"
#include "temp_dir.h"

using namespace lrsa;
using namespace lrsa::data;
using lrsa::test::write_file;
using V = std::vector<int32_t>;

namespace {

const Tokenizer& bytes() {
  static const Tokenizer t = Tokenizer::byte_level();
  return t;
}

std::string text_of(std::span<const int32_t> ids) { return bytes().decode(ids); }

std::string trained_text(const Dataset& d, int64_t doc) {
  std::string s;
  for (int32_t l : d.labels(doc))
    if (l != kIgnoreLabel) s += l >= 256 ? std::string("#") : std::string(1, char(l));
  return s;
}

}  // namespace

TEST_CASE("chat lines render through the chat template", "[data]") {
  const std::string path = write_file("chat.jsonl",
                                      R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]})"
                                      "\n\n"
                                      R"({"messages":[{"role":"system","content":"s"},{"role":"user","content":"q"},{"role":"assistant","content":"a"}]})"
                                      "\n");
  const Dataset d = load_jsonl({path}, bytes(), DatasetOptions{});
  REQUIRE(d.size() == 2);
  const ChatTemplate chat(bytes(), ChatFormat::ChatML);
  const TokenizedSample first = chat.render(std::vector<ChatMessage>{{"user", "hi"}, {"assistant", "yo"}});
  CHECK(V(d.input_ids(0).begin(), d.input_ids(0).end()) == first.input_ids);
  CHECK(V(d.labels(0).begin(), d.labels(0).end()) == first.labels);
  CHECK(trained_text(d, 1) == "a#");
  CHECK(d.stats().lines == 2);  // the blank line is not a sample
  CHECK(d.stats().documents == 2);
  CHECK(d.stats().trained_tokens == 3 + 2);
}

TEST_CASE("QA lines: template, chat and plain styles", "[data]") {
  const std::string path = write_file("qa.jsonl", R"({"context":"C1","question":"Q1","answer":"A1"})" "\n");
  DatasetOptions o;
  o.prompt_template = "[{question}|{context}]";
  o.default_system_prompt = "";
  const Dataset chat = load_jsonl({path}, bytes(), o);
  CHECK(text_of(chat.input_ids(0)) == "<|im_start|>user\n[Q1|C1]<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n");
  CHECK(trained_text(chat, 0) == "A1#");

  o.qa_style = QaStyle::Plain;
  const Dataset plain = load_jsonl({path}, bytes(), o);
  CHECK(text_of(plain.input_ids(0)) == "[Q1|C1] A1<|endoftext|>");
  CHECK(trained_text(plain, 0) == " A1#");

  o.prompt_template = "{context} only";
  CHECK_THROWS_WITH(load_jsonl({path}, bytes(), o), Catch::Contains("must contain {context} and {question}"));
  DatasetOptions plain_prompt;
  plain_prompt.prompt_template = "{context}?{question}";
  plain_prompt.qa_style = QaStyle::Plain;
  plain_prompt.max_tokens = 6;
  CHECK(render_qa_prompt(bytes(), plain_prompt, "ctx", "q", 0) == V{'c', 't', 'x', '?', 'q'});
  CHECK(render_qa_prompt(bytes(), plain_prompt, "ctx", "q", 3) == V{'x', '?', 'q'});  // room left to generate
}

TEST_CASE("QA truncation cuts only the context, on the configured side", "[data]") {
  std::string context;
  for (int i = 0; i < 50; ++i) context += char('a' + i % 26);
  context += "\xC3\xA9";  // a two-byte character in the middle: a cut must not split it
  for (int i = 0; i < 50; ++i) context += char('A' + i % 26);
  DatasetOptions o;
  o.qa_style = QaStyle::Plain;
  o.prompt_template = "{context}\nQ: {question}";
  const std::string tail = "\nQ: why? because<|endoftext|>";
  const int64_t tail_tokens = 8 + 8 + 1;  // "\nQ: why?", " because", end-of-text
  const int64_t full = int64_t(context.size()) + tail_tokens;
  for (TruncateSide side : {TruncateSide::Left, TruncateSide::Right}) {
    o.truncate_side = side;
    for (o.max_tokens = tail_tokens + 1; o.max_tokens <= full; ++o.max_tokens) {
      bool truncated = false;
      const TokenizedSample s = render_qa(bytes(), o, context, "why?", "because", &truncated);
      const std::string text = text_of(s.input_ids);
      INFO("max_tokens " << o.max_tokens << ": " << text);
      CHECK(truncated == (o.max_tokens < full));
      CHECK(int64_t(s.input_ids.size()) <= o.max_tokens);
      CHECK(int64_t(s.input_ids.size()) >= o.max_tokens - 1);  // cut by the overflow (+1 for "é")
      CHECK(text.find("\xEF\xBF\xBD") == std::string::npos);
      REQUIRE(text.size() >= tail.size());
      CHECK(text.substr(text.size() - tail.size()) == tail);
      const std::string kept = text.substr(0, text.size() - tail.size());
      if (side == TruncateSide::Left) CHECK(context.substr(context.size() - kept.size()) == kept);
      else CHECK(context.substr(0, kept.size()) == kept);
    }
  }
  // Question and answer alone too long: the context goes entirely, the rest is kept (and the
  // dataset then splits the sample).
  o.max_tokens = 5;
  bool truncated = false;
  const TokenizedSample too_long = render_qa(bytes(), o, context, "why?", "because", &truncated);
  CHECK(truncated);
  CHECK(text_of(too_long.input_ids) == tail);
}

TEST_CASE("pre-tokenized lines keep aligned labels; long samples are split", "[data]") {
  const std::string path = write_file("tokens.jsonl",
                                      R"({"input_ids":[1,2,3,4],"labels":[-100,2,3,-100]})" "\n"
                                      R"({"input_ids":[5,6,7,8,9,10,11]})" "\n"
                                      R"({"input_ids":[1,2],"labels":[-100,-100]})" "\n");
  DatasetOptions o;
  o.format = DataFormat::Tokens;
  o.max_tokens = 3;
  const Dataset d = load_jsonl({path}, bytes(), o);
  REQUIRE(d.size() == 2 + 3);
  CHECK(V(d.input_ids(0).begin(), d.input_ids(0).end()) == V{1, 2, 3});
  CHECK(V(d.labels(0).begin(), d.labels(0).end()) == V{-100, 2, 3});
  CHECK(V(d.input_ids(1).begin(), d.input_ids(1).end()) == V{4});
  CHECK(V(d.labels(2).begin(), d.labels(2).end()) == V{5, 6, 7});  // no labels: all trained
  CHECK(V(d.input_ids(4).begin(), d.input_ids(4).end()) == V{11});
  CHECK(d.stats().split == 2);
  CHECK(d.stats().no_trained_tokens == 1);  // the all -100 sample is dropped
  CHECK(d.stats().tokens == 11);
  CHECK(d.stats().summary().find("2 samples split") != std::string::npos);
}

TEST_CASE("bad lines name file and line; they can be skipped and counted", "[data]") {
  const std::string good = R"({"context":"c","question":"q","answer":"a"})";
  struct Case {
    std::string line, message;
  };
  const std::vector<Case> cases = {
      {"{not json", ":2: invalid JSON"},
      {R"({"context":"c","answer":"a","question":7})", ":2: field 'question' must be a string, got number"},
      {R"({"context":"c","answer":"a"})", ":2: cannot tell the format"},
      {R"({"messages":[{"role":"user"}]})", ":2: messages[0]: missing field 'content'"},
      {R"({"messages":[]})", ":2: field 'messages' must be a non-empty array"},
      {R"({"input_ids":[1,999]})", ":2: input_ids[1] = 999 is outside the vocabulary [0, 259)"},
      {R"({"input_ids":[1,2],"labels":[1]})", ":2: 'labels' has 1 entries but 'input_ids' has 2"},
      {R"({"input_ids":[1,2],"labels":[1,-5]})", ":2: labels[1] = -5 is outside the vocabulary [0, 259) and is not -100"},
      {"[1,2]", ":2: a line must be a JSON object, got array"},
  };
  int n = 0;
  for (const Case& c : cases) {
    const std::string path = write_file("bad" + std::to_string(n++) + ".jsonl", good + "\n" + c.line + "\n" + good + "\n");
    INFO(c.line);
    CHECK_THROWS_WITH(load_jsonl({path}, bytes(), DatasetOptions{}), Catch::StartsWith(path + c.message));
    DatasetOptions skip;
    skip.skip_bad_lines = true;
    const Dataset d = load_jsonl({path}, bytes(), skip);
    CHECK(d.size() == 2);
    CHECK(d.stats().bad_lines == 1);
    REQUIRE(d.stats().bad_line_errors.size() == 1);
    CHECK(d.stats().bad_line_errors[0].find(path + c.message) == 0);
  }
}

TEST_CASE("empty or fully filtered datasets are errors", "[data]") {
  const std::string empty = write_file("empty.jsonl", "\n  \n");
  CHECK_THROWS_WITH(load_jsonl({empty}, bytes(), DatasetOptions{}), Catch::Contains("no training documents"));
  const std::string untrained =
      write_file("untrained.jsonl", R"({"messages":[{"role":"user","content":"nobody answers"}]})" "\n");
  CHECK_THROWS_WITH(load_jsonl({untrained}, bytes(), DatasetOptions{}),
                    Catch::Contains("no training documents") && Catch::Contains("1 samples without trained tokens"));
  const std::string bad = write_file("allbad.jsonl", "{\n");
  DatasetOptions skip;
  skip.skip_bad_lines = true;
  CHECK_THROWS_WITH(load_jsonl({bad}, bytes(), skip),
                    Catch::Contains("1 bad lines skipped") && Catch::Contains("first bad line: " + bad + ":1: invalid JSON"));
  CHECK_THROWS_WITH(load_jsonl({"/nonexistent.jsonl"}, bytes(), DatasetOptions{}), Catch::Contains("cannot open"));
  CHECK_THROWS_WITH(data_format_from_name("csv"), Catch::Contains("unknown format 'csv'"));
}

TEST_CASE("several files load in order; auto format decides per line", "[data]") {
  const std::string a = write_file("a.jsonl", R"({"input_ids":[1]})" "\n");
  const std::string b = write_file("b.jsonl", R"({"context":"c","question":"q","answer":"a"})" "\n"
                                              R"({"input_ids":[2,3]})" "\n");
  const Dataset d = load_jsonl({a, b}, bytes(), DatasetOptions{});
  REQUIRE(d.size() == 3);
  CHECK(d.input_ids(0)[0] == 1);
  CHECK(d.length(1) > 10);
  CHECK(d.input_ids(2)[0] == 2);
}
