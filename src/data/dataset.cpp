#include "lrsa/data/dataset.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lrsa/core/error.h"

namespace lrsa::data {

namespace {

using json = nlohmann::json;

constexpr size_t kMaxReportedBadLines = 10;

// Fills {context} and {question} (each exactly once in the template).
std::string fill_template(const std::string& tmpl, std::string_view context, std::string_view question) {
  const size_t c = tmpl.find("{context}"), q = tmpl.find("{question}");
  LRSA_CHECK(c != std::string::npos && q != std::string::npos && tmpl.find("{context}", c + 1) == std::string::npos &&
                 tmpl.find("{question}", q + 1) == std::string::npos,
             "qa: prompt_template must contain {{context}} and {{question}} once each: '{}'", tmpl);
  const bool context_first = c < q;
  const size_t first = context_first ? c : q, second = context_first ? q : c;
  const size_t first_len = context_first ? 9 : 10, second_len = context_first ? 10 : 9;
  std::string out;
  out.reserve(tmpl.size() + context.size() + question.size());
  out.append(tmpl, 0, first);
  out.append(context_first ? context : question);
  out.append(tmpl, first + first_len, second - first - first_len);
  out.append(context_first ? question : context);
  out.append(tmpl, second + second_len);
  return out;
}

// Bytes of ids[begin, end) with the partial UTF-8 characters at both cut edges removed.
std::string cut_text(const Tokenizer& tokenizer, std::span<const int32_t> ids) {
  std::string bytes;
  for (int32_t id : ids) bytes += tokenizer.token_bytes(id);
  size_t start = 0;
  while (start < bytes.size() && start < 3 && (static_cast<unsigned char>(bytes[start]) & 0xC0) == 0x80) ++start;
  // A lead byte in the last three bytes whose sequence is longer than what follows it.
  size_t end = bytes.size();
  for (size_t back = 1; back <= 3 && back <= end - start; ++back) {
    const auto b = static_cast<unsigned char>(bytes[end - back]);
    if ((b & 0xC0) == 0x80) continue;
    const size_t need = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : b >= 0xC0 ? 2 : 1;
    if (need > back) end -= back;
    break;
  }
  return bytes.substr(start, end - start);
}

// Renders with the full context, then with the context cut by the overflow until it fits.
template <typename Render>
TokenizedSample fit_context(const Tokenizer& tokenizer, std::string_view context, TruncateSide side, int64_t budget,
                            Render&& render, bool* truncated) {
  TokenizedSample s = render(context);
  if (truncated) *truncated = false;
  if (int64_t(s.input_ids.size()) <= budget) return s;
  const std::vector<int32_t> ctx = tokenizer.encode(context, /*parse_special=*/false);
  int64_t keep = int64_t(ctx.size());
  while (int64_t(s.input_ids.size()) > budget && keep > 0) {
    // Cutting k context tokens shortens the sample by about k (token boundaries at the cut and
    // around the context may shift a little, hence the loop).
    keep = std::max<int64_t>(0, keep - (int64_t(s.input_ids.size()) - budget));
    const std::span<const int32_t> kept = side == TruncateSide::Left
                                              ? std::span(ctx).last(size_t(keep))
                                              : std::span(ctx).first(size_t(keep));
    s = render(cut_text(tokenizer, kept));
    if (truncated) *truncated = true;
  }
  return s;
}

int32_t end_of_text_id(const Tokenizer& tokenizer) {
  for (const char* name : {"<|endoftext|>", "<|end_of_text|>"})
    if (std::optional<int32_t> id = tokenizer.find_token(name)) return *id;
  fail("qa: plain style needs an end-of-text token (<|endoftext|> or <|end_of_text|>) in tokenizer '{}'",
       tokenizer.source());
}

ChatFormat resolve_chat_format(const Tokenizer& tokenizer, const DatasetOptions& options) {
  if (options.chat_format) return *options.chat_format;
  const std::optional<ChatFormat> detected = detect_chat_format(tokenizer);
  LRSA_CHECK(detected, "data: tokenizer '{}' has no known chat tokens; set the chat format", tokenizer.source());
  return *detected;
}

// Renders QA samples (training or prompt) for one tokenizer and options.
class QaRenderer {
 public:
  QaRenderer(const Tokenizer& tokenizer, const DatasetOptions& options) : tokenizer_(tokenizer), options_(options) {
    fill_template(options.prompt_template, "", "");  // rejects a template without both placeholders
    if (options.qa_style == QaStyle::Chat)
      chat_.emplace(tokenizer, resolve_chat_format(tokenizer, options), options.default_system_prompt);
    else
      end_of_text_ = end_of_text_id(tokenizer);
  }

