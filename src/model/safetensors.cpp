#include "lrsa/model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/file_io.h"

namespace lrsa::model {

using nlohmann::json;

namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";
constexpr int kMaxHeaderDepth = 3;

struct DTypeName {
  DType dtype;
  const char* name;
};
constexpr DTypeName kDTypeNames[] = {{DType::F32, "F32"}, {DType::BF16, "BF16"}, {DType::F16, "F16"},
                                     {DType::I32, "I32"}, {DType::I64, "I64"},   {DType::U8, "U8"}};

const char* safetensors_dtype_name(DType dtype) {
  for (const DTypeName& d : kDTypeNames)
    if (d.dtype == dtype) return d.name;
  fail("safetensors: dtype {} has no safetensors name", dtype_name(dtype));
}

// Short rendering of an untrusted JSON value for error messages.
std::string json_excerpt(const json& v) {
  std::string text = v.dump();
  if (text.size() > 80) text = text.substr(0, 77) + "...";
  return text;
}

// A non-negative JSON integer that fits int64 (shapes and offsets), or an error naming `what`.
uint64_t json_size(const json& v, std::string_view source, const std::string& name, const char* what) {
  LRSA_CHECK(v.is_number_unsigned(), "{}: tensor '{}': {} must be a non-negative integer, got {}", source, name,
             what, json_excerpt(v));
  const uint64_t u = v.get<uint64_t>();
  LRSA_CHECK(u <= uint64_t(INT64_MAX), "{}: tensor '{}': {} {} is too large", source, name, what, u);
  return u;
}

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;  // byte range in the data buffer
};

Entry parse_entry(const std::string& name, const json& v, uint64_t data_size, std::string_view source) {
  LRSA_CHECK(v.is_object(), "{}: tensor '{}': entry must be an object, got {}", source, name, json_excerpt(v));
  Entry e{name, DType::F32, {}, 0, 0};

  const auto dtype_it = v.find("dtype");
  LRSA_CHECK(dtype_it != v.end() && dtype_it->is_string(), "{}: tensor '{}': missing string field 'dtype'", source,
             name);
  const std::string& dtype_text = dtype_it->get_ref<const std::string&>();
  const DTypeName* found = std::find_if(std::begin(kDTypeNames), std::end(kDTypeNames),
                                        [&](const DTypeName& d) { return dtype_text == d.name; });
  LRSA_CHECK(found != std::end(kDTypeNames),
             "{}: tensor '{}': unsupported dtype '{}' (supported: F32, BF16, F16, I32, I64, U8)", source, name,
             json_excerpt(*dtype_it));
  e.dtype = found->dtype;

  const auto shape_it = v.find("shape");
  LRSA_CHECK(shape_it != v.end() && shape_it->is_array(), "{}: tensor '{}': missing array field 'shape'", source,
             name);
  // numel * element size must not overflow: a header is free to claim absurd dimensions.
  uint64_t bytes = dtype_size(e.dtype);
  for (const json& d : *shape_it) {
    const uint64_t extent = json_size(d, source, name, "shape entry");
    e.shape.push_back(int64_t(extent));
    LRSA_CHECK(!__builtin_mul_overflow(bytes, extent, &bytes) && bytes <= uint64_t(INT64_MAX),
               "{}: tensor '{}': shape {} overflows the size of a tensor", source, name, json_excerpt(*shape_it));
  }

  const auto offsets_it = v.find("data_offsets");
  LRSA_CHECK(offsets_it != v.end() && offsets_it->is_array() && offsets_it->size() == 2,
             "{}: tensor '{}': 'data_offsets' must be an array [begin, end]", source, name);
  e.begin = json_size((*offsets_it)[0], source, name, "data_offsets begin");
  e.end = json_size((*offsets_it)[1], source, name, "data_offsets end");
  LRSA_CHECK(e.begin <= e.end, "{}: tensor '{}': data_offsets [{}, {}] end before they begin", source, name,
             e.begin, e.end);
  LRSA_CHECK(e.end <= data_size, "{}: tensor '{}': data_offsets [{}, {}] run past the data buffer ({} bytes)",
             source, name, e.begin, e.end, data_size);
  LRSA_CHECK(e.end - e.begin == bytes,
             "{}: tensor '{}': data_offsets [{}, {}] hold {} bytes but {}{} needs {}", source, name, e.begin, e.end,
             e.end - e.begin, dtype_text, shape_str(e.shape), bytes);
  return e;
}

