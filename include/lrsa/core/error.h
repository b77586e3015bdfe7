#pragma once
// Errors are exceptions carrying context (op, shapes, dtypes, file, field); nothing aborts on
// user error. LRSA_CHECK formats its message (fmt syntax) only when the check fails.
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <variant>
#include <vector>

#if !defined(__CUDACC__)
#include <fmt/format.h>
#include <fmt/ranges.h>
#endif

namespace lrsa {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

#if !defined(__CUDACC__)
template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}
#else
// nvcc cannot compile fmt's compile-time format checks, so CUDA files pass their arguments,
// type-erased, to a formatter compiled by the host compiler (src/core/error.cpp).
namespace detail {
using FormatArg = std::variant<long long, unsigned long long, double, std::string>;
[[noreturn]] void fail_formatted(const char* format, const std::vector<FormatArg>& args);
template <typename T>
FormatArg format_arg(const T& v) {
  if constexpr (std::is_floating_point_v<T>) return double(v);
  else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) return (long long)v;
  else if constexpr (std::is_integral_v<T>) return (unsigned long long)v;
  else return std::string(std::string_view(v));
}
}  // namespace detail
template <typename... Args>
[[noreturn]] void fail(const char* format, const Args&... args) {
  detail::fail_formatted(format, {detail::format_arg(args)...});
}
#endif

}  // namespace lrsa

#define LRSA_CHECK(cond, ...)        \
  do {                               \
    if (!(cond)) {                   \
      ::lrsa::fail(__VA_ARGS__);     \
    }                                \
  } while (0)