  TokenizedSample sample(std::string_view context, std::string_view question, std::string_view answer,
                         bool* truncated) const {
    return fit_context(tokenizer_, context, options_.truncate_side, options_.max_tokens,
                       [&](std::string_view ctx) { return render(ctx, question, &answer); }, truncated);
  }

  std::vector<int32_t> prompt(std::string_view context, std::string_view question, int64_t reserve) const {
    return fit_context(tokenizer_, context, options_.truncate_side, options_.max_tokens - reserve,
                       [&](std::string_view ctx) { return render(ctx, question, nullptr); }, nullptr)
        .input_ids;
  }

 private:
  // answer == nullptr: the prompt for generation.
  TokenizedSample render(std::string_view context, std::string_view question, const std::string_view* answer) const {
    const std::string prompt = fill_template(options_.prompt_template, context, question);
    if (chat_) {
      std::vector<ChatMessage> messages{{"user", prompt}};
      if (!answer) return TokenizedSample{chat_->render_prompt(messages), {}};
      messages.push_back({"assistant", std::string(*answer)});
      return chat_->render(messages);
    }
    TokenizedSample s;
    tokenizer_.encode_append(prompt, /*parse_special=*/false, s.input_ids);
    s.labels.assign(s.input_ids.size(), kIgnoreLabel);
    if (!answer) return s;
    const size_t prompt_len = s.input_ids.size();
    tokenizer_.encode_append(" " + std::string(*answer), /*parse_special=*/false, s.input_ids);
    s.input_ids.push_back(end_of_text_);
    s.labels.insert(s.labels.end(), s.input_ids.begin() + ptrdiff_t(prompt_len), s.input_ids.end());
    return s;
  }

  const Tokenizer& tokenizer_;
  const DatasetOptions& options_;
  std::optional<ChatTemplate> chat_;
  int32_t end_of_text_ = -1;
};

const json& field(const json& obj, const char* name) {
  auto it = obj.find(name);
  LRSA_CHECK(it != obj.end(), "missing field '{}'", name);
  return *it;
}

std::string_view string_field(const json& obj, const char* name) {
  const json& v = field(obj, name);
  LRSA_CHECK(v.is_string(), "field '{}' must be a string, got {}", name, v.type_name());
  return v.get_ref<const std::string&>();
}

std::vector<int32_t> id_list(const json& obj, const char* name, int64_t vocab_size, bool allow_ignore) {
  const json& v = field(obj, name);
  LRSA_CHECK(v.is_array(), "field '{}' must be an array of token ids, got {}", name, v.type_name());
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    LRSA_CHECK(v[i].is_number_integer(), "{}[{}] is not an integer: {}", name, i, v[i].dump());
    const int64_t id = v[i].get<int64_t>();
    LRSA_CHECK((id >= 0 && id < vocab_size) || (allow_ignore && id == kIgnoreLabel),
               "{}[{}] = {} is outside the vocabulary [0, {}){}", name, i, id, vocab_size,
               allow_ignore ? " and is not -100" : "");
    ids.push_back(int32_t(id));
  }
  return ids;
}

struct LineResult {
  TokenizedSample sample;
  bool truncated = false;
  std::string error;  // non-empty: the line is bad
};

class LineParser {
 public:
  LineParser(const Tokenizer& tokenizer, const DatasetOptions& options) : tokenizer_(tokenizer), options_(options) {}

