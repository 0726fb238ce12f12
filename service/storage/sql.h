// Backend-neutral SQL for the CA store. The store's logic (what a request,
// a certificate, the audit chain are, and which checks every write makes)
// is written once over this interface; a backend only runs statements and
// transactions: SQLite (sqlite_database.cc) and PostgreSQL
// (postgres_database.cc).
//
// SQL text names its parameters ?1, ?2, ... (each may appear more than
// once); a backend that numbers them differently ($1 in PostgreSQL)
// rewrites the text. Values only ever reach SQL as parameters; the text is
// built from constant fragments.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keywarden::service::sql {

// A BLOB (SQLite) / BYTEA (PostgreSQL) value. An empty one is an empty
// blob, not NULL.
struct Bytes {
  std::vector<uint8_t> data;
};

// NULL, an integer (INTEGER / BIGINT), text (TEXT) or bytes.
using Value = std::variant<std::monostate, int64_t, std::string, Bytes>;

// Empty text as NULL: for columns where "absent" is NULL.
inline Value TextOrNull(const std::string& s) {
  return s.empty() ? Value{} : Value{s};
}

// One result row. Reading a column of another type than stored converts
// (an integer column read as text gives its decimal digits); NULL reads as
// 0, "" or no bytes.
class Row {
 public:
  explicit Row(std::vector<Value> values) : values_(std::move(values)) {}
  size_t size() const { return values_.size(); }
  bool IsNull(size_t i) const;
  int64_t Int(size_t i) const;
  std::string Text(size_t i) const;
  std::vector<uint8_t> Blob(size_t i) const;
  // The value as read (NULL beyond the last column).
  Value value(size_t i) const { return i < values_.size() ? values_[i] : Value{}; }

 private:
  std::vector<Value> values_;
};

enum class Dialect { kSqlite, kPostgresql };
const char* DialectName(Dialect d);  // "SQLite", "PostgreSQL"

// One connection inside one open transaction.
class Session {
 public:
  virtual ~Session() = default;
  virtual Dialect dialect() const = 0;

  // Runs one statement and returns its rows (none for a statement without
  // results). Errors are "<what>: <the database's message>" with:
  //   ALREADY_EXISTS     a unique or primary key taken;
  //   FAILED_PRECONDITION a foreign key not satisfied, or a trigger's refusal;
  //   INVALID_ARGUMENT   another constraint (NOT NULL, CHECK, type);
  //   UNAVAILABLE etc.   the database itself failing, marked with
  //                      MarkDatabaseFault (store.h): disk full, I/O,
  //                      connection lost, locked, read-only, corrupt.
  virtual absl::StatusOr<std::vector<Row>> Query(std::string_view what, std::string_view sql,
                                                 const std::vector<Value>& params = {}) = 0;
  // Runs one statement and returns how many rows it inserted, updated or
  // deleted.
  virtual absl::StatusOr<int64_t> Execute(std::string_view what, std::string_view sql,
                                          const std::vector<Value>& params = {}) = 0;

  // Serializes this transaction, from here to its end, with every other
  // transaction (in any process) that takes the same key: the audit chain,
  // a counter. SQLite: nothing to do (a write transaction already holds the
  // database's one write lock). PostgreSQL: pg_advisory_xact_lock(key).
  virtual absl::Status LockForTransaction(int64_t key) = 0;
};

enum class Access {
  kRead,   // reads only (SQLite: a deferred transaction)
  kWrite,  // may write (SQLite: BEGIN IMMEDIATE, the write lock up front)
};

class Database {
 public:
  virtual ~Database() = default;
  virtual Dialect dialect() const = 0;

  // Runs `fn` in one transaction: commits when it returns OK, rolls back
  // and returns its error otherwise. A transient conflict (PostgreSQL
  // serialization failure or deadlock, a connection lost before COMMIT was
  // sent) reruns the whole of `fn`, a bounded number of times with backoff;
  // so `fn` acts only through the session and may run more than once. A
  // COMMIT whose outcome is unknown (the connection lost while committing)
  // is never rerun: it is reported UNAVAILABLE, marked as a database fault.
  virtual absl::Status Transact(std::string_view what, Access access,
                                const std::function<absl::Status(Session&)>& fn) = 0;
};

// Lock keys for Session::LockForTransaction.
inline constexpr int64_t kAuditChainLock = 0x4b57'4341'0001;  // "KWCA" 1
inline constexpr int64_t kCounterLock = 0x4b57'4341'0002;
inline constexpr int64_t kLeaseLock = 0x4b57'4341'0003;
inline constexpr int64_t kMigrationLock = 0x4b57'4341'0004;  // session-level, while migrating
// Session-level, not a transaction lock: every keywardend on PostgreSQL
// holds it shared (pg_advisory_lock_shared) on a connection of its own for
// its lifetime; `keywarden restore` takes it exclusively
// (pg_try_advisory_lock) and refuses while any keywardend holds it
// (LockPostgresDatabase in postgres_database.h).
inline constexpr int64_t kDaemonLock = 0x4b57'4341'0005;

}  // namespace keywarden::service::sql
