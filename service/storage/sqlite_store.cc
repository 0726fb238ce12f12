// The SQLite backend of the CA database: the schema and its migrations,
// opening a file (owner-only, WAL, synchronous=FULL), the administration
// (schema text, online backup, trigger checks) and checking a copy. The
// row logic is SqlStore's (sql_store.cc), over SqliteDatabase.
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "hsm/strings.h"
#include "pki/alt_names.h"
#include "service/storage/sql_store.h"
#include "service/storage/sqlite_database.h"
#include "service/storage/store.h"

namespace keywarden::service {
namespace {

// "KWCA" in the database header: tells a keywarden database apart from any
// other SQLite file someone points the daemon at.
constexpr int32_t kApplicationId = 0x4B574341;

// Schema migrations, applied in order inside one transaction. A released
// migration is never edited: a change to the schema is a new entry.
struct Migration {
  int version;
  const char* sql;
  // Run after `sql`, in the same transaction: fills new columns from what
  // the rows already hold.
  absl::Status (*backfill)(sqlite3* db, std::string_view what) = nullptr;
};

absl::Status BackfillKeyHashes(sqlite3* db, std::string_view what);
absl::Status BackfillAltNames(sqlite3* db, std::string_view what);

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE requests (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  requester TEXT NOT NULL,
  template_name TEXT NOT NULL,
  format TEXT NOT NULL,
  raw BLOB NOT NULL,
  subject TEXT NOT NULL,
  disposition INTEGER NOT NULL CHECK (disposition IN (9, 20, 30, 31)),
  disposition_message TEXT NOT NULL,
  status_code INTEGER NOT NULL,
  submitted_at INTEGER NOT NULL,
  resolved_at INTEGER NOT NULL,
  resolved_by TEXT NOT NULL,
  serial TEXT,                  -- NULL until issued
  archived_key BLOB,            -- CMS EnvelopedData; NULL without archival
  archival_scheme TEXT,
  kra_sha1 TEXT,                -- comma-joined hex thumbprints
  encrypted_key_hash BLOB
);
CREATE INDEX requests_by_disposition ON requests (disposition, id);

CREATE TABLE certificates (
  serial TEXT PRIMARY KEY NOT NULL,
  request_id INTEGER REFERENCES requests (id),  -- NULL for the CA's own
  der BLOB NOT NULL,
  subject TEXT NOT NULL,
  cn TEXT NOT NULL,             -- the subject's most specific CN, unescaped
  upn TEXT NOT NULL,
  template_name TEXT NOT NULL,
  sha1 TEXT NOT NULL UNIQUE,    -- the UNIQUE constraint is sha1's index
  sha256 TEXT NOT NULL,
  not_before INTEGER NOT NULL,
  not_after INTEGER NOT NULL,
  revoked INTEGER NOT NULL DEFAULT 0,
  revocation_reason INTEGER NOT NULL DEFAULT 0,
  revoked_at INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX certificates_by_subject ON certificates (subject);
CREATE INDEX certificates_by_cn ON certificates (cn);
CREATE INDEX certificates_by_upn ON certificates (upn);
CREATE INDEX certificates_by_request ON certificates (request_id);
CREATE INDEX certificates_revoked ON certificates (not_after) WHERE revoked = 1;

CREATE TABLE settings (
  name TEXT PRIMARY KEY NOT NULL,
  value TEXT NOT NULL
);

CREATE TABLE audit (
  seq INTEGER PRIMARY KEY,
  time INTEGER NOT NULL,
  principal TEXT NOT NULL,
  event TEXT NOT NULL,
  details TEXT NOT NULL,
  prev_hash BLOB NOT NULL,
  hash BLOB NOT NULL
);
-- Keeps bugs in this process from rewriting history. Someone with write
-- access to the file can drop these; the hash chain catches that.
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END;
)sql"},
    {2, R"sql(
-- Signed audit checkpoints (pki/audit_checkpoint.h): the head of the chain
-- signed by the CA key, numbered 1, 2, 3, ...
CREATE TABLE audit_checkpoints (
  number INTEGER PRIMARY KEY,
  seq INTEGER NOT NULL,
  der BLOB NOT NULL
);
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
)sql"},
    {3, R"sql(
-- One key, one owner: certificates and requests by the SHA-256 of their
-- SubjectPublicKeyInfo (DER, lower-case hex); requests also keep the
-- SHA-256 of the request as received (a failed request keeps no body).
ALTER TABLE certificates ADD COLUMN spki_sha256 TEXT NOT NULL DEFAULT '';
CREATE INDEX certificates_by_key ON certificates (spki_sha256);
ALTER TABLE requests ADD COLUMN spki_sha256 TEXT NOT NULL DEFAULT '';
ALTER TABLE requests ADD COLUMN request_sha256 TEXT NOT NULL DEFAULT '';
CREATE INDEX requests_by_key ON requests (spki_sha256);
)sql",
     BackfillKeyHashes},
    {4, R"sql(
-- The e-mail name (rfc822Name) from the subjectAltName, as upn holds the
-- UPN: exact recovery search (getkey user@domain). Both are filled for the
-- rows already there from their certificate DER (BackfillAltNames).
ALTER TABLE certificates ADD COLUMN email TEXT NOT NULL DEFAULT '';
CREATE INDEX certificates_by_email ON certificates (email);
)sql",
     BackfillAltNames},
    {5, R"sql(
-- KRA rollover (keywarden kra rewrap): the envelope an archive had before
-- each rewrap, with its KRAs, so no archive is ever lost to a rewrap.
CREATE TABLE archive_history (
  request_id INTEGER NOT NULL REFERENCES requests (id),
  version INTEGER NOT NULL,     -- 1, 2, ... per request
  replaced_at INTEGER NOT NULL,
  replaced_by TEXT NOT NULL,
  archived_key BLOB NOT NULL,   -- the CMS EnvelopedData that was replaced
  archival_scheme TEXT NOT NULL,
  kra_sha1 TEXT NOT NULL,       -- comma-joined hex thumbprints
  PRIMARY KEY (request_id, version)
);
)sql"},
};

