// sql::Database over one SQLite connection.
//
// One connection, guarded by a mutex: the daemon's threads take turns, which
// keeps every transaction trivially isolated inside the process. BEGIN
// IMMEDIATE plus busy_timeout keeps write transactions isolated against
// other processes opening the same file too (the CLI, a second replica).
#pragma once

#include <sqlite3.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/storage/sql.h"

namespace keywarden::service::sqlite {

// How long a statement waits for another process's write lock before it
// fails with UNAVAILABLE.
inline constexpr int kBusyTimeoutMs = 10000;

struct ConnectionCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Connection = std::unique_ptr<sqlite3, ConnectionCloser>;

// "<what>: <sqlite3_errmsg> (<sqlite3_errstr>)" with the code sql.h
// promises; failures of the database itself are marked MarkDatabaseFault.
absl::Status Error(sqlite3* db, int rc, std::string_view what);
// "<what>: <strerror>" with a code that fits errno.
absl::Status ErrnoError(int err, std::string_view what);

// Runs statements on a connection the caller holds (no transaction of its
// own): what the migrations and the administration use.
class ConnectionSession final : public sql::Session {
 public:
  explicit ConnectionSession(sqlite3* db) : db_(db) {}
  sql::Dialect dialect() const override { return sql::Dialect::kSqlite; }
  absl::StatusOr<std::vector<sql::Row>> Query(std::string_view what, std::string_view sql,
                                              const std::vector<sql::Value>& params) override;
  absl::StatusOr<int64_t> Execute(std::string_view what, std::string_view sql,
                                  const std::vector<sql::Value>& params) override;
  absl::Status LockForTransaction(int64_t) override { return absl::OkStatus(); }

 private:
  sqlite3* db_;
};

// Runs `sql` (one or more statements, no parameters).
absl::Status Exec(sqlite3* db, const char* sql, std::string_view what);

// A transaction on a connection: BEGIN IMMEDIATE (write) or BEGIN (read);
// rolls back unless committed, so an early error return leaves nothing.
class ScopedTransaction {
 public:
  explicit ScopedTransaction(sqlite3* db) : db_(db) {}
  ~ScopedTransaction();
  ScopedTransaction(const ScopedTransaction&) = delete;
  ScopedTransaction& operator=(const ScopedTransaction&) = delete;
  absl::Status Begin(std::string_view what, sql::Access access = sql::Access::kWrite);
  absl::Status Commit(std::string_view what);

 private:
  sqlite3* db_;
  bool open_ = false;
};

class SqliteDatabase final : public sql::Database {
 public:
  explicit SqliteDatabase(Connection db) : db_(std::move(db)) {}
  sql::Dialect dialect() const override { return sql::Dialect::kSqlite; }
  absl::Status Transact(std::string_view what, sql::Access access,
                        const std::function<absl::Status(sql::Session&)>& fn) override;
  // Runs `fn` on the connection, under the mutex (backup of an in-memory
  // database, checks that read SQLite's own tables).
  absl::Status WithConnection(const std::function<absl::Status(sqlite3*)>& fn);

 private:
  std::mutex mu_;
  const Connection db_;
};

}  // namespace keywarden::service::sqlite
