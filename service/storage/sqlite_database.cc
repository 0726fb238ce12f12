#include "service/storage/sqlite_database.h"

#include <cerrno>
#include <system_error>

#include "hsm/strings.h"
#include "service/storage/store.h"

namespace keywarden::service::sqlite {
namespace {

absl::StatusCode CodeForSqlite(int rc) {
  switch (rc) {
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_UNIQUE:
      return absl::StatusCode::kAlreadyExists;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
    case SQLITE_CONSTRAINT_TRIGGER:
      return absl::StatusCode::kFailedPrecondition;
    default:
      break;
  }
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
      return absl::StatusCode::kUnavailable;
    case SQLITE_CONSTRAINT:
    case SQLITE_TOOBIG:
    case SQLITE_MISMATCH:
      return absl::StatusCode::kInvalidArgument;
    case SQLITE_CORRUPT:
      return absl::StatusCode::kDataLoss;
    case SQLITE_NOTADB:
      return absl::StatusCode::kFailedPrecondition;
    case SQLITE_FULL:
    case SQLITE_NOMEM:
      return absl::StatusCode::kResourceExhausted;
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::StatusCode::kPermissionDenied;
    default:
      return absl::StatusCode::kInternal;
  }
}

// A prepared statement with its parameters bound: one kept in `cache` (reset
// and its bindings cleared when this is done with it), or one of its own.
class Statement {
 public:
  Statement(sqlite3* db, std::string_view what, StatementCache* cache)
      : db_(db), what_(what), cache_(cache) {}
  ~Statement() {
    if (stmt_ == nullptr) return;
    if (kept_) {
      sqlite3_reset(stmt_);
      sqlite3_clear_bindings(stmt_);
    } else {
      sqlite3_finalize(stmt_);
    }
  }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  absl::Status Prepare(std::string_view sql, const std::vector<sql::Value>& params) {
    int rc = SQLITE_OK;
    if (sqlite3_stmt* kept = cache_ != nullptr ? cache_->Find(sql) : nullptr;
        kept != nullptr && sqlite3_stmt_busy(kept) == 0) {
      stmt_ = kept;
      kept_ = true;
    } else if (cache_ != nullptr && kept == nullptr && cache_->HasRoom()) {
      rc = sqlite3_prepare_v3(db_, sql.data(), static_cast<int>(sql.size()),
                              SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr);
      if (rc == SQLITE_OK && stmt_ != nullptr) {
        cache_->Keep(sql, stmt_);
        kept_ = true;
      }
    } else {
      rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr);
    }
    if (rc != SQLITE_OK) return Error(db_, rc, what_);
    if (stmt_ == nullptr) return absl::InvalidArgumentError(StrCat(what_, ": no statement"));
    for (size_t i = 0; i < params.size() && rc == SQLITE_OK; ++i) {
      const int index = static_cast<int>(i + 1);
      const sql::Value& v = params[i];
      if (const int64_t* n = std::get_if<int64_t>(&v)) {
        rc = sqlite3_bind_int64(stmt_, index, *n);
      } else if (const std::string* s = std::get_if<std::string>(&v)) {
        rc = sqlite3_bind_text64(stmt_, index, s->data(), s->size(), SQLITE_TRANSIENT, SQLITE_UTF8);
      } else if (const sql::Bytes* b = std::get_if<sql::Bytes>(&v)) {
        // sqlite3_bind_blob with a null pointer binds NULL, not an empty blob.
        rc = b->data.empty() ? sqlite3_bind_zeroblob(stmt_, index, 0)
                             : sqlite3_bind_blob64(stmt_, index, b->data.data(), b->data.size(),
                                                   SQLITE_TRANSIENT);
      } else {
        rc = sqlite3_bind_null(stmt_, index);
      }
    }
    if (rc != SQLITE_OK) return Error(db_, rc, what_);
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<sql::Row>> Rows() {
    std::vector<sql::Row> rows;
    while (true) {
      const int rc = sqlite3_step(stmt_);
      if (rc == SQLITE_DONE) return rows;
      if (rc != SQLITE_ROW) return Error(db_, rc, what_);
      const int n = sqlite3_column_count(stmt_);
      std::vector<sql::Value> values;
      values.reserve(static_cast<size_t>(n));
      for (int c = 0; c < n; ++c) {
        switch (sqlite3_column_type(stmt_, c)) {
          case SQLITE_INTEGER:
            values.emplace_back(static_cast<int64_t>(sqlite3_column_int64(stmt_, c)));
            break;
          case SQLITE_BLOB: {
            const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, c));
            const int len = sqlite3_column_bytes(stmt_, c);
            values.emplace_back(sql::Bytes{p == nullptr ? std::vector<uint8_t>()
                                                        : std::vector<uint8_t>(p, p + len)});
            break;
          }
          case SQLITE_NULL:
            values.emplace_back(std::monostate{});
            break;
          default: {  // text (and floats, which the schema has none of)
            const unsigned char* p = sqlite3_column_text(stmt_, c);
            values.emplace_back(
                p == nullptr ? std::string()
                             : std::string(reinterpret_cast<const char*>(p),
                                           static_cast<size_t>(sqlite3_column_bytes(stmt_, c))));
          }
        }
      }
      rows.emplace_back(std::move(values));
    }
  }

 private:
  sqlite3* db_;
  std::string_view what_;
  StatementCache* cache_;
  sqlite3_stmt* stmt_ = nullptr;
  bool kept_ = false;
};

}  // namespace