constexpr int kSchemaVersion = 5;

// The triggers that keep the audit log append-only, as created above.
struct AuditTrigger {
  const char* name;
  const char* table;
  const char* sql;
};
constexpr AuditTrigger kAuditTriggers[] = {
    {"audit_no_update", "audit",
     "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit\n"
     "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"},
    {"audit_no_delete", "audit",
     "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit\n"
     "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END"},
    {"audit_checkpoints_no_update", "audit_checkpoints",
     "CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints\n"
     "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END"},
    {"audit_checkpoints_no_delete", "audit_checkpoints",
     "CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints\n"
     "BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END"},
};

constexpr bool MigrationsAreConsecutive() {
  int expected = 1;
  for (const Migration& m : kMigrations) {
    if (m.version != expected++) return false;
  }
  return expected - 1 == kSchemaVersion;
}
static_assert(MigrationsAreConsecutive(), "kMigrations must be versions 1..kSchemaVersion");

using sqlite::Connection;
using sqlite::ErrnoError;
using sqlite::Exec;
using sqlite::kBusyTimeoutMs;
using sqlite::ScopedTransaction;

absl::Status SqliteError(sqlite3* db, int rc, std::string_view what) {
  return sqlite::Error(db, rc, what);
}

absl::StatusOr<int64_t> QueryInt(sqlite3* db, const char* sql, std::string_view what) {
  sqlite::ConnectionSession s(db);
  auto rows = s.Query(what, sql, {});
  if (!rows.ok()) return rows.status();
  return rows->empty() ? 0 : rows->front().Int(0);
}

// -- files and backup

// False for ":memory:" and "file:" URIs, which are not plain file names.
bool IsFilePath(const std::string& path) {
  return path != ":memory:" && path.rfind("file:", 0) != 0;
}

