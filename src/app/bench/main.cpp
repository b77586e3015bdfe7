// lrsa-bench: GPU benchmarks of the lrsa-train kernels, one subcommand per family.
//   lrsa-bench ops [--json PATH] ...   runtime ops against the copy / GEMM ceilings and cuBLAS
//   lrsa-bench infer [--tokens N ...]  KV-cache inference: LRSA vs dense prefill and decode step
//   lrsa-bench --list                  the subcommand names, one per line (for scripts)
#include <cstdio>

#include "app/bench/bench.h"

int main(int argc, char** argv) {
  CLI::App app{"lrsa-bench: GPU benchmarks of the lrsa-train kernels (one subcommand per family)"};
  app.require_subcommand(0, 1);
  bool list = false;
  app.add_flag("--list", list, "print the subcommand names, one per line, and exit");
  const std::vector<lrsa::bench::Subcommand> subcommands = {lrsa::bench::register_ops(app),
                                                            lrsa::bench::register_attention(app),
                                                            lrsa::bench::register_infer(app)};
  CLI11_PARSE(app, argc, argv);
  if (list) {
    for (const auto& s : subcommands) std::printf("%s\n", s.app->get_name().c_str());
    return 0;
  }
  for (const auto& s : subcommands) {
    if (!s.app->parsed()) continue;
    try {
      return s.run();
    } catch (const lrsa::Error& e) {
      std::fprintf(stderr, "lrsa-bench %s: error: %s\n", s.app->get_name().c_str(), e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "%s", app.help().c_str());
  return 2;
}
