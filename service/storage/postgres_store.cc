// The PostgreSQL backend of the CA database: SqlStore over a pool of libpq
// connections (postgres_database.cc), the schema created under an advisory
// lock (two replicas starting at once cannot race), the administration
// (schema text, backup into an SQLite file, trigger checks).
#include "service/storage/postgres_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "hsm/strings.h"
#include "service/storage/postgres_database.h"
#include "service/storage/postgres_schema.h"
#include "service/storage/sql_store.h"
#include "service/storage/sqlite_database.h"

namespace keywarden::service {
namespace {

class PostgresStore final : public SqlStore, public StoreAdmin {
 public:
  explicit PostgresStore(std::unique_ptr<sql::Database> db) : SqlStore(std::move(db)) {}

  StoreAdmin& admin() override { return *this; }
  const char* BackendName() const override { return "PostgreSQL"; }

  absl::Status Migrate(bool create) {
    const std::string what = "creating or migrating the CA schema (PostgreSQL)";
    return database().Transact(what, sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
      if (absl::Status st = s.LockForTransaction(sql::kMigrationLock); !st.ok()) return st;
      auto exists = s.Query(what, "SELECT to_regclass('keywarden_schema') IS NOT NULL");
      if (!exists.ok()) return exists.status();
      int64_t version = 0;
      if (!exists->empty() && exists->front().Int(0) != 0) {
        auto rows = s.Query(what, "SELECT max(version) FROM keywarden_schema");
        if (!rows.ok()) return rows.status();
        version = rows->empty() ? 0 : rows->front().Int(0);
      } else {
        // Only an empty database gets the schema: a database holding
        // tables of something else is refused.
        auto tables = s.Query(what,
                              "SELECT count(*) FROM information_schema.tables "
                              "WHERE table_schema = current_schema()");
        if (!tables.ok()) return tables.status();
        if (!tables->empty() && tables->front().Int(0) != 0) {
          return absl::FailedPreconditionError(
              StrCat(what, ": the database holds ", tables->front().Int(0),
                     " tables but no keywarden_schema: not a keywarden CA database"));
        }
      }
      if (version > kPostgresSchemaVersion) {
        return absl::FailedPreconditionError(StrCat(
            what, ": schema version ", version, " is newer than this build of keywarden knows (",
            kPostgresSchemaVersion, "); run a newer keywarden"));
      }
      if (version == kPostgresSchemaVersion) return absl::OkStatus();
      if (version == 0 && !create) {
        return absl::NotFoundError(
            StrCat("the database has no keywarden schema yet; keywardend creates it (version ",
                   kPostgresSchemaVersion, ") at first start"));
      }
      if (version != 0) {
        if (version < kPostgresOldestSchemaVersion) {
          return absl::FailedPreconditionError(StrCat(
              what, ": schema version ", version, " has no migration to ", kPostgresSchemaVersion));
        }
        for (const PostgresMigration& m : kPostgresMigrations) {
          if (m.version <= version) continue;
          if (auto st = s.Execute(StrCat(what, " to schema version ", m.version), m.sql);
              !st.ok()) {
            return st.status();
          }
        }
        return s
            .Execute(what, "UPDATE keywarden_schema SET version = ?1",
                     {int64_t{kPostgresSchemaVersion}})
            .status();
      }
      if (auto st = s.Execute(what, kPostgresSchema); !st.ok()) return st.status();
      return s
          .Execute(what, "INSERT INTO keywarden_schema (version) VALUES (?1)",
                   {int64_t{kPostgresSchemaVersion}})
          .status();
    });
  }

  std::string Schema() override {
    return StrCat("-- keywarden CA database (PostgreSQL), schema version ", kPostgresSchemaVersion,
                  " (table keywarden_schema)\n", kPostgresSchema);
  }

  int SchemaVersion() override {
    int version = -1;
    database()
        .Transact("reading the schema version", sql::Access::kRead,
                  [&](sql::Session& s) -> absl::Status {
                    auto rows = s.Query("reading the schema version",
                                        "SELECT max(version) FROM keywarden_schema");
                    if (!rows.ok()) return rows.status();
                    if (!rows->empty()) version = static_cast<int>(rows->front().Int(0));
                    return absl::OkStatus();
                  })
        .IgnoreError();
    return version;
  }

  absl::Status Backup(const std::string& path) override;