  LineResult parse(std::string_view line) const {
    LineResult r;
    try {
      const json obj = json::parse(line);
      LRSA_CHECK(obj.is_object(), "a line must be a JSON object, got {}", obj.type_name());
      switch (format_of(obj)) {
        case DataFormat::Chat: r.sample = chat(obj); break;
        case DataFormat::Qa:
          if (!qa_) qa_.emplace(tokenizer_, options_);
          r.sample = qa_->sample(string_field(obj, "context"), string_field(obj, "question"),
                                 string_field(obj, "answer"), &r.truncated);
          break;
        default: r.sample = tokens(obj); break;
      }
    } catch (const json::exception& e) {
      r.error = fmt::format("invalid JSON: {}", e.what());
    } catch (const std::exception& e) {
      r.error = e.what();
    }
    return r;
  }

 private:
  DataFormat format_of(const json& obj) const {
    if (options_.format != DataFormat::Auto) return options_.format;
    if (obj.contains("messages")) return DataFormat::Chat;
    if (obj.contains("input_ids")) return DataFormat::Tokens;
    if (obj.contains("question")) return DataFormat::Qa;
    fail("cannot tell the format: expected \"messages\" (chat), \"context\"/\"question\"/\"answer\" (qa) or "
         "\"input_ids\" (tokens)");
  }

  TokenizedSample chat(const json& obj) const {
    if (!chat_) chat_.emplace(tokenizer_, resolve_chat_format(tokenizer_, options_), options_.default_system_prompt);
    const json& list = field(obj, "messages");
    LRSA_CHECK(list.is_array() && !list.empty(), "field 'messages' must be a non-empty array");
    std::vector<ChatMessage> messages;
    for (size_t i = 0; i < list.size(); ++i) {
      LRSA_CHECK(list[i].is_object(), "messages[{}] must be an object", i);
      try {
        messages.push_back({std::string(string_field(list[i], "role")), std::string(string_field(list[i], "content"))});
      } catch (const Error& e) {
        fail("messages[{}]: {}", i, e.what());
      }
    }
    return chat_->render(messages);
  }

  TokenizedSample tokens(const json& obj) const {
    TokenizedSample s;
    s.input_ids = id_list(obj, "input_ids", tokenizer_.vocab_size(), false);
    LRSA_CHECK(!s.input_ids.empty(), "field 'input_ids' is empty");
    if (obj.contains("labels")) {
      s.labels = id_list(obj, "labels", tokenizer_.vocab_size(), true);
      LRSA_CHECK(s.labels.size() == s.input_ids.size(), "'labels' has {} entries but 'input_ids' has {}",
                 s.labels.size(), s.input_ids.size());
    } else {
      s.labels = s.input_ids;
    }
    return s;
  }

  const Tokenizer& tokenizer_;
  const DatasetOptions& options_;
  // Made on first use, so that a tokens-only file needs no chat tokens; every parsing thread
  // has its own parser.
  mutable std::optional<QaRenderer> qa_;
  mutable std::optional<ChatTemplate> chat_;
};

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  LRSA_CHECK(file, "data: cannot open '{}'", path);
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(file, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
  }
  return lines;
}

bool is_blank(std::string_view s) {
  return s.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

}  // namespace

DataFormat data_format_from_name(std::string_view name) {
  if (name == "auto") return DataFormat::Auto;
  if (name == "chat") return DataFormat::Chat;
  if (name == "qa") return DataFormat::Qa;
  if (name == "tokens") return DataFormat::Tokens;
  fail("data: unknown format '{}' (expected auto, chat, qa or tokens)", name);
}

TruncateSide truncate_side_from_name(std::string_view name) {
  if (name == "left") return TruncateSide::Left;
  if (name == "right") return TruncateSide::Right;
  fail("data: unknown truncate side '{}' (expected left or right)", name);
}

QaStyle qa_style_from_name(std::string_view name) {
  if (name == "chat") return QaStyle::Chat;
  if (name == "plain") return QaStyle::Plain;
  fail("data: unknown qa style '{}' (expected chat or plain)", name);
}

std::string DatasetStats::summary() const {
  return fmt::format(
      "{} documents, {} tokens ({} trained) from {} lines; {} bad lines skipped, {} contexts truncated, {} samples "
      "split, {} samples without trained tokens dropped",
      documents, tokens, trained_tokens, lines, bad_lines, truncated, split, no_trained_tokens);
}

