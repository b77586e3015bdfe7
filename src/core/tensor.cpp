#include "lrsa/core/tensor.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "lrsa/core/cuda_backend.h"
#include "lrsa/core/rng.h"

namespace lrsa {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

std::string shape_str(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Shape contiguous_strides(const Shape& shape) {
  Shape strides(shape.size());
  int64_t s = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = s;
    s *= std::max<int64_t>(shape[i], 1);
  }
  return strides;
}

// ---------------------------------------------------------------------------------------------
// Storage

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  data_ = allocator_for(device).allocate(bytes);
}

Storage::Storage(void* data, size_t bytes, Device device, std::shared_ptr<void> keepalive)
    : data_(data), bytes_(bytes), device_(device), owned_(false), keepalive_(std::move(keepalive)) {}

Storage::~Storage() {
  if (owned_ && data_ != nullptr) allocator_for(device_).deallocate(data_, bytes_);
}

// ---------------------------------------------------------------------------------------------
// Host element conversion

namespace {

double load_element(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(base)[i];
    case DType::BF16: return bf16_to_float(static_cast<const bf16*>(base)[i]);
    case DType::F16: return f16_to_float(static_cast<const f16*>(base)[i]);
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::I64: return double(static_cast<const int64_t*>(base)[i]);
    case DType::U8: return static_cast<const uint8_t*>(base)[i];
  }
  return 0;
}

void store_element(void* base, DType t, int64_t i, double v) {
  switch (t) {
    case DType::F32: static_cast<float*>(base)[i] = float(v); break;
    case DType::BF16: static_cast<bf16*>(base)[i] = float_to_bf16(float(v)); break;
    case DType::F16: static_cast<f16*>(base)[i] = float_to_f16(float(v)); break;
    case DType::I32: static_cast<int32_t*>(base)[i] = int32_t(v); break;
    case DType::I64: static_cast<int64_t*>(base)[i] = int64_t(v); break;
    case DType::U8: static_cast<uint8_t*>(base)[i] = uint8_t(v); break;
  }
}

bool is_integer(DType t) { return !is_floating(t); }

int64_t load_integer(const void* base, DType t, int64_t i) {
  switch (t) {
    case DType::I32: return static_cast<const int32_t*>(base)[i];
    case DType::I64: return static_cast<const int64_t*>(base)[i];
    case DType::U8: return static_cast<const uint8_t*>(base)[i];
    default: return int64_t(load_element(base, t, i));
  }
}

// Contiguous conversion of n elements (host).
void convert_elements(void* dst, DType dst_type, const void* src, DType src_type, int64_t n) {
  if (dst_type == src_type) {
    std::memcpy(dst, src, size_t(n) * dtype_size(dst_type));
    return;
  }
  if (is_integer(dst_type) && is_integer(src_type)) {  // exact for all 64-bit values
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) {
      int64_t v = load_integer(src, src_type, i);
      switch (dst_type) {
        case DType::I32: static_cast<int32_t*>(dst)[i] = int32_t(v); break;
        case DType::I64: static_cast<int64_t*>(dst)[i] = v; break;
        default: static_cast<uint8_t*>(dst)[i] = uint8_t(v); break;
      }
    }
    return;
  }
#pragma omp parallel for if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) store_element(dst, dst_type, i, load_element(src, src_type, i));
}

// Visits the elements of a strided view in row-major order as runs along the last dimension.
template <typename Fn>
void for_each_row(const Tensor& t, Fn&& fn) {
  const int64_t nd = t.dim();
  if (t.numel() == 0) return;
  if (nd == 0) {
    fn(int64_t(0), int64_t(0), int64_t(1), int64_t(1));
    return;
  }
  const int64_t inner = t.size(nd - 1), inner_stride = t.stride(nd - 1);
  const int64_t rows = t.numel() / inner;
  std::vector<int64_t> index(size_t(nd), 0);
  int64_t src = t.offset();
  for (int64_t row = 0; row < rows; ++row) {
    fn(row * inner, src, inner, inner_stride);
    for (int64_t d = nd - 2; d >= 0; --d) {  // odometer over the outer dimensions
      src += t.stride(d);
      if (++index[size_t(d)] < t.size(d)) break;
      src -= t.stride(d) * t.size(d);
      index[size_t(d)] = 0;
    }
  }
}