  absl::Status CheckAuditTriggers() override {
    std::vector<std::string> wrong;
    absl::Status st = database().Transact(
        "checking the audit triggers", sql::Access::kRead, [&](sql::Session& s) -> absl::Status {
          wrong.clear();
          auto rows = s.Query("reading the append-only triggers", kPostgresAuditTriggerQuery);
          if (!rows.ok()) return rows.status();
          for (const PostgresAuditTrigger& t : kPostgresAuditTriggers) {
            bool present = false;
            for (const sql::Row& row : *rows) {
              if (row.Text(0) == t.name && row.Text(1) == t.table) present = true;
            }
            if (!present) wrong.push_back(StrCat(t.name, " (missing, altered or disabled)"));
          }
          return absl::OkStatus();
        });
    if (!st.ok()) return st;
    if (wrong.empty()) return absl::OkStatus();
    return absl::DataLossError(
        StrCat("the triggers that keep the audit log append-only were removed or changed: ",
               StrJoin(wrong, ", "), " (someone with write access to the database)"));
  }
};

absl::Status PostgresStore::Backup(const std::string& path) {
  const std::string what = StrCat("backing up the CA database to \"", path, "\"");
  if (path.empty()) return absl::InvalidArgumentError("backing up the CA database: no path");
  // An SQLite file of this schema version, owner-only (it holds archived
  // keys), never over an existing file; made and migrated by the SQLite
  // backend, then filled from one snapshot of this database.
  const int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) {
      return absl::AlreadyExistsError(StrCat(what, ": the file exists; refusing to overwrite it"));
    }
    return sqlite::ErrnoError(errno, what);
  }
  close(fd);
  absl::Status result = [&]() -> absl::Status {
    if (auto made = OpenSqliteStore(path); !made.ok()) return made.status();
    sqlite3* raw = nullptr;
    const int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
    sqlite::Connection destination(raw);
    if (rc != SQLITE_OK) return sqlite::Error(destination.get(), rc, what);
    sqlite3_busy_timeout(destination.get(), sqlite::kBusyTimeoutMs);
    if (auto st = sqlite::Exec(destination.get(), "PRAGMA foreign_keys = ON", what); !st.ok()) {
      return st;
    }
    sqlite::ScopedTransaction txn(destination.get());
    if (absl::Status st = txn.Begin(what); !st.ok()) return st;
    sqlite::ConnectionSession to(destination.get());
    // A read transaction here is one snapshot (REPEATABLE READ, READ
    // ONLY), so the copy is consistent while the CA keeps writing.
    absl::Status copied = database().Transact(
        what, sql::Access::kRead, [&](sql::Session& from) { return CopyAllRows(from, to); });
    if (!copied.ok()) return copied;
    return txn.Commit(what);
  }();
  // The file is ours (O_EXCL above): do not leave a half-written backup.
  if (!result.ok()) unlink(path.c_str());
  return result;
}

}  // namespace

