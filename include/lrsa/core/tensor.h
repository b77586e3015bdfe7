#pragma once
// Tensor: shape/strides/offset (in elements) over a shared Storage. Views (slice, select,
// reshape of a contiguous tensor, permute, transpose) share storage; contiguous(), clone(),
// to() copy. All ops on the runtime take and return Tensors; kernels work on contiguous ones.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "lrsa/core/allocator.h"
#include "lrsa/core/dtype.h"
#include "lrsa/core/error.h"

namespace lrsa {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_str(const Shape& shape);
Shape contiguous_strides(const Shape& shape);

// A block of memory on one device. Owned blocks come from that device's allocator; external
// ones (a memory-mapped file) keep their owner alive through `keepalive` (may be empty when the
// caller guarantees the memory outlives every view).
class Storage {
 public:
  Storage(size_t bytes, Device device);
  Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keepalive);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Device device_;
  bool owned_ = true;
  std::shared_ptr<void> keepalive_;
};

class Tensor {
 public:
  Tensor() = default;  // undefined tensor

  // --- creation ---
  static Tensor empty(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor zeros(const Shape& shape, DType dtype, Device device = Device::cpu());
  static Tensor full(const Shape& shape, double value, DType dtype, Device device = Device::cpu());
  // Copies host values (converted to dtype) into a new tensor on `device`.
  static Tensor from_floats(const std::vector<float>& values, const Shape& shape,
                            DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor from_ints(const std::vector<int64_t>& values, const Shape& shape,
                          DType dtype = DType::I32, Device device = Device::cpu());
  // Wraps memory owned elsewhere; `keepalive` (may be null) is held as long as any view exists.
  static Tensor from_blob(void* data, const Shape& shape, DType dtype, Device device,
                          std::shared_ptr<void> keepalive);
  // Uniform [lo, hi) / normal(mean, std) from the Philox stream (seed, stream): element i of the
  // result is the same number on every device (see rng.h).
  static Tensor uniform(const Shape& shape, uint64_t seed, uint64_t stream, float lo, float hi,
                        DType dtype = DType::F32, Device device = Device::cpu());
  static Tensor normal(const Shape& shape, uint64_t seed, uint64_t stream, float mean, float std,
                       DType dtype = DType::F32, Device device = Device::cpu());

  // --- properties ---
  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  Device device() const;
  int64_t dim() const { return int64_t(shape_.size()); }
  const Shape& shape() const { return shape_; }
  const Shape& strides() const { return strides_; }
  int64_t size(int64_t d) const { return shape_.at(size_t(wrap_dim(d))); }
  int64_t stride(int64_t d) const { return strides_.at(size_t(wrap_dim(d))); }
  int64_t offset() const { return offset_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  size_t element_size() const { return dtype_size(dtype_); }
  bool is_contiguous() const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  std::string describe() const;  // "bf16[4, 8] cuda:0"

  // Pointer to element 0 of this view.
  void* data() const;
  // Typed pointer; throws when T does not match dtype().
  template <typename T>
  T* data_as() const;

  // --- views (share storage) ---
  Tensor slice(int64_t d, int64_t start, int64_t end) const;  // [start, end) along d
  Tensor select(int64_t d, int64_t index) const;              // drops dimension d
  Tensor view(const Shape& shape) const;                      // needs contiguous; one -1 allowed
  Tensor permute(const std::vector<int64_t>& order) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  Tensor unsqueeze(int64_t d) const;
  // Splits dimension d into `sizes` (one -1 allowed), keeping strides: [T, 3*H*D] sliced to
  // [T, H*D] unflattens to [T, H, D] with stride(0) = 3*H*D. Needs d's elements to be evenly strided.
  Tensor unflatten(int64_t d, const Shape& sizes) const;

  // --- copies ---
  Tensor reshape(const Shape& shape) const;  // a view when possible, else a contiguous copy
  Tensor contiguous() const;                 // this when already contiguous
  Tensor clone() const;
  Tensor to(Device device) const;            // this when already there
  Tensor to(DType dtype) const;              // this when already that dtype
  Tensor to(Device device, DType dtype) const;
  void copy_(const Tensor& src);             // same shape; any device/dtype/strides
  void fill_(double value);
  void zero_() { fill_(0.0); }

  // --- host access (copies to CPU f32/f64; for tests, logging and small data) ---
  std::vector<float> to_floats() const;
  std::vector<double> to_doubles() const;
  std::vector<int64_t> to_ints() const;
  double item() const;  // numel() == 1

 private:
  int64_t wrap_dim(int64_t d) const;

  std::shared_ptr<Storage> storage_;
  Shape shape_, strides_;
  int64_t offset_ = 0;
  DType dtype_ = DType::F32;
};

template <typename T>
constexpr DType dtype_of();
template <> constexpr DType dtype_of<float>() { return DType::F32; }
template <> constexpr DType dtype_of<bf16>() { return DType::BF16; }
template <> constexpr DType dtype_of<f16>() { return DType::F16; }
template <> constexpr DType dtype_of<int32_t>() { return DType::I32; }
template <> constexpr DType dtype_of<int64_t>() { return DType::I64; }
template <> constexpr DType dtype_of<uint8_t>() { return DType::U8; }

template <typename T>
T* Tensor::data_as() const {
  LRSA_CHECK(defined(), "data_as: undefined tensor");
  LRSA_CHECK(dtype_ == dtype_of<T>(), "data_as<{}>: tensor is {}", dtype_name(dtype_of<T>()),
             describe());
  return static_cast<T*>(data());
}

// Throws unless t is defined, on `device`, of `dtype` (skipped when unset) and contiguous.
// `op` and `name` go into the message: "rmsnorm_forward: x must be contiguous, got bf16[..] ...".
void check_tensor(const Tensor& t, const char* op, const char* name, std::initializer_list<DType> dtypes,
                  bool need_contiguous = true);
// A tensor as rows of contiguous elements: dimension 0 indexes the rows, `stride` elements apart,
// and the other dimensions must be contiguous (a slice of a fused buffer, say); stride == width
// when the whole tensor is contiguous. For elementwise ops that take such views.
struct RowLayout {
  int64_t rows, width, stride;
};
RowLayout row_layout(const Tensor& t, const char* op, const char* name);
void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors);
void check_shape(const Tensor& t, const char* op, const char* name, const Shape& expected);

}  // namespace lrsa