// Copies a strided host view into a contiguous buffer of the same dtype.
void gather_host(const Tensor& src, void* out) {
  const size_t es = src.element_size();
  const char* base = static_cast<const char*>(src.storage()->data());
  for_each_row(src, [&](int64_t dst_index, int64_t src_index, int64_t count, int64_t stride) {
    char* o = static_cast<char*>(out) + dst_index * int64_t(es);
    if (stride == 1) {
      std::memcpy(o, base + src_index * int64_t(es), size_t(count) * es);
    } else {
      for (int64_t k = 0; k < count; ++k) std::memcpy(o + k * int64_t(es), base + (src_index + k * stride) * int64_t(es), es);
    }
  });
}

// Writes a contiguous buffer (dst's dtype) into a strided host view.
void scatter_host(const Tensor& dst, const void* in) {
  const size_t es = dst.element_size();
  char* base = static_cast<char*>(dst.storage()->data());
  for_each_row(dst, [&](int64_t in_index, int64_t dst_index, int64_t count, int64_t stride) {
    const char* i = static_cast<const char*>(in) + in_index * int64_t(es);
    if (stride == 1) {
      std::memcpy(base + dst_index * int64_t(es), i, size_t(count) * es);
    } else {
      for (int64_t k = 0; k < count; ++k) std::memcpy(base + (dst_index + k * stride) * int64_t(es), i + k * int64_t(es), es);
    }
  });
}

void copy_host(const Tensor& dst, const Tensor& src) {
  std::vector<char> gathered;
  const void* contiguous_src = src.is_contiguous() ? src.data() : nullptr;
  if (contiguous_src == nullptr) {
    gathered.resize(src.nbytes());
    gather_host(src, gathered.data());
    contiguous_src = gathered.data();
  }
  if (dst.is_contiguous()) {
    convert_elements(dst.data(), dst.dtype(), contiguous_src, src.dtype(), src.numel());
    return;
  }
  std::vector<char> converted(dst.nbytes());
  convert_elements(converted.data(), dst.dtype(), contiguous_src, src.dtype(), src.numel());
  scatter_host(dst, converted.data());
}

#ifndef LRSA_WITH_CUDA
[[noreturn]] void no_cuda(const char* what) {
  fail("{}: CUDA tensors need the CUDA backend, and this build has none", what);
}
#endif

}  // namespace

// ---------------------------------------------------------------------------------------------
// Creation

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t s : shape) LRSA_CHECK(s >= 0, "Tensor::empty: negative size in shape {}", shape_str(shape));
  Tensor t;
  t.storage_ = std::make_shared<Storage>(size_t(shape_numel(shape)) * dtype_size(dtype), device);
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) { return full(shape, 0.0, dtype, device); }

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  t.fill_(value);
  return t;
}

Tensor Tensor::from_floats(const std::vector<float>& values, const Shape& shape, DType dtype, Device device) {
  LRSA_CHECK(int64_t(values.size()) == shape_numel(shape), "Tensor::from_floats: {} values for shape {}",
             values.size(), shape_str(shape));
  Tensor host = from_blob(const_cast<float*>(values.data()), shape, DType::F32, Device::cpu(), nullptr);
  Tensor t = empty(shape, dtype, device);
  t.copy_(host);
  return t;
}

Tensor Tensor::from_ints(const std::vector<int64_t>& values, const Shape& shape, DType dtype, Device device) {
  LRSA_CHECK(int64_t(values.size()) == shape_numel(shape), "Tensor::from_ints: {} values for shape {}",
             values.size(), shape_str(shape));
  Tensor host = from_blob(const_cast<int64_t*>(values.data()), shape, DType::I64, Device::cpu(), nullptr);
  Tensor t = empty(shape, dtype, device);
  t.copy_(host);
  return t;
}

Tensor Tensor::from_blob(void* data, const Shape& shape, DType dtype, Device device, std::shared_ptr<void> keepalive) {
  Tensor t;
  t.storage_ = std::make_shared<Storage>(data, size_t(shape_numel(shape)) * dtype_size(dtype), device, std::move(keepalive));
  t.shape_ = shape;
  t.strides_ = contiguous_strides(shape);
  t.dtype_ = dtype;
  return t;
}

