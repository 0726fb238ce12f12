// The daemon's state directory: the directory of the SQLite database
// ([database] path), made owner-only (0700) when missing, as systemd's
// StateDirectory= would.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden::service {

// Creates the directory `database_path` is in when it does not exist: the
// missing parents like `mkdir -p` (0755 before the umask), the directory
// itself 0700 whatever the umask. An existing directory is left as it is.
// The error names the directory and the reason.
absl::Status EnsureStateDirectory(const std::string& database_path);

// For --check-config, changing nothing: "DIR exists (mode 0700)" or "DIR
// will be created with mode 0700"; an error when DIR exists but is not a
// directory, or a parent is not one.
absl::StatusOr<std::string> DescribeStateDirectory(const std::string& database_path);

}  // namespace keywarden::service
