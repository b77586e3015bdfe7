// Runtime smoke program: exercises tensors and reports devices and memory.
#include <cstdio>

#include "lrsa/core/tensor.h"

int main() {
  using namespace lrsa;
  try {
    Tensor x = Tensor::normal({256, 256}, 1234, 0, 0.0f, 1.0f, DType::BF16);
    Tensor xt = x.transpose(0, 1).contiguous();
    double sum = 0;
    for (float v : xt.to_floats()) sum += double(v) * v;
    std::printf("lrsa runtime: %s, mean square %.4f, cpu peak %.1f KiB\n", xt.describe().c_str(), sum / double(xt.numel()),
                double(memory_stats(Device::cpu()).peak_bytes) / 1024);
    std::printf("cuda: %s\n", cuda_available() ? "available" : cuda_unavailable_reason().c_str());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
