// Files an operator asked for: written whole or not at all, never over an
// existing file unless asked.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace keywarden::pki {

enum class Overwrite { kRefuse, kReplace };

// Writes to a temporary file beside `path`, fsyncs, then links it into
// place (kRefuse: fails if `path` exists, atomically) or renames over it.
// `mode` is the new file's permission bits.
absl::Status WriteFileAtomically(const std::string& path, std::span<const uint8_t> data,
                                 Overwrite overwrite, unsigned mode = 0644);
absl::Status WriteFileAtomically(const std::string& path, const std::string& data,
                                 Overwrite overwrite, unsigned mode = 0644);

// Fails early (before any token work) when `path` exists and may not be replaced.
absl::Status CheckWritable(const std::string& path, Overwrite overwrite);

absl::StatusOr<std::vector<uint8_t>> ReadFileBytes(const std::string& path,
                                                   size_t max_size = 64 << 20);

}  // namespace keywarden::pki