absl::Status CopyDatabase(sqlite3* source, sqlite3* destination, std::string_view what) {
  sqlite3_backup* backup = sqlite3_backup_init(destination, "main", source, "main");
  if (backup == nullptr) {
    return SqliteError(destination, sqlite3_errcode(destination), what);
  }
  // One step over all pages: the source keeps one read transaction for the
  // whole copy, so the copy is a single snapshot even while others write.
  // A busy source (WAL recovery by another process) is retried briefly.
  int rc = SQLITE_OK;
  for (int attempt = 0; attempt < 100; ++attempt) {
    rc = sqlite3_backup_step(backup, -1);
    if (rc != SQLITE_BUSY && rc != SQLITE_LOCKED) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  int finish_rc = sqlite3_backup_finish(backup);
  if (rc != SQLITE_DONE)
    return SqliteError(destination, finish_rc != SQLITE_OK ? finish_rc : rc, what);
  if (finish_rc != SQLITE_OK) return SqliteError(destination, finish_rc, what);
  return absl::OkStatus();
}

// -- the store

class SqliteStore final : public SqlStore, public StoreAdmin {
 public:
  // `file` is the database file's absolute path, empty for an in-memory
  // database or a URI.
  SqliteStore(std::unique_ptr<sqlite::SqliteDatabase> db, std::string file)
      : SqlStore(std::move(db)), file_(std::move(file)) {}

  StoreAdmin& admin() override { return *this; }
  const char* BackendName() const override { return "SQLite"; }
  std::string Schema() override;
  int SchemaVersion() override;
  absl::Status Backup(const std::string& path) override;
  absl::Status CheckAuditTriggers() override;

 private:
  sqlite::SqliteDatabase& connection() { return static_cast<sqlite::SqliteDatabase&>(database()); }

  const std::string file_;  // for Backup's own connection
};

absl::Status SqliteStore::CheckAuditTriggers() {
  std::vector<std::string> wrong;
  absl::Status st = connection().WithConnection([&](sqlite3* db) -> absl::Status {
    sqlite::ConnectionSession s(db);
    for (const AuditTrigger& t : kAuditTriggers) {
      auto rows = s.Query(StrCat("reading trigger ", t.name),
                          "SELECT tbl_name, sql FROM sqlite_master WHERE type = 'trigger' "
                          "AND name = ?1",
                          {std::string(t.name)});
      if (!rows.ok()) return rows.status();
      if (rows->empty()) {
        wrong.push_back(StrCat(t.name, " (missing)"));
      } else if (rows->front().Text(0) != t.table || rows->front().Text(1) != t.sql) {
        wrong.push_back(StrCat(t.name, " (altered)"));
      }
    }
    return absl::OkStatus();
  });
  if (!st.ok()) return st;
  if (wrong.empty()) return absl::OkStatus();
  return absl::DataLossError(
      StrCat("the triggers that keep the audit log append-only were removed or changed: ",
             StrJoin(wrong, ", "), " (someone with write access to the database file)"));
}

std::string SqliteStore::Schema() {
  std::string out = StrCat("-- keywarden CA database (SQLite), schema version ", kSchemaVersion,
                           " (PRAGMA user_version)\n");
  absl::Status st = connection().WithConnection([&](sqlite3* db) -> absl::Status {
    // sqlite_master keeps each CREATE statement as written; internal
    // objects (sqlite_sequence, automatic indexes) are left out.
    auto rows = sqlite::ConnectionSession(db).Query(
        "reading the schema",
        "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
        "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY rowid",
        {});
    if (!rows.ok()) return rows.status();
    for (const sql::Row& row : *rows) out += StrCat(row.Text(0), ";\n");
    return absl::OkStatus();
  });
  if (!st.ok()) out += StrCat("-- error: ", st.message(), "\n");
  return out;
}

int SqliteStore::SchemaVersion() {
  int version = -1;
  connection()
      .WithConnection([&](sqlite3* db) -> absl::Status {
        absl::StatusOr<int64_t> v = QueryInt(db, "PRAGMA user_version", "reading user_version");
        if (v.ok()) version = static_cast<int>(*v);
        return v.status();
      })
      .IgnoreError();
  return version;
}

absl::Status SqliteStore::Backup(const std::string& path) {
  const std::string what = StrCat("backing up the CA database to \"", path, "\"");
  if (path.empty()) return absl::InvalidArgumentError("backing up the CA database: no path");
  // O_EXCL makes "refuse to overwrite" race-free; 0600 because the copy holds
  // archived keys. An empty file is a valid empty SQLite database.
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    int err = errno;
    if (err == EEXIST) {
      return absl::AlreadyExistsError(StrCat(what, ": the file exists; refusing to overwrite it"));
    }
    return ErrnoError(err, what);
  }
  close(fd);

  absl::Status result;
  {
    sqlite3* raw_destination = nullptr;
    int rc = sqlite3_open_v2(path.c_str(), &raw_destination, SQLITE_OPEN_READWRITE, nullptr);
    Connection destination(raw_destination);
    if (rc != SQLITE_OK) {
      result = SqliteError(destination.get(), rc, what);
    } else if (file_.empty()) {
      // An in-memory database (or a URI) may not be reachable from a second
      // connection: copy through the store's own, under the lock.
      result = connection().WithConnection(
          [&](sqlite3* db) { return CopyDatabase(db, destination.get(), what); });
    } else {
      // A connection of its own, so the daemon's threads keep working while
      // the copy runs (WAL: readers and the writer do not block each other).
      // Read-write without CREATE: read-only WAL connections need extra
      // conditions on the -shm file, and this one only reads anyway.
      sqlite3* raw_source = nullptr;
      rc = sqlite3_open_v2(file_.c_str(), &raw_source, SQLITE_OPEN_READWRITE, nullptr);
      Connection source(raw_source);
      if (rc != SQLITE_OK) {
        result = SqliteError(source.get(), rc, StrCat(what, ": opening the source"));
      } else {
        sqlite3_busy_timeout(source.get(), kBusyTimeoutMs);
        result = CopyDatabase(source.get(), destination.get(), what);
      }
    }
  }
  // The file is ours (O_EXCL above): do not leave a half-written backup.
  if (!result.ok()) unlink(path.c_str());
  return result;
}