absl::StatusOr<PostgresReplaceReport> ReplacePostgresContents(const DatabaseOptions& options,
                                                              const std::string& sqlite_copy) {
  const std::string what = "replacing the contents of the CA database (PostgreSQL)";
  // The copy, read in one read transaction for the whole load (the load may
  // be rerun after a transient failure: it reads the same rows again).
  sqlite3* raw = nullptr;
  const int rc = sqlite3_open_v2(sqlite_copy.c_str(), &raw, SQLITE_OPEN_READONLY, nullptr);
  sqlite::Connection source(raw);
  if (rc != SQLITE_OK) return sqlite::Error(source.get(), rc, StrCat(what, ": ", sqlite_copy));
  {
    absl::StatusOr<std::vector<sql::Row>> version;
    sqlite::ConnectionSession probe(source.get());
    version = probe.Query(what, "PRAGMA user_version", {});
    if (!version.ok()) return version.status();
    if (version->empty() || version->front().Int(0) != kPostgresSchemaVersion) {
      return absl::FailedPreconditionError(StrCat(what, ": ", sqlite_copy, " has schema version ",
                                                  version->empty() ? 0 : version->front().Int(0),
                                                  ", not ", kPostgresSchemaVersion));
    }
  }
  sqlite::ScopedTransaction read(source.get());
  if (absl::Status st = read.Begin(what, sql::Access::kRead); !st.ok()) return st;
  sqlite::ConnectionSession from(source.get());

  PostgresOptions pg;
  pg.connection = options.connection;
  pg.password = options.password;
  pg.pool_size = 1;
  auto db = OpenPostgresDatabase(pg);
  if (!db.ok()) return db.status();
  PostgresReplaceReport report;
  absl::Status loaded =
      (*db)->Transact(what, sql::Access::kWrite, [&](sql::Session& s) -> absl::Status {
        report = PostgresReplaceReport();
        if (absl::Status st = s.LockForTransaction(sql::kMigrationLock); !st.ok()) return st;
        auto exists = s.Query(what, "SELECT to_regclass('keywarden_schema') IS NOT NULL");
        if (!exists.ok()) return exists.status();
        int64_t last_id = 0;
        if (!exists->empty() && exists->front().Int(0) != 0) {
          // The highest id the identity ever handed out (NULL: none yet).
          auto seq = s.Query(what,
                             "SELECT coalesce(pg_sequence_last_value("
                             "pg_get_serial_sequence('requests', 'id')::regclass), 0)");
          if (!seq.ok()) return seq.status();
          last_id = seq->empty() ? 0 : seq->front().Int(0);
        } else {
          auto tables = s.Query(what,
                                "SELECT count(*) FROM information_schema.tables "
                                "WHERE table_schema = current_schema()");
          if (!tables.ok()) return tables.status();
          if (!tables->empty() && tables->front().Int(0) != 0) {
            return absl::FailedPreconditionError(
                StrCat(what, ": the database holds ", tables->front().Int(0),
                       " tables but no keywarden_schema: not a keywarden CA database; nothing was "
                       "changed"));
          }
        }
        // Drop and create again: the audit tables refuse DELETE and TRUNCATE.
        if (auto dropped = s.Execute(what,
                                     "DROP TABLE IF EXISTS archive_history, audit_checkpoints, "
                                     "audit, settings, certificates, requests, keywarden_schema "
                                     "CASCADE");
            !dropped.ok()) {
          return dropped.status();
        }
        if (auto dropped = s.Execute(what, StrCat("DROP FUNCTION IF EXISTS ",
                                                  kPostgresAppendOnlyFunction, "() CASCADE"));
            !dropped.ok()) {
          return dropped.status();
        }
        if (auto made = s.Execute(what, kPostgresSchema); !made.ok()) return made.status();
        if (auto v = s.Execute(what, "INSERT INTO keywarden_schema (version) VALUES (?1)",
                               {int64_t{kPostgresSchemaVersion}});
            !v.ok()) {
          return v.status();
        }
        if (absl::Status st = CopyAllRows(from, s); !st.ok()) return st;
        // Leases name replicas that ran when the backup was made; none runs
        // now (the caller holds the daemon lock): they are stale.
        auto leases = s.Execute(what, "DELETE FROM settings WHERE name LIKE 'lease.%'");
        if (!leases.ok()) return leases.status();
        report.leases_dropped = *leases;
        auto counts =
            s.Query(what,
                    "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM "
                    "certificates), (SELECT count(*) FROM settings), (SELECT count(*) FROM "
                    "audit), (SELECT count(*) FROM audit_checkpoints), (SELECT "
                    "coalesce(max(id), 0) FROM requests)");
        if (!counts.ok()) return counts.status();
        if (counts->empty()) return absl::InternalError(StrCat(what, ": no row counts"));
        const sql::Row& c = counts->front();
        report.requests = c.Int(0);
        report.certificates = c.Int(1);
        report.settings = c.Int(2);
        report.audit_records = c.Int(3);
        report.audit_checkpoints = c.Int(4);
        const int64_t floor = std::max(c.Int(5), last_id);
        report.next_request_id = floor + 1;
        if (floor > 0) {
          if (auto set = s.Query(
                  what, "SELECT setval(pg_get_serial_sequence('requests', 'id'), ?1)", {floor});
              !set.ok()) {
            return set.status();
          }
        }
        return absl::OkStatus();
      });
  if (!loaded.ok()) return loaded;
  return report;
}

absl::StatusOr<std::unique_ptr<Store>> OpenPostgresStore(const DatabaseOptions& options) {
  PostgresOptions pg;
  pg.connection = options.connection;
  pg.password = options.password;
  pg.pool_size = options.pool_size;
  auto db = OpenPostgresDatabase(pg);
  if (!db.ok()) return db.status();
  auto store = std::make_unique<PostgresStore>(*std::move(db));
  if (absl::Status st = store->Migrate(options.create_schema); !st.ok()) return st;
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace keywarden::service
