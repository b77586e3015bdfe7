#pragma once
#include <cstdint>
#include <string>

namespace lrsa {

enum class DeviceType : uint8_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::CPU, 0}; }
  static constexpr Device cuda(int i = 0) { return {DeviceType::CUDA, i}; }
  constexpr bool is_cpu() const { return type == DeviceType::CPU; }
  constexpr bool is_cuda() const { return type == DeviceType::CUDA; }
  constexpr bool operator==(const Device&) const = default;
  std::string str() const;  // "cpu", "cuda:0"
};

// Parses "cpu", "cuda", "cuda:N"; throws lrsa::Error otherwise.
Device parse_device(const std::string& text);

// Number of usable CUDA devices: 0 when built without CUDA or when no GPU/driver is present.
int cuda_device_count();
bool cuda_available();

// Why no CUDA device is usable ("built without CUDA", "no CUDA device: <driver message>"), or "".
std::string cuda_unavailable_reason();

}  // namespace lrsa