// -- opening

// Refuses files that are not keywarden databases before anything is changed
// in them, including a database from a newer keywarden.
absl::Status CheckDatabase(sqlite3* db, const std::string& path) {
  const std::string what = StrCat("opening CA database \"", path, "\"");
  absl::StatusOr<int64_t> version = QueryInt(db, "PRAGMA user_version", what);
  if (!version.ok()) return version.status();
  absl::StatusOr<int64_t> application_id = QueryInt(db, "PRAGMA application_id", what);
  if (!application_id.ok()) return application_id.status();
  absl::StatusOr<int64_t> objects = QueryInt(db, "SELECT count(*) FROM sqlite_master", what);
  if (!objects.ok()) return objects.status();

  if (*application_id != kApplicationId &&
      (*application_id != 0 || *version != 0 || *objects != 0)) {
    return absl::FailedPreconditionError(
        StrCat(what, ": an SQLite database of something else (application_id ", *application_id,
               ", user_version ", *version, ", ", *objects,
               " schema objects), not a keywarden CA database"));
  }
  if (*version > kSchemaVersion) {
    return absl::FailedPreconditionError(StrCat(
        what, ": schema version ", *version, " is newer than this build of keywarden knows (",
        kSchemaVersion, "); run a newer keywarden or restore a backup made by this one"));
  }
  return absl::OkStatus();
}

