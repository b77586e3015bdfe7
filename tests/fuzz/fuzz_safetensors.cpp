// libFuzzer target for the safetensors reader: a header is untrusted input. Every input must
// either parse into tensors lying inside the buffer or throw lrsa::Error; nothing may crash,
// hang, or read outside the input (AddressSanitizer checks each tensor's bytes below).
#include <cstddef>
#include <cstdint>

#include "lrsa/model/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const lrsa::model::SafetensorsContents contents =
        lrsa::model::parse_safetensors(data, size, "fuzz-input", nullptr);
    uint8_t checksum = 0;
    for (const auto& [name, tensor] : contents.tensors) {
      const auto* bytes = static_cast<const uint8_t*>(tensor.data());
      for (size_t i = 0; i < tensor.nbytes(); ++i) checksum ^= bytes[i];
    }
    volatile uint8_t sink = checksum;  // keeps the reads from being optimized away
    (void)sink;
  } catch (const lrsa::Error&) {
    // Rejected input: the expected outcome for most mutations.
  }
  return 0;
}
