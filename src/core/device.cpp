#include "lrsa/core/device.h"

#include "lrsa/core/cuda_backend.h"
#include "lrsa/core/error.h"

namespace lrsa {

std::string Device::str() const { return is_cpu() ? "cpu" : fmt::format("cuda:{}", index); }

Device parse_device(const std::string& text) {
  if (text == "cpu") return Device::cpu();
  if (text == "cuda") return Device::cuda(0);
  if (text.rfind("cuda:", 0) == 0) {
    const std::string digits = text.substr(5);
    if (!digits.empty() && digits.find_first_not_of("0123456789") == std::string::npos)
      return Device::cuda(std::stoi(digits));
  }
  fail("unknown device '{}' (expected cpu, cuda or cuda:N)", text);
}

std::string cuda_unavailable_reason() {
#ifdef LRSA_WITH_CUDA
  std::string reason;
  return cuda::device_count(&reason) > 0 ? std::string() : reason;
#else
  return "built without CUDA (no nvcc at configure time)";
#endif
}

int cuda_device_count() {
#ifdef LRSA_WITH_CUDA
  std::string reason;
  return cuda::device_count(&reason);
#else
  return 0;
#endif
}

bool cuda_available() { return cuda_device_count() > 0; }

}  // namespace lrsa