StatementCache::~StatementCache() {
  for (auto& [sql, statement] : statements_) sqlite3_finalize(statement);
}

sqlite3_stmt* StatementCache::Find(std::string_view sql) const {
  auto it = statements_.find(sql);
  return it == statements_.end() ? nullptr : it->second;
}

void StatementCache::Keep(std::string_view sql, sqlite3_stmt* statement) {
  statements_.emplace(std::string(sql), statement);
}

absl::Status Error(sqlite3* db, int rc, std::string_view what) {
  std::string detail = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
  std::string name = sqlite3_errstr(rc);
  if (name != detail) detail = StrCat(detail, " (", name, ")");
  absl::Status st(CodeForSqlite(rc), StrCat(what, ": ", detail));
  switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_CANTOPEN:
    case SQLITE_IOERR:
    case SQLITE_PROTOCOL:
    case SQLITE_FULL:
    case SQLITE_NOMEM:
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return MarkDatabaseFault(std::move(st));
    default:
      return st;
  }
}

absl::Status ErrnoError(int err, std::string_view what) {
  absl::StatusCode code = absl::StatusCode::kInternal;
  switch (err) {
    case ENOENT:
    case ENOTDIR:
      code = absl::StatusCode::kNotFound;
      break;
    case EACCES:
    case EPERM:
    case EROFS:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EEXIST:
      code = absl::StatusCode::kAlreadyExists;
      break;
    case ENOSPC:
      code = absl::StatusCode::kResourceExhausted;
      break;
    default:
      break;
  }
  return absl::Status(code, StrCat(what, ": ", std::generic_category().message(err)));
}

absl::StatusOr<std::vector<sql::Row>> ConnectionSession::Query(
    std::string_view what, std::string_view sql, const std::vector<sql::Value>& params) {
  Statement s(db_, what, cache_);
  if (absl::Status st = s.Prepare(sql, params); !st.ok()) return st;
  return s.Rows();
}

absl::StatusOr<int64_t> ConnectionSession::Execute(std::string_view what, std::string_view sql,
                                                   const std::vector<sql::Value>& params) {
  Statement s(db_, what, cache_);
  if (absl::Status st = s.Prepare(sql, params); !st.ok()) return st;
  if (auto rows = s.Rows(); !rows.ok()) return rows.status();
  return static_cast<int64_t>(sqlite3_changes64(db_));
}

absl::Status Exec(sqlite3* db, const char* sql, std::string_view what) {
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return Error(db, rc, what);
  return absl::OkStatus();
}