bool Dataset::add(std::span<const int32_t> input_ids, std::span<const int32_t> labels) {
  LRSA_CHECK(input_ids.size() == labels.size(), "data: {} input ids but {} labels", input_ids.size(), labels.size());
  LRSA_CHECK(max_tokens_ >= 1, "data: max_tokens must be >= 1, got {}", max_tokens_);
  const int64_t trained = std::count_if(labels.begin(), labels.end(), [](int32_t l) { return l != kIgnoreLabel; });
  if (trained == 0) {
    ++stats_.no_trained_tokens;
    return false;
  }
  if (int64_t(input_ids.size()) > max_tokens_) ++stats_.split;
  for (size_t start = 0; start < input_ids.size(); start += size_t(max_tokens_)) {
    const size_t n = std::min(input_ids.size() - start, size_t(max_tokens_));
    ids_.insert(ids_.end(), input_ids.begin() + ptrdiff_t(start), input_ids.begin() + ptrdiff_t(start + n));
    labels_.insert(labels_.end(), labels.begin() + ptrdiff_t(start), labels.begin() + ptrdiff_t(start + n));
    offsets_.push_back(int64_t(ids_.size()));
    ++stats_.documents;
  }
  stats_.tokens += int64_t(input_ids.size());
  stats_.trained_tokens += trained;
  return true;
}

std::span<const int32_t> Dataset::input_ids(int64_t doc) const {
  return std::span(ids_).subspan(size_t(offsets_[size_t(doc)]), size_t(length(doc)));
}

std::span<const int32_t> Dataset::labels(int64_t doc) const {
  return std::span(labels_).subspan(size_t(offsets_[size_t(doc)]), size_t(length(doc)));
}

TokenizedSample render_qa(const Tokenizer& tokenizer, const DatasetOptions& options, std::string_view context,
                          std::string_view question, std::string_view answer, bool* truncated) {
  return QaRenderer(tokenizer, options).sample(context, question, answer, truncated);
}

std::vector<int32_t> render_qa_prompt(const Tokenizer& tokenizer, const DatasetOptions& options,
                                      std::string_view context, std::string_view question, int64_t reserve) {
  return QaRenderer(tokenizer, options).prompt(context, question, reserve);
}

Dataset load_jsonl(const std::vector<std::string>& paths, const Tokenizer& tokenizer, const DatasetOptions& options) {
  LRSA_CHECK(!paths.empty(), "data: no dataset files given");
  LRSA_CHECK(options.max_tokens >= 1, "data: max_tokens must be >= 1, got {}", options.max_tokens);
  Dataset dataset(options.max_tokens);
  DatasetStats& stats = dataset.stats();
  for (const std::string& path : paths) {
    const std::vector<std::string> lines = read_lines(path);
    std::vector<LineResult> results(lines.size());
    // Lines are independent: tokenize them in parallel, then add them in file order.
#pragma omp parallel
    {
      const LineParser parser(tokenizer, options);
#pragma omp for schedule(dynamic, 8)
      for (size_t i = 0; i < lines.size(); ++i)
        if (!is_blank(lines[i])) results[i] = parser.parse(lines[i]);
    }
    for (size_t i = 0; i < lines.size(); ++i) {
      if (is_blank(lines[i])) continue;
      ++stats.lines;
      LineResult& r = results[i];
      if (!r.error.empty()) {
        const std::string message = fmt::format("{}:{}: {}", path, i + 1, r.error);
        LRSA_CHECK(options.skip_bad_lines, "{}", message);
        ++stats.bad_lines;
        if (stats.bad_line_errors.size() < kMaxReportedBadLines) stats.bad_line_errors.push_back(message);
        continue;
      }
      stats.truncated += r.truncated;
      dataset.add(r.sample.input_ids, r.sample.labels);
      r = LineResult{};  // free the tokens as they are copied
    }
  }
  LRSA_CHECK(dataset.size() > 0, "data: no training documents in {} ({}){}", fmt::join(paths, ", "), stats.summary(),
             stats.bad_line_errors.empty() ? "" : "; first bad line: " + stats.bad_line_errors.front());
  return dataset;
}

}  // namespace lrsa::data
