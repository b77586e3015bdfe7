// libFuzzer target for the data layer's JSONL reader (load_jsonl in src/data/dataset.cpp): a
// dataset file is untrusted input. Every input must load into documents that respect the
// reader's contract or throw lrsa::Error; nothing may crash, hang or trip a sanitizer.
//
// Input: the first byte picks the options (format, max_tokens, QA style, truncation side,
// skip_bad_lines), the rest is the file. The file lives in a memfd (no disk I/O per run) and is
// read back through its /proc/self/fd path, as load_jsonl reads any path.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "lrsa/core/error.h"
#include "lrsa/data/dataset.h"

namespace {

void check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lrsa::data;
  static const Tokenizer tokenizer = Tokenizer::byte_level();
  static const int fd = ::memfd_create("fuzz-jsonl", 0);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  check(fd >= 0);
  if (size == 0) return 0;

  const uint8_t knobs = data[0];
  DatasetOptions options;
  options.format = static_cast<DataFormat>(knobs & 3);  // Auto, Chat, Qa, Tokens
  options.max_tokens = (knobs & 4) ? 8 : 64;            // small limits exercise cutting and splitting
  options.qa_style = (knobs & 8) ? QaStyle::Plain : QaStyle::Chat;
  options.truncate_side = (knobs & 16) ? TruncateSide::Right : TruncateSide::Left;
  options.skip_bad_lines = (knobs & 32) != 0;
  if (knobs & 64) options.chat_format = (knobs & 128) ? ChatFormat::Llama3 : ChatFormat::ChatML;

  check(::ftruncate(fd, 0) == 0);
  check(::pwrite(fd, data + 1, size - 1, 0) == ssize_t(size - 1));

  try {
    const Dataset dataset = load_jsonl({path}, tokenizer, options);
    const DatasetStats& stats = dataset.stats();
    check(dataset.size() > 0 && stats.documents == dataset.size());
    int64_t tokens = 0, trained = 0;
    for (int64_t d = 0; d < dataset.size(); ++d) {
      const auto ids = dataset.input_ids(d);
      const auto labels = dataset.labels(d);
      check(!ids.empty() && int64_t(ids.size()) <= options.max_tokens && labels.size() == ids.size());
      for (size_t i = 0; i < ids.size(); ++i) {
        check(ids[i] >= 0 && ids[i] < tokenizer.vocab_size());
        check(labels[i] == -100 || (labels[i] >= 0 && labels[i] < tokenizer.vocab_size()));
        trained += labels[i] != -100;
      }
      tokens += int64_t(ids.size());
    }
    check(tokens == stats.tokens && trained == stats.trained_tokens);
    check(stats.bad_lines == 0 || options.skip_bad_lines);
  } catch (const lrsa::Error&) {
    // Rejected file (malformed line, or no documents): the expected outcome for most inputs.
  }
  return 0;
}
