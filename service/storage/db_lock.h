// Who may write the CA database file: one keywardend at a time, and no
// offline tool (keywarden restore) while one runs. For SQLite this is an
// exclusive flock(2) on "<database>.lock" (mode 0600, holding the holder's
// pid and name for messages: "123 keywardend"), held for the holder's lifetime and released by the
// kernel when it exits, however it exits. On PostgreSQL the same DatabaseLock
// is an advisory lock (LockPostgresDatabase in postgres_database.h): shared
// by every keywardend replica, exclusive for keywarden restore.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace keywarden::service {

class DatabaseLock {
 public:
  virtual ~DatabaseLock() = default;
  // The lock file ("<database>.lock").
  virtual const std::string& path() const = 0;
  // Checks the lock is still held and takes it again if it was lost
  // (PostgreSQL: the server closed its connection, e.g. restarted). A flock
  // cannot be lost: OK. FAILED_PRECONDITION when someone else took it
  // meanwhile; another error when it cannot be checked now.
  virtual absl::Status Refresh() { return absl::OkStatus(); }
};

// The lock file of a database file: "<database_path>.lock".
std::string DatabaseLockPath(const std::string& database_path);

// Takes the exclusive lock of the database at `database_path` without
// waiting, and writes this process's pid and `holder` ("keywardend",
// "keywarden restore": lower-case letters and spaces) into the lock file.
// FAILED_PRECONDITION "keywardend is running (pid N) ..." when another
// process holds it (the pid and name that process wrote); another error when the lock file cannot
// be made or locked. The lock is released when the returned object is
// destroyed (or the process ends).
absl::StatusOr<std::unique_ptr<DatabaseLock>> LockDatabase(const std::string& database_path,
                                                           const std::string& holder);

}  // namespace keywarden::service