// Tensors may leave gaps but must not share bytes. Empty tensors occupy nothing.
void check_no_overlap(std::vector<Entry>& entries, std::string_view source) {
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) { return a.begin < b.begin; });
  const Entry* previous = nullptr;  // the non-empty entry reaching furthest so far
  for (const Entry& e : entries) {
    if (e.begin == e.end) continue;
    if (previous != nullptr)
      LRSA_CHECK(e.begin >= previous->end, "{}: tensor '{}' bytes [{}, {}) overlap tensor '{}' bytes [{}, {})",
                 source, e.name, e.begin, e.end, previous->name, previous->begin, previous->end);
    previous = &e;
  }
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void check_plain_file_name(const std::string& file, std::string_view source, const std::string& tensor) {
  // The index is untrusted: a weight_map entry must not reach outside the checkpoint directory.
  LRSA_CHECK(!file.empty() && file != "." && file != ".." && file.find('/') == std::string::npos &&
                 file.find('\0') == std::string::npos,
             "{}: tensor '{}' maps to '{}', which is not a file name in the checkpoint directory", source, tensor, file);
}

TensorMap load_index(const std::filesystem::path& index_path) {
  const std::string source = index_path.string();
  const json index = read_json_file(index_path);
  LRSA_CHECK(index.is_object(), "{}: index must be a JSON object", source);
  const auto map_it = index.find("weight_map");
  LRSA_CHECK(map_it != index.end() && map_it->is_object(), "{}: missing object field 'weight_map'", source);

  std::map<std::string, std::vector<std::string>> names_by_file;
  for (const auto& [name, file] : map_it->items()) {
    LRSA_CHECK(file.is_string(), "{}: weight_map['{}'] must be a file name string, got {}", source, name,
               json_excerpt(file));
    check_plain_file_name(file.get<std::string>(), source, name);
    names_by_file[file.get<std::string>()].push_back(name);
  }
  LRSA_CHECK(!names_by_file.empty(), "{}: weight_map is empty", source);

  TensorMap tensors;
  for (const auto& [file, names] : names_by_file) {
    const std::filesystem::path shard_path = index_path.parent_path() / file;
    SafetensorsContents shard = read_safetensors(shard_path);
    for (const std::string& name : names) {
      const auto it = shard.tensors.find(name);
      LRSA_CHECK(it != shard.tensors.end(), "{}: tensor '{}' is mapped to {}, which does not contain it", source,
                 name, shard_path.string());
      tensors.emplace(name, it->second);
    }
  }
  return tensors;
}

// Shard files named by an existing index, so a rewrite can remove those it no longer uses (only
// plain *.safetensors names: an odd index must not make us delete anything else).
std::set<std::string> indexed_files(const std::filesystem::path& index_path) {
  std::set<std::string> files;
  if (!std::filesystem::exists(index_path)) return files;
  try {
    const json index = read_json_file(index_path);
    if (index.is_object() && index.contains("weight_map") && index["weight_map"].is_object())
      for (const auto& [name, file] : index["weight_map"].items())
        if (file.is_string() && file.get<std::string>().find('/') == std::string::npos &&
            file.get<std::string>().ends_with(".safetensors"))
          files.insert(file.get<std::string>());
  } catch (const Error&) {
    // An unreadable old index names nothing we could safely remove; it is replaced below.
  }
  return files;
}

