#include "lrsa/core/error.h"

#include <fmt/args.h>

namespace lrsa::detail {

using FormatArg = std::variant<long long, unsigned long long, double, std::string>;
[[noreturn]] void fail_formatted(const char* format, const std::vector<FormatArg>& args);

void fail_formatted(const char* format, const std::vector<FormatArg>& args) {
  fmt::dynamic_format_arg_store<fmt::format_context> store;
  for (const FormatArg& a : args) std::visit([&](const auto& v) { store.push_back(v); }, a);
  throw Error(fmt::vformat(format, store));
}

}  // namespace lrsa::detail
