#include <catch2/catch.hpp>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>

#include <nlohmann/json.hpp>

#include "lrsa/core/device.h"
#include "lrsa/model/safetensors.h"
#include "model/file_io.h"

using namespace lrsa;
using namespace lrsa::model;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

fs::path fresh_dir(const std::string& name) {
  const fs::path dir = fs::temp_directory_path() / fmt::format("lrsa-test-safetensors-{}-{}", name, ::getpid());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::vector<std::string> dir_listing(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

std::vector<uint8_t> bytes_of(const Tensor& t) {
  const Tensor host = t.to(Device::cpu()).contiguous();
  const auto* p = static_cast<const uint8_t*>(host.data());
  return std::vector<uint8_t>(p, p + host.nbytes());
}

std::vector<uint8_t> file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// One tensor of every dtype, with odd sizes so that offsets are not all multiples of 8.
TensorMap sample_tensors(Device device = Device::cpu()) {
  TensorMap t;
  t["model.embed_tokens.weight"] = Tensor::normal({7, 5}, 1, 0, 0.0f, 1.0f, DType::BF16, device);
  t["model.norm.weight"] = Tensor::normal({3}, 1, 1, 0.0f, 1.0f, DType::F16, device);
  t["lm_head.weight"] = Tensor::normal({5, 3}, 1, 2, 0.0f, 1.0f, DType::F32, device);
  t["ids"] = Tensor::from_ints({1, -2, 3}, {3}, DType::I32, device);
  t["big_ids"] = Tensor::from_ints({int64_t(1) << 40, -7}, {2}, DType::I64, device);
  t["mask"] = Tensor::from_ints({0, 1, 1, 0, 1}, {5}, DType::U8, device);
  t["scalar"] = Tensor::full({}, 2.5, DType::F32, device);
  t["empty"] = Tensor::empty({0, 4}, DType::BF16, device);
  return t;
}

void check_same_tensors(const TensorMap& got, const TensorMap& want) {
  REQUIRE(got.size() == want.size());
  for (const auto& [name, t] : want) {
    INFO(name);
    REQUIRE(got.count(name) == 1);
    const Tensor& g = got.at(name);
    CHECK(g.dtype() == t.dtype());
    CHECK(g.shape() == t.shape());
    CHECK(g.device().is_cpu());
    CHECK(reinterpret_cast<uintptr_t>(g.data()) % g.element_size() == 0);
    CHECK(bytes_of(g) == bytes_of(t));
  }
}

// A safetensors image from a header text and a data buffer; the length field may lie.
void write_raw(const fs::path& path, const std::string& header, size_t data_bytes,
               std::optional<uint64_t> length = std::nullopt) {
  const uint64_t n = length.value_or(header.size());
  std::ofstream out(path, std::ios::binary);
  for (int i = 0; i < 8; ++i) out.put(char(uint8_t(n >> (8 * i))));
  out << header << std::string(data_bytes, '\x01');
}

std::string read_error(const fs::path& path) {
  try {
    read_safetensors(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("safetensors round trip keeps every byte, dtype and shape", "[model]") {
  const fs::path dir = fresh_dir("roundtrip");
  const TensorMap tensors = sample_tensors();
  const fs::path path = dir / "model.safetensors";
  write_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});

  const SafetensorsContents back = read_safetensors(path);
  check_same_tensors(back.tensors, tensors);
  CHECK(back.metadata == std::map<std::string, std::string>{{"format", "pt"}, {"note", "round trip"}});

  // HF layout: 8-byte length, JSON padded with spaces so the data buffer starts 8-byte aligned.
  const std::vector<uint8_t> raw = file_bytes(path);
  uint64_t n = 0;
  std::memcpy(&n, raw.data(), 8);
  CHECK(n % 8 == 0);
  const std::string header(raw.begin() + 8, raw.begin() + 8 + long(n));
  CHECK(json::parse(header)["lm_head.weight"]["dtype"] == "F32");
  CHECK(json::parse(header)["lm_head.weight"]["shape"] == json::array({5, 3}));

  // Tensors view the mapping and keep it alive after the contents are gone.
  Tensor lm_head;
  {
    lm_head = read_safetensors(path).tensors.at("lm_head.weight");
  }
  CHECK(bytes_of(lm_head) == bytes_of(tensors.at("lm_head.weight")));

  // Non-contiguous inputs are written in logical order.
  const Tensor base = Tensor::from_floats({1, 2, 3, 4, 5, 6}, {2, 3});
  write_safetensors(dir / "t.safetensors", {{"t", base.transpose(0, 1)}});
  CHECK(read_safetensors(dir / "t.safetensors").tensors.at("t").to_floats() == std::vector<float>{1, 4, 2, 5, 3, 6});
  fs::remove_all(dir);
}

TEST_CASE("sharded checkpoints round trip through the index and replace stale layouts", "[model]") {
  const fs::path dir = fresh_dir("sharded");
  const TensorMap tensors = sample_tensors();
  write_safetensors_checkpoint(dir, tensors, /*max_shard_bytes=*/64, {{"format", "pt"}});

  const json index = read_json_file(dir / "model.safetensors.index.json");
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += t.nbytes();
  CHECK(index["metadata"]["total_size"] == total);
  CHECK(index["weight_map"].size() == tensors.size());
  const std::vector<std::string> files = dir_listing(dir);
  REQUIRE(files.size() >= 3);  // the sample does not fit two 64-byte shards
  const std::string last_shard = files[files.size() - 2];
  CHECK(last_shard == fmt::format("model-{:05d}-of-{:05d}.safetensors", files.size() - 1, files.size() - 1));
  CHECK(files.back() == "model.safetensors.index.json");
  for (const auto& [name, file] : index["weight_map"].items())
    CHECK(read_safetensors(dir / file.get<std::string>()).tensors.count(name) == 1);

  check_same_tensors(load_safetensors_checkpoint(dir), tensors);
  check_same_tensors(load_safetensors_checkpoint(dir / "model.safetensors.index.json"), tensors);

  // A single-file rewrite removes the index and its shards: no stale weights remain.
  write_safetensors_checkpoint(dir, tensors);
  CHECK(dir_listing(dir) == std::vector<std::string>{"model.safetensors"});
  check_same_tensors(load_safetensors_checkpoint(dir), tensors);
  check_same_tensors(load_safetensors_checkpoint(dir / "model.safetensors"), tensors);

  // And a sharded rewrite removes model.safetensors, which loaders would otherwise prefer.
  write_safetensors_checkpoint(dir, tensors, 100);
  CHECK(dir_listing(dir) == std::vector<std::string>{"model-00001-of-00002.safetensors",
                                                    "model-00002-of-00002.safetensors",
                                                    "model.safetensors.index.json"});
  check_same_tensors(load_safetensors_checkpoint(dir), tensors);
  write_safetensors_checkpoint(dir, tensors, 64);
  CHECK(dir_listing(dir) == files);  // the two-shard set is gone, not left beside the new one

  CHECK_THROWS_WITH(load_safetensors_checkpoint(dir / "nothing"), Catch::Contains("nothing: cannot open"));
  fs::remove_all(dir);
}

TEST_CASE("sharded index errors name the index and the tensor", "[model]") {
  const fs::path dir = fresh_dir("index");
  write_safetensors(dir / "a.safetensors", {{"x", Tensor::zeros({2}, DType::F32)}});
  const fs::path index = dir / "model.safetensors.index.json";
  const auto error_with = [&](const json& weight_map) {
    write_file_atomic(index, json{{"weight_map", weight_map}}.dump());
    try {
      load_safetensors_checkpoint(dir);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK(error_with({{"x", "a.safetensors"}}).empty());
  CHECK_THAT(error_with({{"x", "a.safetensors"}, {"y", "a.safetensors"}}),
             Catch::Contains(index.string() + ": tensor 'y' is mapped to " + (dir / "a.safetensors").string() +
                             ", which does not contain it"));
  CHECK_THAT(error_with({{"x", "../a.safetensors"}}),
             Catch::Contains("tensor 'x' maps to '../a.safetensors', which is not a file name"));
  CHECK_THAT(error_with({{"x", 3}}), Catch::Contains("weight_map['x'] must be a file name string"));
  CHECK_THAT(error_with({{"x", "b.safetensors"}}), Catch::Contains((dir / "b.safetensors").string() + ": cannot open"));
  CHECK_THAT(error_with(json::object()), Catch::Contains(index.string() + ": weight_map is empty"));
  fs::remove(index);
  CHECK_THROWS_WITH(load_safetensors_checkpoint(dir), Catch::Contains("has neither model.safetensors nor"));
  fs::remove_all(dir);
}

TEST_CASE("malformed safetensors files are rejected with the file and tensor named", "[model]") {
  const fs::path dir = fresh_dir("malformed");
  const fs::path path = dir / "bad.safetensors";
  const std::string file = path.string();
  using Catch::Contains;
  const auto entry = [](const char* dtype, json shape, uint64_t begin, uint64_t end) {
    return json{{"dtype", dtype}, {"shape", shape}, {"data_offsets", {begin, end}}};
  };
  const auto header_of = [](const json& j) { return j.dump(); };

  { std::ofstream(path, std::ios::binary) << "abc"; }
  CHECK_THAT(read_error(path), Contains(file + ": file is 3 bytes, too short"));
  { std::ofstream out(path, std::ios::binary); }
  CHECK_THAT(read_error(path), Contains(file + ": file is 0 bytes"));

  write_raw(path, "{}", 0, 1000);
  CHECK_THAT(read_error(path), Contains(file + ": header length 1000 runs past the end of the file (10 bytes)"));
  write_raw(path, "{}", 0, uint64_t(1) << 62);
  CHECK_THAT(read_error(path), Contains(file + ": header length 4611686018427387904 exceeds the limit"));
  write_raw(path, "{\"w\": {\"dtype\": ", 0);
  CHECK_THAT(read_error(path), Contains(file + ": header is not valid JSON"));
  write_raw(path, std::string(100000, '[') + std::string(100000, ']'), 0);
  CHECK_THAT(read_error(path), Contains(file + ": header nests deeper than a safetensors header (3 levels)"));
  write_raw(path, header_of({{"w", {{"dtype", "F32"}, {"shape", {{2}}}, {"data_offsets", {0, 8}}}}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": header nests deeper"));
  write_raw(path, "[1, 2]", 0);
  CHECK_THAT(read_error(path), Contains(file + ": header must be a JSON object, got array"));

  write_raw(path, header_of({{"w", entry("F64", {2}, 0, 16)}}), 16);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': unsupported dtype '\"F64\"'"));
  write_raw(path, header_of({{"w", {{"shape", {2}}, {"data_offsets", {0, 8}}}}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': missing string field 'dtype'"));
  write_raw(path, header_of({{"w", {{"dtype", "F32"}, {"data_offsets", {0, 8}}}}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': missing array field 'shape'"));
  write_raw(path, header_of({{"w", {{"dtype", "F32"}, {"shape", {2}}, {"data_offsets", {0}}}}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': 'data_offsets' must be an array [begin, end]"));
  write_raw(path, header_of({{"w", 7}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': entry must be an object"));
  write_raw(path, header_of({{"w", entry("F32", {-2}, 0, 8)}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': shape entry must be a non-negative integer, got -2"));
  write_raw(path, header_of({{"w", entry("F32", {2.5}, 0, 8)}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': shape entry must be a non-negative integer, got 2.5"));

  write_raw(path, header_of({{"w", entry("F32", {4}, 0, 16)}}), 12);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': data_offsets [0, 16] run past the data buffer (12 bytes)"));
  write_raw(path, header_of({{"w", entry("F32", {0}, 8, 4)}}), 12);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': data_offsets [8, 4] end before they begin"));
  write_raw(path, header_of({{"w", entry("F32", {3}, 0, 8)}}), 12);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': data_offsets [0, 8] hold 8 bytes but F32[3] needs 12"));
  write_raw(path, header_of({{"a", entry("F32", {2}, 0, 8)}, {"b", entry("F32", {2}, 4, 12)}}), 12);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'b' bytes [4, 12) overlap tensor 'a' bytes [0, 8)"));
  // 2^32 * 2^32 elements: numel overflows 64 bits, which must not wrap around to a small size.
  write_raw(path, header_of({{"w", entry("BF16", {uint64_t(1) << 32, uint64_t(1) << 32}, 0, 0)}}), 0);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': shape [4294967296,4294967296] overflows"));
  write_raw(path, header_of({{"w", entry("F32", {uint64_t(1) << 62}, 0, 0)}}), 0);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': shape [4611686018427387904] overflows"));
  write_raw(path, header_of({{"w", entry("F32", {1}, uint64_t(-1), uint64_t(-1))}}), 8);
  CHECK_THAT(read_error(path), Contains(file + ": tensor 'w': data_offsets begin 18446744073709551615 is too large"));

  write_raw(path, header_of({{"__metadata__", {{"format", 1}}}}), 0);
  CHECK_THAT(read_error(path), Contains(file + ": __metadata__['format'] must be a string, got 1"));
  write_raw(path, header_of({{"__metadata__", "pt"}}), 0);
  CHECK_THAT(read_error(path), Contains(file + ": __metadata__ must be an object of strings"));

  // A valid file cut short: the last tensor's bytes are missing.
  write_safetensors(path, {{"a", Tensor::zeros({4}, DType::F32)}, {"b", Tensor::zeros({4}, DType::F32)}});
  fs::resize_file(path, fs::file_size(path) - 4);
  CHECK_THAT(read_error(path), Contains(file + ": tensor '") && Contains("run past the data buffer"));
  fs::remove_all(dir);
}

TEST_CASE("safetensors accepts gaps, empty tensors and misaligned offsets", "[model]") {
  const fs::path dir = fresh_dir("lenient");
  const fs::path path = dir / "odd.safetensors";
  // "b" (F32) starts at data offset 2 and "e" is empty inside "a": legal, if unusual.
  const json header = {{"a", {{"dtype", "U8"}, {"shape", {2}}, {"data_offsets", {0, 2}}}},
                       {"e", {{"dtype", "F16"}, {"shape", {0}}, {"data_offsets", {1, 1}}}},
                       {"b", {{"dtype", "F32"}, {"shape", {1}}, {"data_offsets", {2, 6}}}},
                       {"c", {{"dtype", "U8"}, {"shape", {1}}, {"data_offsets", {9, 10}}}}};
  std::string text = header.dump();
  text.resize((text.size() + 7) / 8 * 8, ' ');
  write_raw(path, text, 0);
  {
    std::ofstream out(path, std::ios::binary | std::ios::app);
    const float value = 1.25f;
    out.put(7).put(9).write(reinterpret_cast<const char*>(&value), 4);
    out << "abc" << '\x05';
  }
  const SafetensorsContents c = read_safetensors(path);
  CHECK(c.tensors.at("a").to_ints() == std::vector<int64_t>{7, 9});
  CHECK(c.tensors.at("b").to_floats() == std::vector<float>{1.25f});  // copied: offset 2 is misaligned
  CHECK(reinterpret_cast<uintptr_t>(c.tensors.at("b").data()) % 4 == 0);
  CHECK(c.tensors.at("c").to_ints() == std::vector<int64_t>{5});
  CHECK(c.tensors.at("e").numel() == 0);
  fs::remove_all(dir);
}

TEST_CASE("writes are atomic: the target is old or new, never partial, and no temporary remains", "[model]") {
  const fs::path dir = fresh_dir("atomic");
  const fs::path path = dir / "model.safetensors";
  const TensorMap first = {{"w", Tensor::full({4}, 1.0, DType::F32)}};
  write_safetensors(path, first);
  const std::vector<uint8_t> first_bytes = file_bytes(path);
  CHECK(dir_listing(dir) == std::vector<std::string>{"model.safetensors"});

  {  // An abandoned write (an exception between write and commit) leaves the old file intact.
    AtomicFile file(path);
    file.write("garbage", 7);
    CHECK(dir_listing(dir).size() == 2);  // the temporary sits beside the target while writing
  }
  CHECK(dir_listing(dir) == std::vector<std::string>{"model.safetensors"});
  CHECK(file_bytes(path) == first_bytes);

  CHECK_THROWS_WITH(write_safetensors(path, {{"w", Tensor()}}), Catch::Contains(path.string() + ": tensor 'w' is undefined"));
  CHECK_THROWS_WITH(write_safetensors(path, {{"__metadata__", Tensor::zeros({1}, DType::F32)}}),
                    Catch::Contains("invalid tensor name '__metadata__'"));
  CHECK(file_bytes(path) == first_bytes);

  const TensorMap second = {{"w", Tensor::full({8}, 2.0, DType::BF16)}};
  write_safetensors(path, second);
  CHECK(dir_listing(dir) == std::vector<std::string>{"model.safetensors"});
  check_same_tensors(read_safetensors(path).tensors, second);

  CHECK_THROWS_WITH(write_safetensors(dir / "missing" / "x.safetensors", first),
                    Catch::Contains((dir / "missing" / "x.safetensors").string() + ": cannot create temporary file"));
  fs::remove_all(dir);
}

TEST_CASE("safetensors writes tensors that live on the GPU", "[model][cuda]") {
  const fs::path dir = fresh_dir("cuda");
  const TensorMap on_gpu = sample_tensors(Device::cuda(0));
  write_safetensors_checkpoint(dir, on_gpu, 64);
  check_same_tensors(load_safetensors_checkpoint(dir), on_gpu);
  fs::remove_all(dir);
}