void remove_file(const std::filesystem::path& path) {
  std::error_code ec;
  std::filesystem::remove(path, ec);
  LRSA_CHECK(!ec, "{}: cannot remove stale checkpoint file: {}", path.string(), ec.message());
}

}  // namespace

SafetensorsContents parse_safetensors(const void* data, size_t size, std::string_view source,
                                      std::shared_ptr<void> keepalive) {
  const auto* bytes = static_cast<const uint8_t*>(data);
  LRSA_CHECK(size >= 8, "{}: file is {} bytes, too short for the 8-byte header length", source, size);
  const uint64_t header_len = read_u64_le(bytes);
  LRSA_CHECK(header_len <= kMaxSafetensorsHeaderBytes, "{}: header length {} exceeds the limit of {} bytes", source,
             header_len, kMaxSafetensorsHeaderBytes);
  LRSA_CHECK(header_len <= size - 8, "{}: header length {} runs past the end of the file ({} bytes)", source,
             header_len, size);

  // A header nests three levels deep ({name: {"shape": [..]}}); refusing anything deeper while
  // parsing bounds the memory that a hostile header of deeply nested brackets could claim.
  const auto depth_limit = [source](int depth, json::parse_event_t event, json&) {
    if ((event == json::parse_event_t::object_start || event == json::parse_event_t::array_start) &&
        depth >= kMaxHeaderDepth)
      fail("{}: header nests deeper than a safetensors header ({} levels)", source, kMaxHeaderDepth);
    return true;
  };
  json header;
  try {
    header = json::parse(bytes + 8, bytes + 8 + header_len, depth_limit);
  } catch (const json::exception& e) {
    fail("{}: header is not valid JSON: {}", source, e.what());
  }
  LRSA_CHECK(header.is_object(), "{}: header must be a JSON object, got {}", source, header.type_name());

  const uint8_t* buffer = bytes + 8 + header_len;
  const uint64_t buffer_size = size - 8 - header_len;
  SafetensorsContents contents;
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__") {
      LRSA_CHECK(value.is_object(), "{}: __metadata__ must be an object of strings, got {}", source,
                 json_excerpt(value));
      for (const auto& [key, text] : value.items()) {
        LRSA_CHECK(text.is_string(), "{}: __metadata__['{}'] must be a string, got {}", source, key,
                   json_excerpt(text));
        contents.metadata.emplace(key, text.get<std::string>());
      }
      continue;
    }
    entries.push_back(parse_entry(name, value, buffer_size, source));
  }
  check_no_overlap(entries, source);

  for (const Entry& e : entries) {
    void* p = const_cast<uint8_t*>(buffer + e.begin);
    Tensor t;
    if (e.begin == e.end || reinterpret_cast<uintptr_t>(p) % dtype_size(e.dtype) == 0) {
      t = Tensor::from_blob(p, e.shape, e.dtype, Device::cpu(), keepalive);
    } else {  // misaligned for its element type (the format does not promise alignment): copy
      t = Tensor::empty(e.shape, e.dtype);
      std::memcpy(t.data(), p, e.end - e.begin);
    }
    contents.tensors.emplace(e.name, std::move(t));
  }
  return contents;
}

SafetensorsContents read_safetensors(const std::filesystem::path& path) {
  const std::string source = path.string();
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  LRSA_CHECK(fd >= 0, "{}: cannot open: {}", source, std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail("{}: not a regular file", source);
  }
  const size_t size = size_t(st.st_size);
  if (size < 8) {  // too short to hold the header length (and mmap cannot map an empty file)
    ::close(fd);
    fail("{}: file is {} bytes, too short for the 8-byte header length", source, size);
  }
  void* mapping = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);  // the mapping keeps the file open
  LRSA_CHECK(mapping != MAP_FAILED, "{}: mmap of {} bytes failed: {}", source, size, std::strerror(err));
  std::shared_ptr<void> keepalive(mapping, [size](void* p) { ::munmap(p, size); });
  return parse_safetensors(mapping, size, source, std::move(keepalive));
}