Tensor Tensor::uniform(const Shape& shape, uint64_t seed, uint64_t stream, float lo, float hi, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device.is_cuda()) {
#ifdef LRSA_WITH_CUDA
    cuda::fill_uniform(t, seed, stream, lo, hi);
    return t;
#else
    no_cuda("Tensor::uniform");
#endif
  }
  const int64_t n = t.numel();
  void* out = t.data();
#pragma omp parallel for if (n > (1 << 14))
  for (int64_t i = 0; i < n; ++i) store_element(out, dtype, i, lo + (hi - lo) * philox_uniform(seed, stream, uint64_t(i)));
  return t;
}

Tensor Tensor::normal(const Shape& shape, uint64_t seed, uint64_t stream, float mean, float std, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  if (device.is_cuda()) {
#ifdef LRSA_WITH_CUDA
    cuda::fill_normal(t, seed, stream, mean, std);
    return t;
#else
    no_cuda("Tensor::normal");
#endif
  }
  const int64_t n = t.numel();
  void* out = t.data();
#pragma omp parallel for if (n > (1 << 14))
  for (int64_t i = 0; i < n; ++i) store_element(out, dtype, i, mean + std * philox_normal(seed, stream, uint64_t(i)));
  return t;
}

// ---------------------------------------------------------------------------------------------
// Properties

Device Tensor::device() const { return storage_ ? storage_->device() : Device::cpu(); }

bool Tensor::is_contiguous() const {
  if (numel() == 0) return true;  // no element to misplace
  int64_t expected = 1;
  for (size_t i = shape_.size(); i-- > 0;) {
    if (shape_[i] == 1) continue;
    if (strides_[i] != expected) return false;
    expected *= shape_[i];
  }
  return true;
}

std::string Tensor::describe() const {
  if (!defined()) return "undefined tensor";
  return fmt::format("{}{} {}", dtype_name(dtype_), shape_str(shape_), device().str());
}

void* Tensor::data() const {
  LRSA_CHECK(defined(), "data: undefined tensor");
  return static_cast<char*>(storage_->data()) + offset_ * int64_t(dtype_size(dtype_));
}

int64_t Tensor::wrap_dim(int64_t d) const {
  const int64_t nd = dim();
  LRSA_CHECK(d >= -nd && d < nd, "dimension {} out of range for {}", d, describe());
  return d < 0 ? d + nd : d;
}

// ---------------------------------------------------------------------------------------------
// Views

Tensor Tensor::slice(int64_t d, int64_t start, int64_t end) const {
  d = wrap_dim(d);
  const int64_t n = shape_[size_t(d)];
  LRSA_CHECK(0 <= start && start <= end && end <= n, "slice: [{}, {}) out of range for dimension {} of {}",
             start, end, d, describe());
  Tensor t = *this;
  t.offset_ += start * strides_[size_t(d)];
  t.shape_[size_t(d)] = end - start;
  return t;
}

Tensor Tensor::select(int64_t d, int64_t index) const {
  d = wrap_dim(d);
  LRSA_CHECK(index >= 0 && index < shape_[size_t(d)], "select: index {} out of range for dimension {} of {}",
             index, d, describe());
  Tensor t = *this;
  t.offset_ += index * strides_[size_t(d)];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  return t;
}

namespace {
Shape infer_shape(const Shape& requested, int64_t numel, const std::string& from) {
  Shape shape = requested;
  int64_t known = 1, infer_at = -1;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      LRSA_CHECK(infer_at < 0, "view/reshape: more than one -1 in {}", shape_str(requested));
      infer_at = int64_t(i);
    } else {
      LRSA_CHECK(shape[i] >= 0, "view/reshape: negative size in {}", shape_str(requested));
      known *= shape[i];
    }
  }
  if (infer_at >= 0) {
    LRSA_CHECK(known > 0 && numel % known == 0, "view/reshape: cannot infer -1 in {} from {}", shape_str(requested), from);
    shape[size_t(infer_at)] = numel / known;
  }
  LRSA_CHECK(shape_numel(shape) == numel, "view/reshape: shape {} does not match {}", shape_str(requested), from);
  return shape;
}
}  // namespace

Tensor Tensor::view(const Shape& shape) const {
  LRSA_CHECK(is_contiguous(), "view: {} is not contiguous (use reshape)", describe());
  Tensor t = *this;
  t.shape_ = infer_shape(shape, numel(), describe());
  t.strides_ = contiguous_strides(t.shape_);
  return t;
}