// Schema 3: the key hash of every certificate already stored, and of the
// requests they were issued for (a request refused before schema 3 keeps
// none: only issued certificates and new requests are indexed).
absl::Status BackfillKeyHashes(sqlite3* db, std::string_view what) {
  sqlite::ConnectionSession s(db);
  auto rows = s.Query(what, "SELECT serial, der FROM certificates", {});
  if (!rows.ok()) return rows.status();
  for (const sql::Row& row : *rows) {
    auto updated = s.Execute(StrCat("indexing the key of certificate ", row.Text(0)),
                             "UPDATE certificates SET spki_sha256 = ?1 WHERE serial = ?2",
                             {SpkiSha256OfCertificate(row.Blob(1)), row.Text(0)});
    if (!updated.ok()) return updated.status();
  }
  return Exec(db,
              "UPDATE requests SET spki_sha256 = (SELECT c.spki_sha256 FROM certificates c "
              "WHERE c.request_id = requests.id) WHERE EXISTS (SELECT 1 FROM certificates c "
              "WHERE c.request_id = requests.id);",
              "indexing the keys of issued requests");
}

// Schema version 4: upn and email of the certificates already stored, from
// the subjectAltName in their DER (the first UPN and the first e-mail name;
// before version 4 upn was never filled). A certificate whose
// subjectAltName does not decode keeps both empty: the migration does not
// fail over one bad row, which then only a serial or hash search finds.
absl::Status BackfillAltNames(sqlite3* db, std::string_view what) {
  sqlite::ConnectionSession s(db);
  auto rows = s.Query(what, "SELECT serial, der FROM certificates ORDER BY rowid", {});
  if (!rows.ok()) return rows.status();
  for (const sql::Row& row : *rows) {
    absl::StatusOr<pki::AltNames> names = pki::CertificateAltNames(row.Blob(1));
    if (!names.ok() || (names->upns.empty() && names->emails.empty())) continue;
    auto updated =
        s.Execute(what, "UPDATE certificates SET upn = ?1, email = ?2 WHERE serial = ?3",
                  {names->upns.empty() ? std::string() : names->upns.front(),
                   names->emails.empty() ? std::string() : names->emails.front(), row.Text(0)});
    if (!updated.ok()) return updated.status();
  }
  return absl::OkStatus();
}

