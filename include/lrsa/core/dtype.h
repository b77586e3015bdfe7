#pragma once
// Element types of the runtime and host-side conversions for the 16-bit floats.
// Device code uses cuda_bf16.h / cuda_fp16.h; the bit patterns are identical.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

namespace lrsa {

enum class DType : uint8_t { F32, BF16, F16, I32, I64, U8 };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "f32";
    case DType::BF16: return "bf16";
    case DType::F16: return "f16";
    case DType::I32: return "i32";
    case DType::I64: return "i64";
    case DType::U8: return "u8";
  }
  return "?";
}

constexpr bool is_floating(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

// Parses "f32"/"float32", "bf16"/"bfloat16", ... ; throws lrsa::Error naming the text otherwise.
DType dtype_from_name(std::string_view name);

// bf16: the upper half of an IEEE f32; conversion rounds to nearest even, NaN stays NaN.
struct bf16 {
  uint16_t bits;
};
struct f16 {
  uint16_t bits;
};

inline float bf16_to_float(bf16 h) {
  uint32_t u = uint32_t(h.bits) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline bf16 float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16{uint16_t(u >> 16)};
}

float f16_to_float(f16 h);
f16 float_to_f16(float f);

// Round-trips through bf16: what storing a value as bf16 does to it.
inline float round_bf16(float f) { return bf16_to_float(float_to_bf16(f)); }

}  // namespace lrsa
