// sql::Database over one SQLite connection.
//
// One connection, guarded by a mutex: the daemon's threads take turns, which
// keeps every transaction trivially isolated inside the process. BEGIN
// IMMEDIATE plus busy_timeout keeps write transactions isolated against
// other processes opening the same file too (the CLI, a second replica).
#pragma once

#include <sqlite3.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

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

// Prepared statements of one connection, kept by their SQL text so that a
// statement the daemon runs on every request is parsed and planned once
// (SQLITE_PREPARE_PERSISTENT), not on every call: parsing was ~11 % of
// keywardend's CPU per issued certificate. SQLite re-prepares a kept
// statement by itself when the schema changes. At most kMaxStatements are
// kept; beyond that a statement is prepared for the one call and finalized.
// Not thread-safe: the owner serialises use (SqliteDatabase's mutex).
class StatementCache {
 public:
  static constexpr size_t kMaxStatements = 128;
  StatementCache() = default;
  ~StatementCache();
  StatementCache(const StatementCache&) = delete;
  StatementCache& operator=(const StatementCache&) = delete;

  // The kept statement for `sql`, or nullptr when there is none and no room
  // to keep one more (the caller prepares its own).
  sqlite3_stmt* Find(std::string_view sql) const;
  bool HasRoom() const { return statements_.size() < kMaxStatements; }
  void Keep(std::string_view sql, sqlite3_stmt* statement);
  size_t size() const { return statements_.size(); }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, sqlite3_stmt*, Hash, std::equal_to<>> statements_;
};

// Runs statements on a connection the caller holds (no transaction of its
// own): what the migrations and the administration use. With `cache`, the
// statements are prepared once and kept there.
class ConnectionSession final : public sql::Session {
 public:
  explicit ConnectionSession(sqlite3* db, StatementCache* cache = nullptr)
      : db_(db), cache_(cache) {}
  sql::Dialect dialect() const override { return sql::Dialect::kSqlite; }
  absl::StatusOr<std::vector<sql::Row>> Query(std::string_view what, std::string_view sql,
                                              const std::vector<sql::Value>& params) override;
  absl::StatusOr<int64_t> Execute(std::string_view what, std::string_view sql,
                                  const std::vector<sql::Value>& params) override;
  absl::Status LockForTransaction(int64_t) override { return absl::OkStatus(); }

 private:
  sqlite3* db_;
  StatementCache* cache_;
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

// Write transactions commit in groups: a thread that finds no commit under
// way runs every unit of work queued by then in one SQLite transaction, each
// in a savepoint of its own (a unit that fails is rolled back alone, the
// others go on), and commits them with one fsync; the threads that queued
// them get their own unit's result only after that commit. Under load this
// turns one fsync per certificate into one per group (synchronous=FULL
// stays: nothing is acknowledged before it is durable), with the same
// outcome as running the units one after the other in queue order. A unit
// alone runs as before, without a savepoint.
class SqliteDatabase final : public sql::Database {
 public:
  // Units of work committed together at most.
  static constexpr size_t kMaxGroup = 64;

  // With `reader` (a second connection to the same file, WAL mode), reads
  // run there and do not wait for a write's commit; without it (an
  // in-memory database) they share the one connection.
  explicit SqliteDatabase(Connection db, Connection reader = nullptr)
      : db_(std::move(db)), reader_(std::move(reader)) {}
  sql::Dialect dialect() const override { return sql::Dialect::kSqlite; }
  absl::Status Transact(std::string_view what, sql::Access access,
                        const std::function<absl::Status(sql::Session&)>& fn) override;
  // How many write transactions were committed, and how many units of work
  // they carried (tests, benchmarks).
  struct GroupStats {
    uint64_t commits = 0;
    uint64_t units = 0;
  };
  GroupStats group_stats();
  // Runs `fn` on the connection, under the mutex (backup of an in-memory
  // database, checks that read SQLite's own tables).
  absl::Status WithConnection(const std::function<absl::Status(sqlite3*)>& fn);
  // How many prepared statements are kept on the writing connection (tests).
  size_t KeptStatements();

 private:
  struct Unit {
    std::string_view what;
    const std::function<absl::Status(sql::Session&)>* fn = nullptr;
    absl::Status result;
    bool done = false;
  };
  // Runs `group` in one transaction and sets each unit's result.
  void RunGroup(const std::vector<Unit*>& group);

  std::mutex mu_;  // the connection
  const Connection db_;
  StatementCache statements_;  // destroyed before db_ is closed
  std::mutex reader_mu_;
  const Connection reader_;
  StatementCache reader_statements_;  // destroyed before reader_ is closed

  std::mutex queue_mu_;  // queue_, leading_, stats_
  std::condition_variable queue_cv_;
  std::deque<Unit*> queue_;
  bool leading_ = false;  // a thread is running a group
  GroupStats stats_;
};

}  // namespace keywarden::service::sqlite