ScopedTransaction::~ScopedTransaction() {
  // SQLite rolls back by itself after some errors (disk full, I/O); only
  // roll back what is still open.
  if (open_ && sqlite3_get_autocommit(db_) == 0) {
    sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
}

absl::Status ScopedTransaction::Begin(std::string_view what, sql::Access access) {
  // BEGIN IMMEDIATE takes the write lock up front, so a read-then-write
  // sequence inside cannot be interleaved with another process's write.
  const char* begin = access == sql::Access::kWrite ? "BEGIN IMMEDIATE" : "BEGIN";
  if (absl::Status s = Exec(db_, begin, StrCat(what, ": starting transaction")); !s.ok()) {
    return s;
  }
  open_ = true;
  return absl::OkStatus();
}

absl::Status ScopedTransaction::Commit(std::string_view what) {
  if (absl::Status s = Exec(db_, "COMMIT", StrCat(what, ": committing")); !s.ok()) return s;
  open_ = false;
  return absl::OkStatus();
}

namespace {

// `status` (its code and payloads, e.g. the database-fault mark) with its
// message put after `what`.
absl::Status Reworded(const absl::Status& status, std::string_view what) {
  absl::Status out(status.code(), StrCat(what, ": ", status.message()));
  status.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace

absl::Status SqliteDatabase::Transact(std::string_view what, sql::Access access,
                                      const std::function<absl::Status(sql::Session&)>& fn) {
  if (access == sql::Access::kRead) {
    const bool own = reader_ != nullptr;
    std::lock_guard<std::mutex> lock(own ? reader_mu_ : mu_);
    sqlite3* db = own ? reader_.get() : db_.get();
    ScopedTransaction txn(db);
    if (absl::Status s = txn.Begin(what, access); !s.ok()) return s;
    ConnectionSession session(db, own ? &reader_statements_ : &statements_);
    if (absl::Status s = fn(session); !s.ok()) return s;
    return txn.Commit(what);
  }
  Unit self;
  self.what = what;
  self.fn = &fn;
  std::unique_lock<std::mutex> queue_lock(queue_mu_);
  queue_.push_back(&self);
  while (!self.done) {
    if (leading_) {
      queue_cv_.wait(queue_lock);
      continue;
    }
    // Lead: take what is queued (this unit among it) and run it as a group.
    leading_ = true;
    std::vector<Unit*> group;
    while (!queue_.empty() && group.size() < kMaxGroup) {
      group.push_back(queue_.front());
      queue_.pop_front();
    }
    queue_lock.unlock();
    RunGroup(group);
    queue_lock.lock();
    for (Unit* unit : group) unit->done = true;
    leading_ = false;
    queue_cv_.notify_all();
  }
  return self.result;
}

void SqliteDatabase::RunGroup(const std::vector<Unit*>& group) {
  std::lock_guard<std::mutex> lock(mu_);
  sqlite3* db = db_.get();
  ScopedTransaction txn(db);
  if (absl::Status s = txn.Begin(group.front()->what); !s.ok()) {
    for (Unit* unit : group) unit->result = unit == group.front() ? s : Reworded(s, unit->what);
    return;
  }
  ConnectionSession session(db, &statements_);
  if (group.size() == 1) {
    Unit& unit = *group.front();
    unit.result = (*unit.fn)(session);
    if (unit.result.ok()) unit.result = txn.Commit(unit.what);
  } else {
    bool any_ok = false;
    for (size_t i = 0; i < group.size(); ++i) {
      Unit& unit = *group[i];
      if (absl::Status begun = Exec(db, "SAVEPOINT keywarden_unit", unit.what); !begun.ok()) {
        unit.result = begun;
      } else {
        unit.result = (*unit.fn)(session);
        if (sqlite3_get_autocommit(db) != 0) {
          // SQLite rolled the whole transaction back by itself (I/O error,
          // disk full): the units before this one are lost with it, and
          // the ones after it are not run.
          const absl::Status lost = MarkDatabaseFault(absl::UnavailableError(
              StrCat("rolled back with another unit of work committed in the same group (",
                     unit.result.ok() ? std::string("the database ended the transaction")
                                      : std::string(unit.result.message()),
                     ")")));
          for (Unit* other : group) {
            if (other != &unit || unit.result.ok()) other->result = Reworded(lost, other->what);
          }
          return;
        }
        const char* end = unit.result.ok() ? "RELEASE keywarden_unit"
                                           : "ROLLBACK TO keywarden_unit; RELEASE keywarden_unit";
        if (absl::Status ended = Exec(db, end, unit.what); !ended.ok() && unit.result.ok()) {
          unit.result = ended;
        }
      }
      any_ok = any_ok || unit.result.ok();
    }
    if (any_ok) {
      // One commit for the group: a failure is every committed unit's.
      absl::Status committed = txn.Commit(group.front()->what);
      for (Unit* unit : group) {
        if (unit->result.ok() && !committed.ok()) unit->result = Reworded(committed, unit->what);
      }
    }
  }
  std::lock_guard<std::mutex> stats_lock(queue_mu_);
  ++stats_.commits;
  stats_.units += group.size();
}

SqliteDatabase::GroupStats SqliteDatabase::group_stats() {
  std::lock_guard<std::mutex> lock(queue_mu_);
  return stats_;
}

size_t SqliteDatabase::KeptStatements() {
  std::lock_guard<std::mutex> lock(mu_);
  return statements_.size();
}

absl::Status SqliteDatabase::WithConnection(const std::function<absl::Status(sqlite3*)>& fn) {
  std::lock_guard<std::mutex> lock(mu_);
  return fn(db_.get());
}

}  // namespace keywarden::service::sqlite
