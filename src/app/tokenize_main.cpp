// lrsa-tokenize: encode a text file with a tokenizer (HF tokenizer.json or "bytes") and either
// print the ids (one JSON array) or, with --bench, time loading and single-threaded encoding
// (thread CPU time, best of --repeat).
// Used by scripts/bench/tokenizer_bench.py (printing ids is also `lrsa-train tokenize`).
#include <CLI/CLI.hpp>
#include <ctime>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "lrsa/core/error.h"
#include "lrsa/data/tokenizer.h"

namespace {

// CPU time of this thread: on a shared, loaded machine it measures the work, not the waiting.
double thread_cpu_seconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  LRSA_CHECK(f, "lrsa-tokenize: cannot open '{}'", path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Encode text with an lrsa tokenizer"};
  std::string tokenizer_spec, input;
  bool bench = false, no_special = false, per_line = false;
  int repeat = 1;
  app.add_option("--tokenizer", tokenizer_spec, "tokenizer.json path or 'bytes'")->required();
  app.add_option("--input", input, "text file")->required();
  app.add_flag("--bench", bench, "print timings instead of ids");
  app.add_option("--repeat", repeat, "encode the input this many times (--bench)");
  app.add_flag("--no-special", no_special, "treat special-token text as plain text");
  app.add_flag("--lines", per_line, "encode each line separately (as many short documents)");
  CLI11_PARSE(app, argc, argv);
  try {
    const std::string text = read_file(input);
    const double t_load = thread_cpu_seconds();
    const lrsa::data::Tokenizer tok = lrsa::data::Tokenizer::load(tokenizer_spec);
    const double load_s = thread_cpu_seconds() - t_load;

    std::vector<std::string_view> docs;
    if (per_line) {
      size_t start = 0;
      while (start < text.size()) {
        const size_t nl = text.find('\n', start);
        const size_t end = nl == std::string::npos ? text.size() : nl + 1;
        docs.push_back(std::string_view(text).substr(start, end - start));
        start = end;
      }
    } else {
      docs.push_back(text);
    }
    std::vector<int32_t> ids;
    double best_s = 1e30;
    for (int r = 0; r < (bench ? repeat : 1); ++r) {
      ids.clear();
      const double t0 = thread_cpu_seconds();
      for (std::string_view d : docs) tok.encode_append(d, !no_special, ids);
      best_s = std::min(best_s, thread_cpu_seconds() - t0);
    }
    if (bench) {
      std::printf("{\"tokenizer\": \"%s\", \"bytes\": %zu, \"documents\": %zu, \"tokens\": %zu, \"load_cpu_s\": %.4f, "
                  "\"encode_cpu_s\": %.4f, \"mb_per_s\": %.2f}\n",
                  tokenizer_spec.c_str(), text.size(), docs.size(), ids.size(), load_s, best_s,
                  double(text.size()) / 1e6 / best_s);
    } else {
      std::string out = "[";
      for (size_t i = 0; i < ids.size(); ++i) out += (i ? "," : "") + std::to_string(ids[i]);
      std::printf("%s]\n", out.c_str());
    }
  } catch (const lrsa::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