Tensor Tensor::reshape(const Shape& shape) const { return is_contiguous() ? view(shape) : contiguous().view(shape); }

Tensor Tensor::permute(const std::vector<int64_t>& order) const {
  LRSA_CHECK(int64_t(order.size()) == dim(), "permute: order {} for {}", shape_str(order), describe());
  std::vector<bool> seen(order.size(), false);
  Tensor t = *this;
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t d = wrap_dim(order[i]);
    LRSA_CHECK(!seen[size_t(d)], "permute: dimension {} repeated in {}", d, shape_str(order));
    seen[size_t(d)] = true;
    t.shape_[i] = shape_[size_t(d)];
    t.strides_[i] = strides_[size_t(d)];
  }
  return t;
}

Tensor Tensor::transpose(int64_t d0, int64_t d1) const {
  std::vector<int64_t> order(static_cast<size_t>(dim()));
  std::iota(order.begin(), order.end(), 0);
  std::swap(order[size_t(wrap_dim(d0))], order[size_t(wrap_dim(d1))]);
  return permute(order);
}

Tensor Tensor::unsqueeze(int64_t d) const {
  LRSA_CHECK(d >= 0 && d <= dim(), "unsqueeze: dimension {} for {}", d, describe());
  Tensor t = *this;
  const int64_t stride = d < dim() ? strides_[size_t(d)] * shape_[size_t(d)] : 1;
  t.shape_.insert(t.shape_.begin() + d, 1);
  t.strides_.insert(t.strides_.begin() + d, stride);
  return t;
}

Tensor Tensor::unflatten(int64_t d, const Shape& sizes) const {
  d = wrap_dim(d);
  const Shape split = infer_shape(sizes, shape_[size_t(d)], describe());
  Tensor t = *this;
  Shape split_strides = contiguous_strides(split);
  for (int64_t& s : split_strides) s *= strides_[size_t(d)];
  t.shape_.erase(t.shape_.begin() + d);
  t.strides_.erase(t.strides_.begin() + d);
  t.shape_.insert(t.shape_.begin() + d, split.begin(), split.end());
  t.strides_.insert(t.strides_.begin() + d, split_strides.begin(), split_strides.end());
  return t;
}

// ---------------------------------------------------------------------------------------------
// Copies

Tensor Tensor::contiguous() const {
  if (is_contiguous()) return *this;
  return clone();
}

Tensor Tensor::clone() const {
  Tensor t = empty(shape_, dtype_, device());
  t.copy_(*this);
  return t;
}

Tensor Tensor::to(Device d) const { return to(d, dtype_); }
Tensor Tensor::to(DType t) const { return to(device(), t); }
Tensor Tensor::to(Device d, DType t) const {
  if (d == device() && t == dtype_) return *this;
  Tensor out = empty(shape_, t, d);
  out.copy_(*this);
  return out;
}

void Tensor::copy_(const Tensor& src) {
  LRSA_CHECK(defined() && src.defined(), "copy_: undefined tensor");
  LRSA_CHECK(shape_ == src.shape_, "copy_: shape mismatch, dst {} src {}", describe(), src.describe());
  if (numel() == 0) return;
  const Device dd = device(), sd = src.device();
  if (dd.is_cpu() && sd.is_cpu()) {
    copy_host(*this, src);
    return;
  }
#ifdef LRSA_WITH_CUDA
  if (dd == sd) {
    cuda::copy_strided(*this, src);
  } else if (sd.is_cpu()) {  // host -> device: convert on the host, then one transfer
    Tensor host = src.to(DType(dtype_)).contiguous();
    Tensor staged = is_contiguous() ? *this : empty(shape_, dtype_, dd);
    cuda::memcpy_bytes(staged.data(), dd, host.data(), sd, host.nbytes());
    if (!is_contiguous()) cuda::copy_strided(*this, staged);
  } else if (dd.is_cpu()) {  // device -> host
    Tensor dev = src.contiguous();
    Tensor staged = empty(shape_, src.dtype_, Device::cpu());
    cuda::memcpy_bytes(staged.data(), dd, dev.data(), sd, dev.nbytes());
    copy_host(*this, staged);
  } else {  // device -> other device
    Tensor dev = src.to(dtype_).contiguous();
    Tensor staged = is_contiguous() ? *this : empty(shape_, dtype_, dd);
    cuda::memcpy_bytes(staged.data(), dd, dev.data(), sd, dev.nbytes());
    if (!is_contiguous()) cuda::copy_strided(*this, staged);
  }
#else
  no_cuda("Tensor::copy_");
#endif
}