absl::Status Migrate(sqlite3* db, const std::string& path) {
  const std::string what = StrCat("migrating CA database \"", path, "\"");
  ScopedTransaction txn(db);
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  // Read again under the write lock: another process may have migrated since.
  absl::StatusOr<int64_t> version = QueryInt(db, "PRAGMA user_version", what);
  if (!version.ok()) return version.status();
  if (*version > kSchemaVersion) {
    return absl::FailedPreconditionError(StrCat(what, ": schema version ", *version,
                                                " is newer than this build of keywarden knows (",
                                                kSchemaVersion, ")"));
  }
  if (*version == kSchemaVersion) return absl::OkStatus();  // nothing to write; rolls back
  for (const Migration& m : kMigrations) {
    if (m.version <= *version) continue;
    if (absl::Status s = Exec(db, m.sql, StrCat(what, " to schema version ", m.version)); !s.ok()) {
      return s;
    }
    if (m.backfill != nullptr) {
      if (absl::Status s = m.backfill(db, StrCat(what, " to schema version ", m.version));
          !s.ok()) {
        return s;
      }
    }
  }
  // PRAGMA takes no parameters; the numbers are this build's constants.
  const std::string stamp = StrCat("PRAGMA application_id = ", kApplicationId,
                                   "; PRAGMA user_version = ", kSchemaVersion, ";");
  if (absl::Status s = Exec(db, stamp.c_str(), what); !s.ok()) return s;
  return txn.Commit(what);
}

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path) {
  const std::string what = StrCat("opening CA database \"", path, "\"");
  if (path.empty()) return absl::InvalidArgumentError("opening CA database: no path");
  if (IsFilePath(path)) {
    // Create a new database file owner-only: it will hold archived keys.
    // SQLite gives the -wal and -shm files the same permissions.
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd >= 0) {
      close(fd);
    } else if (errno != EEXIST) {
      return ErrnoError(errno, what);
    }
  }

  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_URI, nullptr);
  Connection db(raw);
  if (rc != SQLITE_OK) return SqliteError(db.get(), rc, what);
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), kBusyTimeoutMs);

  if (absl::Status s = CheckDatabase(db.get(), path); !s.ok()) return s;

  {
    absl::StatusOr<bool> wal = [&]() -> absl::StatusOr<bool> {
      auto rows = sqlite::ConnectionSession(db.get()).Query(
          StrCat(what, ": setting journal_mode=WAL"), "PRAGMA journal_mode = WAL", {});
      if (!rows.ok()) return rows.status();
      // In-memory databases stay "memory"; files must really be in WAL.
      return !rows->empty() &&
             (rows->front().Text(0) == "wal" || rows->front().Text(0) == "memory");
    }();
    if (!wal.ok()) return wal.status();
    if (!*wal) {
      return absl::FailedPreconditionError(StrCat(what, ": the database refused journal_mode=WAL"));
    }
  }
  // foreign_keys is per connection and a no-op inside a transaction, so it is
  // set here. synchronous=FULL: an issued certificate or an audit record must
  // survive a power cut, which WAL's default NORMAL does not promise.
  // secure_delete: a discarded archived key (denied request) is overwritten
  // with zeros in the database file rather than left in a free page.
  if (absl::Status s = Exec(db.get(),
                            "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; "
                            "PRAGMA secure_delete = ON;",
                            what);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = Migrate(db.get(), path); !s.ok()) return s;
  // Absolute, so Backup finds the file even if the working directory changes.
  std::string file;
  if (IsFilePath(path)) {
    std::error_code ec;
    std::filesystem::path absolute = std::filesystem::absolute(path, ec);
    file = ec ? path : absolute.string();
  }
  // Reads get a connection of their own (WAL lets them read the committed
  // state while a write's commit waits for the disk); it refuses writes.
  Connection reader;
  if (IsFilePath(path)) {
    sqlite3* raw_reader = nullptr;
    rc = sqlite3_open_v2(path.c_str(), &raw_reader, SQLITE_OPEN_READWRITE | SQLITE_OPEN_URI,
                         nullptr);
    reader.reset(raw_reader);
    if (rc != SQLITE_OK) return SqliteError(reader.get(), rc, StrCat(what, " for reading"));
    sqlite3_extended_result_codes(reader.get(), 1);
    sqlite3_busy_timeout(reader.get(), kBusyTimeoutMs);
    if (absl::Status s = Exec(reader.get(), "PRAGMA query_only = ON;", what); !s.ok()) return s;
  }
  return std::unique_ptr<Store>(new SqliteStore(
      std::make_unique<sqlite::SqliteDatabase>(std::move(db), std::move(reader)), std::move(file)));
}

absl::StatusOr<std::string> StreamBackupFile(const std::string& path, size_t chunk_size,
                                             const std::function<bool(std::string_view)>& sink) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return absl::InternalError(StrCat("backup: cannot open the copy the daemon just made (", path,
                                      "): ", std::strerror(errno)));
  }
  struct FdCloser {
    int fd;
    ~FdCloser() { close(fd); }
  } closer{fd};
  struct stat info {};
  if (fstat(fd, &info) != 0) {
    return absl::InternalError(
        StrCat("backup: cannot stat the copy (", path, "): ", std::strerror(errno)));
  }
  const auto expected = static_cast<uint64_t>(info.st_size);
  if (expected == 0) return absl::InternalError(StrCat("backup: the copy ", path, " is empty"));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> sha(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!sha || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1) {
    return absl::InternalError("backup: SHA-256 is not available");
  }
  std::string buf(std::max<size_t>(chunk_size, 1), '\0');
  uint64_t sent = 0;
  while (true) {
    const ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return absl::InternalError(StrCat("backup: reading the copy (", path, ") failed after ", sent,
                                        " bytes: ", std::strerror(errno)));
    }
    if (n == 0) break;
    const std::string_view chunk(buf.data(), static_cast<size_t>(n));
    if (EVP_DigestUpdate(sha.get(), chunk.data(), chunk.size()) != 1) {
      return absl::InternalError("backup: SHA-256 failed");
    }
    if (!sink(chunk)) {
      return absl::CancelledError(
          StrCat("backup: the client stopped reading after ", sent, " bytes"));
    }
    sent += static_cast<uint64_t>(n);
  }
  if (sent != expected) {
    return absl::InternalError(StrCat("backup: read ", sent, " bytes of a ", expected,
                                      "-byte copy; the backup is incomplete"));
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (EVP_DigestFinal_ex(sha.get(), digest, &len) != 1) {
    return absl::InternalError("backup: SHA-256 failed");
  }
  return HexString({digest, len});
}

