#pragma once
// Checkpoint directories: <root>/step-00000100/ holds whatever the trainer writes (model,
// optimizer shards, trainer state, resolved config) plus manifest.json with each file's size and
// 64-bit content hash. A checkpoint is built in <root>/.tmp-step-00000100-<pid>, every file and
// the directory are fsync'ed, and one rename publishes it: a crash at any moment leaves either
// no new checkpoint or a complete one, and the previous checkpoints untouched. Deleting a step
// directory (pruning, or replacing a checkpoint of the same step) first renames it to a ".tmp-"
// name, so a step directory is never seen partially deleted: a crash leaves it complete or gone.
//
// With several ranks, rank 0 creates the temporary directory and tells the others its name,
// every rank writes its files (optimizer shards), all agree that every write succeeded
// (a collective, which is also the barrier), then rank 0 alone hashes and fsyncs every file,
// writes the manifest and renames. A rank that dies before the rename leaves only a temporary
// directory, which resume ignores and removes.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "lrsa/dist/comm.h"

namespace lrsa::train {

// Hash of a file's bytes (64-bit, word-wise multiply-rotate; detects corruption, not tampering).
uint64_t file_hash(const std::filesystem::path& path);

// Creates the temporary directory, calls write(tmp_dir) (on every rank of `group`), writes the
// manifest over every regular file in it, fsyncs and renames it to <root>/step-<step>. Returns
// the published path (on every rank). When write throws (on any rank), the temporary directory
// is removed and an error propagates on every rank; earlier checkpoints are never touched. An
// existing checkpoint of the same step is replaced: moved aside, the new one renamed in, then the
// old one deleted (a crash between the two renames leaves no step directory of that step, and
// resume falls back to the previous checkpoint).
std::filesystem::path publish_checkpoint(const std::filesystem::path& root, int64_t step,
                                         const std::function<void(const std::filesystem::path&)>& write,
                                         dist::Comm& group = dist::Comm::world());

// Checks a checkpoint directory against its manifest; returns "" when valid, else the reason.
std::string verify_checkpoint(const std::filesystem::path& dir);

// Step directories under root, newest first (by step number).
std::vector<std::filesystem::path> list_checkpoints(const std::filesystem::path& root);

// The newest checkpoint that verifies. Each newer invalid one is reported through `warn`
// ("skipping <dir>: <reason>"). Leftover temporary directories are ignored (and removed).
std::optional<std::filesystem::path> latest_valid_checkpoint(const std::filesystem::path& root,
                                                             const std::function<void(const std::string&)>& warn);

// Deletes all but the newest keep_last step directories (keep_last <= 0 keeps all): renames each
// to a ".tmp-pruned-..." name, syncs the root, then deletes them (rank 0 only, like publishing).
void prune_checkpoints(const std::filesystem::path& root, int64_t keep_last);

int64_t checkpoint_step(const std::filesystem::path& dir);  // -1 when not a step directory

}  // namespace lrsa::train
