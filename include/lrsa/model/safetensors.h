#pragma once
// safetensors checkpoints (the Hugging Face format):
//   [8-byte little-endian header length N][N bytes of JSON header][data buffer]
// header: {"__metadata__": {str: str}, name: {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}}
// with offsets relative to the data buffer. Sharded checkpoints add model.safetensors.index.json:
//   {"metadata": {"total_size": bytes}, "weight_map": {name: "model-00001-of-00002.safetensors"}}.
// Files are untrusted input: every field is validated and every error names the file and tensor.
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "lrsa/core/tensor.h"

namespace lrsa::model {

using TensorMap = std::map<std::string, Tensor>;

struct SafetensorsContents {
  TensorMap tensors;
  std::map<std::string, std::string> metadata;  // the header's "__metadata__"
};

// Largest header accepted (the format's own readers cap it at 100 MB).
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Parses a safetensors image in memory. Tensors are CPU views of `data` that hold `keepalive`
// (a tensor whose offset is not a multiple of its element size is copied instead, so every
// returned tensor is aligned). `source` names the input in errors.
SafetensorsContents parse_safetensors(const void* data, size_t size, std::string_view source,
                                      std::shared_ptr<void> keepalive);

// Memory-maps one .safetensors file read-only. The tensors view the mapping, which lives as long
// as any of them: never write into them (clone() first).
SafetensorsContents read_safetensors(const std::filesystem::path& path);

// Loads every tensor of a checkpoint: `path` is a .safetensors file, a .safetensors.index.json
// file, or a directory holding model.safetensors or model.safetensors.index.json (the single
// file wins when both exist, as in transformers).
TensorMap load_safetensors_checkpoint(const std::filesystem::path& path);

// Writes one file atomically (temporary file in the same directory, fsync, rename, fsync of the
// directory). Tensors may live on any device and have any strides; they are written contiguous.
void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Writes a checkpoint into `dir` (created if missing): model.safetensors when the data fits in
// `max_shard_bytes` (0: no limit), else model-0000i-of-0000n.safetensors shards plus
// model.safetensors.index.json, written last. Files of an earlier checkpoint in the other layout
// (or shards the new index no longer names) are removed so that no stale weights are loaded.
void write_safetensors_checkpoint(const std::filesystem::path& dir, const TensorMap& tensors,
                                  uint64_t max_shard_bytes = 0,
                                  const std::map<std::string, std::string>& metadata = {});

}  // namespace lrsa::model