absl::StatusOr<int64_t> VerifySqliteCopy(const std::string& path) {
  const std::string what = StrCat("checking database copy \"", path, "\"");
  struct stat info {};
  if (path.empty() || stat(path.c_str(), &info) != 0) {
    return absl::NotFoundError(StrCat(what, ": no such file"));
  }
  if (!S_ISREG(info.st_mode)) return absl::FailedPreconditionError(StrCat(what, ": not a file"));
  // The header first (SQLite would otherwise happily open an empty file as
  // an empty database): the magic string and keywarden's application id.
  {
    unsigned char header[100] = {0};
    const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoError(errno, what);
    const ssize_t n = read(fd, header, sizeof header);
    close(fd);
    static constexpr char kMagic[] = "SQLite format 3";  // and its NUL
    if (n != static_cast<ssize_t>(sizeof header) ||
        std::memcmp(header, kMagic, sizeof kMagic) != 0) {
      return absl::FailedPreconditionError(
          StrCat(what, ": not an SQLite database (", info.st_size, " bytes)"));
    }
    const uint32_t application_id = (uint32_t{header[68]} << 24) | (uint32_t{header[69]} << 16) |
                                    (uint32_t{header[70]} << 8) | uint32_t{header[71]};
    if (application_id != static_cast<uint32_t>(kApplicationId)) {
      return absl::FailedPreconditionError(
          StrCat(what, ": an SQLite database of something else (application_id ", application_id,
                 "), not a keywarden CA database"));
    }
  }
  sqlite3* raw = nullptr;
  // Read-write without CREATE (read-only WAL connections need an -shm file);
  // nothing is written: no migration, no journal mode change.
  const int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE, nullptr);
  Connection db(raw);
  if (rc != SQLITE_OK) return SqliteError(db.get(), rc, what);
  sqlite3_extended_result_codes(db.get(), 1);
  if (absl::Status st = CheckDatabase(db.get(), path); !st.ok()) return st;
  absl::StatusOr<int64_t> version = QueryInt(db.get(), "PRAGMA user_version", what);
  if (!version.ok()) return version.status();
  if (*version != kSchemaVersion) {
    return absl::FailedPreconditionError(
        StrCat(what, ": schema version ", *version, ", this build writes ", kSchemaVersion));
  }
  {
    auto rows = sqlite::ConnectionSession(db.get()).Query(StrCat(what, ": PRAGMA quick_check"),
                                                          "PRAGMA quick_check", {});
    if (!rows.ok()) return absl::DataLossError(rows.status().message());
    const std::string verdict = rows->empty() ? std::string() : rows->front().Text(0);
    if (verdict != "ok") {
      return absl::DataLossError(
          StrCat(what, ": the database is damaged (quick_check: ", verdict, ")"));
    }
  }
  SqliteStore store(std::make_unique<sqlite::SqliteDatabase>(std::move(db)), "");
  std::vector<AuditRecord> all;
  for (int64_t from = 1;;) {
    auto page = store.ReadAudit(from, 5000);
    if (!page.ok()) return absl::DataLossError(page.status().message());
    if (page->empty()) break;
    from = page->back().seq + 1;
    all.insert(all.end(), std::make_move_iterator(page->begin()),
               std::make_move_iterator(page->end()));
  }
  if (all.empty()) return absl::DataLossError(StrCat(what, ": the audit log is empty"));
  if (absl::Status chain = VerifyAuditChain(all); !chain.ok()) {
    return absl::DataLossError(
        StrCat(what, ": the audit chain does not verify: ", chain.message()));
  }
  return static_cast<int64_t>(all.size());
}

}  // namespace keywarden::service