void Tensor::fill_(double value) {
  LRSA_CHECK(defined(), "fill_: undefined tensor");
  if (device().is_cuda()) {
#ifdef LRSA_WITH_CUDA
    if (is_contiguous()) {
      cuda::fill(*this, value);
    } else {
      copy_(full(shape_, value, dtype_, device()));
    }
    return;
#else
    no_cuda("Tensor::fill_");
#endif
  }
  std::vector<char> one(element_size());
  store_element(one.data(), dtype_, 0, value);
  const int64_t n = numel();
  const size_t es = element_size();
  if (is_contiguous()) {
    char* out = static_cast<char*>(data());
#pragma omp parallel for if (n > (1 << 16))
    for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * int64_t(es), one.data(), es);
    return;
  }
  std::vector<char> buffer(nbytes());
  for (int64_t i = 0; i < n; ++i) std::memcpy(buffer.data() + i * int64_t(es), one.data(), es);
  scatter_host(*this, buffer.data());
}

// ---------------------------------------------------------------------------------------------
// Host access

std::vector<float> Tensor::to_floats() const {
  Tensor host = to(Device::cpu(), DType::F32).contiguous();
  const float* p = static_cast<const float*>(host.data());
  return std::vector<float>(p, p + host.numel());
}

std::vector<double> Tensor::to_doubles() const {
  Tensor host = to(Device::cpu()).contiguous();
  std::vector<double> out(size_t(host.numel()));
  for (int64_t i = 0; i < host.numel(); ++i) out[size_t(i)] = load_element(host.data(), dtype_, i);
  return out;
}

std::vector<int64_t> Tensor::to_ints() const {
  Tensor host = to(Device::cpu(), DType::I64).contiguous();
  const int64_t* p = static_cast<const int64_t*>(host.data());
  return std::vector<int64_t>(p, p + host.numel());
}

double Tensor::item() const {
  LRSA_CHECK(numel() == 1, "item: {} has {} elements", describe(), numel());
  return to_doubles()[0];
}

// ---------------------------------------------------------------------------------------------
// Argument checks shared by all ops

void check_tensor(const Tensor& t, const char* op, const char* name, std::initializer_list<DType> dtypes,
                  bool need_contiguous) {
  LRSA_CHECK(t.defined(), "{}: {} is undefined", op, name);
  if (dtypes.size() > 0 && std::find(dtypes.begin(), dtypes.end(), t.dtype()) == dtypes.end()) {
    std::vector<std::string_view> names;
    for (DType d : dtypes) names.push_back(dtype_name(d));
    fail("{}: {} must be {}, got {}", op, name, fmt::join(names, " or "), t.describe());
  }
  LRSA_CHECK(!need_contiguous || t.is_contiguous(), "{}: {} must be contiguous, got {} with strides {}", op,
             name, t.describe(), shape_str(t.strides()));
}

RowLayout row_layout(const Tensor& t, const char* op, const char* name) {
  if (t.dim() == 0 || t.numel() == 0) return {1, t.numel(), t.numel()};
  const Tensor row = t.select(0, 0);
  LRSA_CHECK(row.is_contiguous(), "{}: {} must be contiguous after its first dimension, got {} with strides {}", op,
             name, t.describe(), shape_str(t.strides()));
  return {t.size(0), row.numel(), t.size(0) == 1 ? row.numel() : t.stride(0)};
}

void check_same_device(const char* op, std::initializer_list<const Tensor*> tensors) {
  const Tensor* first = nullptr;
  for (const Tensor* t : tensors) {
    if (!t->defined()) continue;
    if (first == nullptr) {
      first = t;
    } else {
      LRSA_CHECK(t->device() == first->device(), "{}: tensors on different devices ({} and {})", op,
                 first->describe(), t->describe());
    }
  }
}

void check_shape(const Tensor& t, const char* op, const char* name, const Shape& expected) {
  LRSA_CHECK(t.shape() == expected, "{}: {} must have shape {}, got {}", op, name, shape_str(expected), t.describe());
}

}  // namespace lrsa