TensorMap load_safetensors_checkpoint(const std::filesystem::path& path) {
  if (std::filesystem::is_directory(path)) {
    if (std::filesystem::exists(path / kSingleFile)) return read_safetensors(path / kSingleFile).tensors;
    if (std::filesystem::exists(path / kIndexFile)) return load_index(path / kIndexFile);
    fail("{}: checkpoint directory has neither {} nor {}", path.string(), kSingleFile, kIndexFile);
  }
  const std::string name = path.filename().string();
  if (name.size() > 5 && name.ends_with(".json")) return load_index(path);
  return read_safetensors(path).tensors;
}

void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  const std::string source = path.string();
  // Wider elements first: with the data buffer 8-byte aligned, every offset is then a multiple of
  // its tensor's element size and readers can view the mapping without copying.
  std::vector<const std::pair<const std::string, Tensor>*> order;
  for (const auto& item : tensors) {
    LRSA_CHECK(item.second.defined(), "{}: tensor '{}' is undefined", source, item.first);
    LRSA_CHECK(!item.first.empty() && item.first != "__metadata__", "{}: invalid tensor name '{}'", source,
               item.first);
    order.push_back(&item);
  }
  std::stable_sort(order.begin(), order.end(), [](const auto* a, const auto* b) {
    return a->second.element_size() > b->second.element_size();
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const auto* item : order) {
    const Tensor& t = item->second;
    header[item->first] = {{"dtype", safetensors_dtype_name(t.dtype())},
                           {"shape", t.shape()},
                           {"data_offsets", {offset, offset + t.nbytes()}}};
    offset += t.nbytes();
  }
  std::string header_text = header.dump();
  header_text.resize((header_text.size() + 7) / 8 * 8, ' ');  // data buffer starts 8-byte aligned
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = uint8_t(uint64_t(header_text.size()) >> (8 * i));

  AtomicFile file(path);
  file.write(length, sizeof(length));
  file.write(header_text.data(), header_text.size());
  for (const auto* item : order) {
    // One tensor at a time on the host: a GPU model is never copied whole into host memory.
    const Tensor host = item->second.to(Device::cpu()).contiguous();
    file.write(host.data(), host.nbytes());
  }
  file.commit();
}

void write_safetensors_checkpoint(const std::filesystem::path& dir, const TensorMap& tensors, uint64_t max_shard_bytes,
                                  const std::map<std::string, std::string>& metadata) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  LRSA_CHECK(!ec, "{}: cannot create checkpoint directory: {}", dir.string(), ec.message());
  const std::set<std::string> old_shards = indexed_files(dir / kIndexFile);

  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.defined() ? t.nbytes() : 0;

  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    write_safetensors(dir / kSingleFile, tensors, metadata);
    for (const std::string& file : old_shards)
      if (file != kSingleFile) remove_file(dir / file);
    remove_file(dir / kIndexFile);
    return;
  }

  // Greedy in name order; a tensor larger than the limit gets a shard of its own.
  std::vector<TensorMap> shards(1);
  uint64_t shard_bytes = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t bytes = t.defined() ? t.nbytes() : 0;
    if (!shards.back().empty() && shard_bytes + bytes > max_shard_bytes) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().emplace(name, t);
    shard_bytes += bytes;
  }

  json weight_map = json::object();
  std::set<std::string> new_files;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string file = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    write_safetensors(dir / file, shards[i], metadata);
    for (const auto& item : shards[i]) weight_map[item.first] = file;
    new_files.insert(file);
  }
  const json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  write_file_atomic(dir / kIndexFile, index.dump(2) + "\n");
  for (const std::string& file : old_shards)
    if (!new_files.contains(file) && file != kSingleFile) remove_file(dir / file);
  remove_file(dir / kSingleFile);
}

}  // namespace lrsa::model
