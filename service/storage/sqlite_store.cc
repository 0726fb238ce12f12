// The SQLite backend of the CA database.
//
// One connection, guarded by a mutex: the daemon's threads take turns, which
// keeps every multi-statement operation trivially isolated inside the
// process. BEGIN IMMEDIATE plus busy_timeout keeps it isolated against other
// processes opening the same file too (the CLI, a second daemon by mistake).
// Values only ever reach SQL as bound parameters; the SQL text itself is
// built from constant fragments.
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
#include "service/storage/store.h"

namespace keywarden::service {
namespace {

// "KWCA" in the database header: tells a keywarden database apart from any
// other SQLite file someone points the daemon at.
constexpr int32_t kApplicationId = 0x4B574341;

// How long a statement waits for another process's write lock before it
// fails with UNAVAILABLE.
constexpr int kBusyTimeoutMs = 10000;

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
};

constexpr int kSchemaVersion = 4;

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

constexpr char kRequestColumns[] =
    "id, requester, template_name, format, raw, subject, disposition, disposition_message, "
    "status_code, submitted_at, resolved_at, resolved_by, serial, archived_key, archival_scheme, "
    "kra_sha1, encrypted_key_hash, spki_sha256, request_sha256";

constexpr char kCertificateColumns[] =
    "c.serial, c.request_id, c.der, c.subject, c.upn, c.template_name, c.sha1, c.sha256, "
    "c.not_before, c.not_after, c.revoked, c.revocation_reason, c.revoked_at, c.spki_sha256, "
    "c.email";

constexpr char kAuditColumns[] = "seq, time, principal, event, details, prev_hash, hash";

// -- errors

absl::StatusCode CodeForSqlite(int rc) {
  switch (rc) {
    case SQLITE_CONSTRAINT_PRIMARYKEY:
    case SQLITE_CONSTRAINT_UNIQUE:
      return absl::StatusCode::kAlreadyExists;
    case SQLITE_CONSTRAINT_FOREIGNKEY:
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

// "<what>: <sqlite3_errmsg> (<sqlite3_errstr>)". sqlite3_errmsg describes
// the connection's most recent failure; callers hold the store's mutex (or
// own the connection), so nothing else has run on it since.
absl::Status SqliteError(sqlite3* db, int rc, std::string_view what) {
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

// -- small SQLite wrappers

struct ConnectionCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using Connection = std::unique_ptr<sqlite3, ConnectionCloser>;

// A prepared statement. Bind* record the first failure, which Step reports,
// so call sites bind without checking each parameter.
class Statement {
 public:
  Statement(sqlite3* db, std::string what) : db_(db), what_(std::move(what)) {}
  ~Statement() { sqlite3_finalize(stmt_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  absl::Status Prepare(std::string_view sql) {
    int rc = sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr);
    if (rc != SQLITE_OK) return SqliteError(db_, rc, what_);
    return absl::OkStatus();
  }

  // Parameter indexes are 1-based, as in the SQL text (?1, ?2, ...).
  void BindInt(int i, int64_t v) { Note(sqlite3_bind_int64(stmt_, i, v)); }
  void BindText(int i, const std::string& s) {
    Note(sqlite3_bind_text64(stmt_, i, s.data(), s.size(), SQLITE_TRANSIENT, SQLITE_UTF8));
  }
  // Empty strings become NULL: for columns where "absent" is NULL.
  void BindTextOrNull(int i, const std::string& s) {
    if (s.empty()) {
      BindNull(i);
    } else {
      BindText(i, s);
    }
  }
  void BindBlob(int i, const std::vector<uint8_t>& b) {
    // sqlite3_bind_blob with a null pointer binds NULL, not an empty blob.
    if (b.empty()) {
      Note(sqlite3_bind_zeroblob(stmt_, i, 0));
    } else {
      Note(sqlite3_bind_blob64(stmt_, i, b.data(), b.size(), SQLITE_TRANSIENT));
    }
  }
  void BindNull(int i) { Note(sqlite3_bind_null(stmt_, i)); }

  // True when a row is available, false when the statement is done.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqliteError(db_, bind_rc_, what_);
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, what_);
  }

  // Runs a statement that returns no rows.
  absl::Status Run() {
    absl::StatusOr<bool> row = Step();
    if (!row.ok()) return row.status();
    return absl::OkStatus();
  }

  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  std::string Text(int col) const {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    if (p == nullptr) return {};
    return std::string(reinterpret_cast<const char*>(p),
                       static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  std::vector<uint8_t> Blob(int col) const {
    const auto* p = static_cast<const uint8_t*>(sqlite3_column_blob(stmt_, col));
    if (p == nullptr) return {};
    return std::vector<uint8_t>(p, p + sqlite3_column_bytes(stmt_, col));
  }

 private:
  void Note(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }

  sqlite3* db_;
  std::string what_;
  sqlite3_stmt* stmt_ = nullptr;
  int bind_rc_ = SQLITE_OK;
};

absl::Status Exec(sqlite3* db, const char* sql, std::string_view what) {
  int rc = sqlite3_exec(db, sql, nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) return SqliteError(db, rc, what);
  return absl::OkStatus();
}

absl::StatusOr<int64_t> QueryInt(sqlite3* db, const char* sql, std::string_view what) {
  Statement s(db, std::string(what));
  if (absl::Status st = s.Prepare(sql); !st.ok()) return st;
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  return *row ? s.Int(0) : 0;
}

// A write transaction. BEGIN IMMEDIATE takes the write lock up front, so a
// read-then-write sequence inside cannot be interleaved with another
// process's write. Rolls back unless committed, so an early error return
// leaves nothing behind.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {}
  ~Transaction() {
    // SQLite rolls back by itself after some errors (disk full, I/O); only
    // roll back what is still open.
    if (open_ && sqlite3_get_autocommit(db_) == 0) {
      sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
    }
  }
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  absl::Status Begin(std::string_view what) {
    if (absl::Status s = Exec(db_, "BEGIN IMMEDIATE", StrCat(what, ": starting transaction"));
        !s.ok()) {
      return s;
    }
    open_ = true;
    return absl::OkStatus();
  }

  absl::Status Commit(std::string_view what) {
    if (absl::Status s = Exec(db_, "COMMIT", StrCat(what, ": committing")); !s.ok()) return s;
    open_ = false;
    return absl::OkStatus();
  }

 private:
  sqlite3* db_;
  bool open_ = false;
};

// -- record conversion

int64_t LimitParameter(size_t limit) {
  // LIMIT -1 is "no limit" in SQLite.
  return limit > static_cast<size_t>(std::numeric_limits<int64_t>::max())
             ? -1
             : static_cast<int64_t>(limit);
}

bool IsHex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

std::vector<std::string> SplitCommas(const std::string& s) {
  std::vector<std::string> parts;
  if (s.empty()) return parts;
  size_t start = 0;
  while (true) {
    size_t comma = s.find(',', start);
    parts.push_back(s.substr(start, comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return parts;
}

std::optional<Disposition> DispositionFromInt(int64_t v) {
  switch (v) {
    case static_cast<int64_t>(Disposition::kPending):
      return Disposition::kPending;
    case static_cast<int64_t>(Disposition::kIssued):
      return Disposition::kIssued;
    case static_cast<int64_t>(Disposition::kDenied):
      return Disposition::kDenied;
    case static_cast<int64_t>(Disposition::kFailed):
      return Disposition::kFailed;
    default:
      return std::nullopt;
  }
}

// The four archived-key columns (envelope, scheme, KRA hashes, key hash)
// bound to parameters first..first+3, in that order.
void BindArchivedKey(Statement& s, int first, const ArchivedKey& key) {
  s.BindBlob(first, key.envelope);
  s.BindText(first + 1, key.scheme);
  s.BindText(first + 2, StrJoin(key.kra_sha1, ","));
  s.BindBlob(first + 3, key.encrypted_key_hash);
}

absl::Status ValidateArchivedKey(const ArchivedKey& key, std::string_view whose) {
  // The envelope's presence is what marks a request as archived.
  if (key.envelope.empty()) {
    return absl::InvalidArgumentError(StrCat(whose, ": archived key has an empty envelope"));
  }
  for (const std::string& thumbprint : key.kra_sha1) {
    // Stored comma-joined, so a thumbprint must not contain a comma; KRA
    // thumbprints are hex.
    if (thumbprint.empty() || !IsHex(thumbprint)) {
      return absl::InvalidArgumentError(
          StrCat(whose, ": KRA thumbprint \"", thumbprint, "\" is not a hex SHA-1"));
    }
  }
  return absl::OkStatus();
}

std::string Hex(const unsigned char* p, size_t n) {
  static const char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(n * 2);
  for (size_t i = 0; i < n; ++i) {
    out.push_back(kDigits[p[i] >> 4]);
    out.push_back(kDigits[p[i] & 0xf]);
  }
  return out;
}

// SHA-256 (lower-case hex) of the DER SubjectPublicKeyInfo of a DER
// certificate; empty when it does not decode.
std::string SpkiSha256OfCertificate(const std::vector<uint8_t>& der) {
  const unsigned char* p = der.data();
  X509* cert = d2i_X509(nullptr, &p, static_cast<long>(der.size()));
  std::string out;
  if (cert != nullptr) {
    unsigned char* spki = nullptr;
    const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &spki);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (len > 0 && EVP_Digest(spki, static_cast<size_t>(len), md, &n, EVP_sha256(), nullptr) == 1) {
      out = Hex(md, n);
    }
    OPENSSL_free(spki);
    X509_free(cert);
  }
  ERR_clear_error();
  return out;
}

absl::Status ValidateCertificate(const CertificateRecord& c) {
  if (c.serial.empty() || !IsHex(c.serial)) {
    return absl::InvalidArgumentError(
        StrCat("certificate serial \"", c.serial, "\" is not a hex serial number"));
  }
  if (c.sha1.empty()) {
    return absl::InvalidArgumentError(StrCat("certificate ", c.serial, " has no SHA-1 thumbprint"));
  }
  if (c.der.empty()) {
    return absl::InvalidArgumentError(StrCat("certificate ", c.serial, " has no DER encoding"));
  }
  return absl::OkStatus();
}

// The value of the most specific CN in an RFC 4514 string (the first one:
// RFC 4514 lists RDNs most specific first), with escapes undone; empty when
// there is none. Accepts "CN", "commonName" and "2.5.4.3" as the type, '+'
// between attributes of a multi-valued RDN, quoted values and spaces around
// separators (RFC 2253/1779 leftovers some tools still print).
std::string CommonNameOf(std::string_view dn) {
  auto hex_value = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  size_t i = 0;
  const size_t n = dn.size();
  while (i < n) {
    while (i < n && dn[i] == ' ') ++i;
    size_t eq = dn.find('=', i);
    if (eq == std::string_view::npos) return {};
    std::string_view type = dn.substr(i, eq - i);
    while (!type.empty() && type.back() == ' ') type.remove_suffix(1);
    i = eq + 1;
    while (i < n && dn[i] == ' ') ++i;

    std::string value;
    size_t significant = 0;  // value length without unescaped trailing spaces
    bool quoted = i < n && dn[i] == '"';
    if (quoted) ++i;
    while (i < n) {
      char c = dn[i];
      if (c == '\\' && i + 1 < n) {
        int hi = hex_value(dn[i + 1]);
        int lo = i + 2 < n ? hex_value(dn[i + 2]) : -1;
        if (hi >= 0 && lo >= 0) {
          value.push_back(static_cast<char>(hi * 16 + lo));
          i += 3;
        } else {
          value.push_back(dn[i + 1]);
          i += 2;
        }
        significant = value.size();
        continue;
      }
      if (quoted) {
        ++i;
        if (c == '"') {
          quoted = false;
          significant = value.size();
        } else {
          value.push_back(c);
          significant = value.size();
        }
        continue;
      }
      if (c == ',' || c == '+' || c == ';') break;
      value.push_back(c);
      if (c != ' ') significant = value.size();
      ++i;
    }
    value.resize(significant);
    if (i < n) ++i;  // the separator

    std::string lower_type = AsciiLower(type);
    if (lower_type == "cn" || lower_type == "commonname" || lower_type == "2.5.4.3") return value;
  }
  return {};
}

// Columns in kRequestColumns order.
absl::StatusOr<RequestRecord> ReadRequest(const Statement& s) {
  RequestRecord r;
  r.id = s.Int(0);
  r.requester = s.Text(1);
  r.template_name = s.Text(2);
  r.format = s.Text(3);
  r.raw = s.Blob(4);
  r.subject = s.Text(5);
  std::optional<Disposition> d = DispositionFromInt(s.Int(6));
  if (!d) {
    return absl::DataLossError(
        StrCat("request ", r.id, " has unknown disposition ", s.Int(6), " in the database"));
  }
  r.disposition = *d;
  r.disposition_message = s.Text(7);
  r.status_code = static_cast<uint32_t>(s.Int(8));
  r.submitted_at = s.Int(9);
  r.resolved_at = s.Int(10);
  r.resolved_by = s.Text(11);
  r.serial = s.Text(12);
  if (!s.IsNull(13)) {
    ArchivedKey key;
    key.envelope = s.Blob(13);
    key.scheme = s.Text(14);
    key.kra_sha1 = SplitCommas(s.Text(15));
    key.encrypted_key_hash = s.Blob(16);
    r.archived_key = std::move(key);
  }
  r.spki_sha256 = s.Text(17);
  r.request_sha256 = s.Text(18);
  return r;
}

// Columns in kCertificateColumns order.
CertificateRecord ReadCertificate(const Statement& s) {
  CertificateRecord c;
  c.serial = s.Text(0);
  c.request_id = s.Int(1);  // NULL reads as 0
  c.der = s.Blob(2);
  c.subject = s.Text(3);
  c.upn = s.Text(4);
  c.template_name = s.Text(5);
  c.sha1 = s.Text(6);
  c.sha256 = s.Text(7);
  c.not_before = s.Int(8);
  c.not_after = s.Int(9);
  c.revoked = s.Int(10) != 0;
  c.revocation_reason = static_cast<int>(s.Int(11));
  c.revoked_at = s.Int(12);
  c.spki_sha256 = s.Text(13);
  c.email = s.Text(14);
  return c;
}

// Columns in kAuditColumns order.
AuditRecord ReadAuditRecord(const Statement& s) {
  AuditRecord a;
  a.seq = s.Int(0);
  a.time = s.Int(1);
  a.principal = s.Text(2);
  a.event = s.Text(3);
  a.details = s.Text(4);
  a.prev_hash = s.Blob(5);
  a.hash = s.Blob(6);
  return a;
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

class SqliteStore final : public Store {
 public:
  // `file` is the database file's absolute path, empty for an in-memory
  // database or a URI.
  SqliteStore(Connection db, std::string file) : db_(std::move(db)), file_(std::move(file)) {}

  absl::StatusOr<int64_t> InsertRequest(const RequestRecord& request,
                                        const AuditFor& audit) override;
  absl::StatusOr<RequestRecord> GetRequest(int64_t id) override;
  absl::StatusOr<std::vector<RequestRecord>> ListRequests(std::optional<Disposition> disposition,
                                                          size_t limit) override;
  absl::StatusOr<std::vector<RequestRecord>> FindRequestsByKey(const std::string& spki_sha256,
                                                               size_t limit) override;
  absl::Status ResolveRequest(int64_t id, Disposition disposition, const std::string& message,
                              uint32_t status_code, const std::string& resolved_by, UnixTime at,
                              bool discard_archived_key,
                              const std::vector<AuditEntry>& audit) override;
  absl::Status RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                            const std::optional<ArchivedKey>& archived_key,
                            const std::string& resolved_by, UnixTime at,
                            const std::vector<AuditEntry>& audit) override;
  absl::Status AttachArchivedKey(int64_t id, const ArchivedKey& key) override;
  absl::Status SetPendingMessage(int64_t id, const std::string& message, UnixTime at,
                                 const std::vector<AuditEntry>& audit) override;

  absl::Status InsertCertificate(const CertificateRecord& certificate) override;
  absl::StatusOr<CertificateRecord> GetCertificate(const std::string& serial) override;
  absl::StatusOr<std::vector<CertificateRecord>> FindCertificates(
      const CertificateQuery& query) override;
  absl::Status Revoke(const std::string& serial, int reason, UnixTime at) override;
  absl::StatusOr<std::vector<CertificateRecord>> RevokedCertificates(UnixTime now) override;

  absl::Status PutSetting(const std::string& name, const std::string& value) override;
  absl::StatusOr<std::string> GetSetting(const std::string& name) override;
  absl::StatusOr<int64_t> NextCounter(const std::string& name) override;
  absl::StatusOr<bool> AcquireLease(const std::string& name, const std::string& holder,
                                    UnixTime now, int64_t ttl_seconds) override;
  absl::Status ReleaseLease(const std::string& name, const std::string& holder) override;

  absl::StatusOr<AuditRecord> AppendAudit(const std::string& principal, const std::string& event,
                                          const std::string& details_json, UnixTime at) override;
  absl::StatusOr<std::vector<AuditRecord>> ReadAudit(int64_t from_seq, size_t limit) override;
  absl::StatusOr<AuditRecord> LastAudit() override;
  absl::Status AppendAuditCheckpoint(const StoredCheckpoint& checkpoint) override;
  absl::StatusOr<std::vector<StoredCheckpoint>> ReadAuditCheckpoints() override;
  absl::StatusOr<StoredCheckpoint> LastAuditCheckpoint() override;
  absl::Status CheckAuditTriggers() override;

  std::string Schema() override;
  int SchemaVersion() override;
  absl::Status Backup(const std::string& path) override;

 private:
  // Fails unless request `id` exists and is pending.
  absl::Status CheckPending(int64_t id, std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status InsertCertificateLocked(const CertificateRecord& c, int64_t request_id,
                                       std::string_view what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Appends one record to the audit chain inside the caller's transaction.
  absl::StatusOr<AuditRecord> AppendAuditLocked(const AuditEntry& entry, UnixTime at)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  std::mutex mu_;
  const Connection db_ ABSL_GUARDED_BY(mu_);
  const std::string file_;  // for Backup's own connection
};

absl::StatusOr<int64_t> SqliteStore::InsertRequest(const RequestRecord& r, const AuditFor& audit) {
  const std::string what = StrCat("inserting request from \"", r.requester, "\"");
  if (r.archived_key) {
    if (absl::Status s = ValidateArchivedKey(*r.archived_key, what); !s.ok()) return s;
  }
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status st = txn.Begin(what); !st.ok()) return st;
  Statement s(db_.get(), what);
  if (absl::Status st = s.Prepare(
          "INSERT INTO requests (requester, template_name, format, raw, subject, disposition, "
          "disposition_message, status_code, submitted_at, resolved_at, resolved_by, serial, "
          "archived_key, archival_scheme, kra_sha1, encrypted_key_hash, spki_sha256, "
          "request_sha256) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, "
          "?18)");
      !st.ok()) {
    return st;
  }
  s.BindText(1, r.requester);
  s.BindText(2, r.template_name);
  s.BindText(3, r.format);
  s.BindBlob(4, r.raw);
  s.BindText(5, r.subject);
  s.BindInt(6, static_cast<int64_t>(r.disposition));
  s.BindText(7, r.disposition_message);
  s.BindInt(8, r.status_code);
  s.BindInt(9, r.submitted_at);
  s.BindInt(10, r.resolved_at);
  s.BindText(11, r.resolved_by);
  s.BindTextOrNull(12, r.serial);
  if (r.archived_key) {
    BindArchivedKey(s, 13, *r.archived_key);
  } else {
    for (int i = 13; i <= 16; ++i) s.BindNull(i);
  }
  s.BindText(17, r.spki_sha256);
  s.BindText(18, r.request_sha256);
  if (absl::Status st = s.Run(); !st.ok()) return st;
  const int64_t id = sqlite3_last_insert_rowid(db_.get());
  if (audit) {
    for (const AuditEntry& entry : audit(id)) {
      if (auto appended = AppendAuditLocked(entry, r.submitted_at); !appended.ok()) {
        return appended.status();
      }
    }
  }
  if (absl::Status st = txn.Commit(what); !st.ok()) return st;
  return id;
}

absl::StatusOr<RequestRecord> SqliteStore::GetRequest(int64_t id) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), StrCat("reading request ", id));
  if (absl::Status st =
          s.Prepare(StrCat("SELECT ", kRequestColumns, " FROM requests WHERE id = ?1"));
      !st.ok()) {
    return st;
  }
  s.BindInt(1, id);
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(StrCat("request ", id, " not found"));
  return ReadRequest(s);
}

absl::StatusOr<std::vector<RequestRecord>> SqliteStore::ListRequests(
    std::optional<Disposition> disposition, size_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "listing requests");
  absl::Status st = disposition ? s.Prepare(StrCat("SELECT ", kRequestColumns,
                                                   " FROM requests WHERE disposition = ?2 "
                                                   "ORDER BY id DESC LIMIT ?1"))
                                : s.Prepare(StrCat("SELECT ", kRequestColumns,
                                                   " FROM requests ORDER BY id DESC LIMIT ?1"));
  if (!st.ok()) return st;
  s.BindInt(1, LimitParameter(limit));
  if (disposition) s.BindInt(2, static_cast<int64_t>(*disposition));
  std::vector<RequestRecord> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    absl::StatusOr<RequestRecord> r = ReadRequest(s);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

absl::StatusOr<std::vector<RequestRecord>> SqliteStore::FindRequestsByKey(
    const std::string& spki_sha256, size_t limit) {
  std::vector<RequestRecord> out;
  if (spki_sha256.empty()) return out;  // "no key hash" is never a match
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "searching requests by public key");
  if (absl::Status st = s.Prepare(StrCat("SELECT ", kRequestColumns,
                                         " FROM requests WHERE spki_sha256 = ?1 "
                                         "ORDER BY id LIMIT ?2"));
      !st.ok()) {
    return st;
  }
  s.BindText(1, spki_sha256);
  s.BindInt(2, LimitParameter(limit));
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    absl::StatusOr<RequestRecord> r = ReadRequest(s);
    if (!r.ok()) return r.status();
    out.push_back(*std::move(r));
  }
  return out;
}

absl::Status SqliteStore::CheckPending(int64_t id, std::string_view what) {
  Statement s(db_.get(), std::string(what));
  if (absl::Status st = s.Prepare("SELECT disposition FROM requests WHERE id = ?1"); !st.ok()) {
    return st;
  }
  s.BindInt(1, id);
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(StrCat(what, ": request ", id, " not found"));
  std::optional<Disposition> d = DispositionFromInt(s.Int(0));
  if (d != Disposition::kPending) {
    return absl::FailedPreconditionError(StrCat(
        what, ": request ", id, " is ", d ? DispositionName(*d) : "unknown", ", not pending"));
  }
  return absl::OkStatus();
}

absl::Status SqliteStore::ResolveRequest(int64_t id, Disposition disposition,
                                         const std::string& message, uint32_t status_code,
                                         const std::string& resolved_by, UnixTime at,
                                         bool discard_archived_key,
                                         const std::vector<AuditEntry>& audit) {
  const std::string what = StrCat("resolving request ", id);
  if (disposition != Disposition::kDenied && disposition != Disposition::kFailed) {
    return absl::InvalidArgumentError(
        StrCat(what, ": cannot resolve to ", DispositionName(disposition),
               " (only denied or failed; issuing goes through RecordIssued)"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  if (absl::Status s = CheckPending(id, what); !s.ok()) return s;
  {
    Statement s(db_.get(), what);
    if (absl::Status st =
            discard_archived_key
                ? s.Prepare(
                      "UPDATE requests SET disposition = ?1, disposition_message = ?2, "
                      "status_code = ?3, resolved_at = ?4, resolved_by = ?5, archived_key = NULL, "
                      "archival_scheme = NULL, kra_sha1 = NULL, encrypted_key_hash = NULL "
                      "WHERE id = ?6")
                : s.Prepare("UPDATE requests SET disposition = ?1, disposition_message = ?2, "
                            "status_code = ?3, resolved_at = ?4, resolved_by = ?5 WHERE id = ?6");
        !st.ok()) {
      return st;
    }
    s.BindInt(1, static_cast<int64_t>(disposition));
    s.BindText(2, message);
    s.BindInt(3, status_code);
    s.BindInt(4, at);
    s.BindText(5, resolved_by);
    s.BindInt(6, id);
    if (absl::Status st = s.Run(); !st.ok()) return st;
  }
  for (const AuditEntry& entry : audit) {
    if (auto appended = AppendAuditLocked(entry, at); !appended.ok()) return appended.status();
  }
  return txn.Commit(what);
}

absl::Status SqliteStore::AttachArchivedKey(int64_t id, const ArchivedKey& key) {
  const std::string what = StrCat("attaching the archived key to request ", id);
  if (absl::Status s = ValidateArchivedKey(key, what); !s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  {
    Statement s(db_.get(), what);
    if (absl::Status st =
            s.Prepare("UPDATE requests SET archived_key = ?1, archival_scheme = ?2, kra_sha1 = ?3, "
                      "encrypted_key_hash = ?4 WHERE id = ?5 AND archived_key IS NULL "
                      "AND disposition IN (?6, ?7)");
        !st.ok()) {
      return st;
    }
    BindArchivedKey(s, 1, key);
    s.BindInt(5, id);
    s.BindInt(6, static_cast<int64_t>(Disposition::kPending));
    s.BindInt(7, static_cast<int64_t>(Disposition::kIssued));
    if (absl::Status st = s.Run(); !st.ok()) return st;
  }
  if (sqlite3_changes(db_.get()) != 1) {
    return absl::FailedPreconditionError(
        StrCat(what, ": no such pending or issued request without an archived key"));
  }
  return txn.Commit(what);
}

absl::Status SqliteStore::SetPendingMessage(int64_t id, const std::string& message, UnixTime at,
                                            const std::vector<AuditEntry>& audit) {
  const std::string what = StrCat("updating pending request ", id);
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  if (absl::Status s = CheckPending(id, what); !s.ok()) return s;
  {
    Statement s(db_.get(), what);
    if (absl::Status st = s.Prepare("UPDATE requests SET disposition_message = ?1 WHERE id = ?2");
        !st.ok()) {
      return st;
    }
    s.BindText(1, message);
    s.BindInt(2, id);
    if (absl::Status st = s.Run(); !st.ok()) return st;
  }
  for (const AuditEntry& entry : audit) {
    if (auto appended = AppendAuditLocked(entry, at); !appended.ok()) return appended.status();
  }
  return txn.Commit(what);
}

absl::Status SqliteStore::InsertCertificateLocked(const CertificateRecord& c, int64_t request_id,
                                                  std::string_view what) {
  Statement s(db_.get(), std::string(what));
  if (absl::Status st = s.Prepare(
          "INSERT INTO certificates (serial, request_id, der, subject, cn, upn, template_name, "
          "sha1, sha256, not_before, not_after, revoked, revocation_reason, revoked_at, "
          "spki_sha256, email) "
          "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)");
      !st.ok()) {
    return st;
  }
  s.BindText(1, c.serial);
  // NULL, not 0, for "no request", so the foreign key holds.
  if (request_id != 0) {
    s.BindInt(2, request_id);
  } else {
    s.BindNull(2);
  }
  s.BindBlob(3, c.der);
  s.BindText(4, c.subject);
  s.BindText(5, CommonNameOf(c.subject));
  s.BindText(6, c.upn);
  s.BindText(7, c.template_name);
  s.BindText(8, c.sha1);
  s.BindText(9, c.sha256);
  s.BindInt(10, c.not_before);
  s.BindInt(11, c.not_after);
  s.BindInt(12, c.revoked ? 1 : 0);
  s.BindInt(13, c.revocation_reason);
  s.BindInt(14, c.revoked_at);
  // Computed here from the DER, whatever the caller filled in: the key index
  // is never wrong for a stored certificate.
  // (A DER that does not decode, which only the store's own tests insert,
  // is stored unindexed.)
  s.BindText(15, SpkiSha256OfCertificate(c.der));
  s.BindText(16, c.email);
  return s.Run();
}

absl::Status SqliteStore::RecordIssued(int64_t request_id, const CertificateRecord& certificate,
                                       const std::optional<ArchivedKey>& archived_key,
                                       const std::string& resolved_by, UnixTime at,
                                       const std::vector<AuditEntry>& audit) {
  const std::string what =
      StrCat("recording certificate ", certificate.serial, " as issued for request ", request_id);
  if (certificate.request_id != 0 && certificate.request_id != request_id) {
    return absl::InvalidArgumentError(
        StrCat(what, ": the certificate record names request ", certificate.request_id));
  }
  if (absl::Status s = ValidateCertificate(certificate); !s.ok()) {
    return absl::Status(s.code(), StrCat(what, ": ", s.message()));
  }
  if (archived_key) {
    if (absl::Status s = ValidateArchivedKey(*archived_key, what); !s.ok()) return s;
  }

  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  if (absl::Status s = CheckPending(request_id, what); !s.ok()) return s;
  {
    Statement s(db_.get(), what);
    absl::Status st =
        archived_key
            ? s.Prepare(
                  "UPDATE requests SET disposition = ?1, serial = ?2, resolved_at = ?3, "
                  "resolved_by = ?4, status_code = 0, archived_key = ?6, archival_scheme = ?7, "
                  "kra_sha1 = ?8, encrypted_key_hash = ?9 WHERE id = ?5")
            : s.Prepare(
                  "UPDATE requests SET disposition = ?1, serial = ?2, resolved_at = ?3, "
                  "resolved_by = ?4, status_code = 0 WHERE id = ?5");
    if (!st.ok()) return st;
    s.BindInt(1, static_cast<int64_t>(Disposition::kIssued));
    s.BindText(2, certificate.serial);
    s.BindInt(3, at);
    s.BindText(4, resolved_by);
    s.BindInt(5, request_id);
    if (archived_key) {
      BindArchivedKey(s, 6, *archived_key);
    }
    if (absl::Status run = s.Run(); !run.ok()) return run;
  }
  // After the request update on purpose: a taken serial or thumbprint fails
  // here and the rollback undoes the update, so nothing is half-written.
  if (absl::Status s = InsertCertificateLocked(certificate, request_id, what); !s.ok()) return s;
  for (const AuditEntry& entry : audit) {
    if (auto appended = AppendAuditLocked(entry, at); !appended.ok()) return appended.status();
  }
  return txn.Commit(what);
}

absl::Status SqliteStore::InsertCertificate(const CertificateRecord& certificate) {
  const std::string what = StrCat("inserting certificate ", certificate.serial);
  if (absl::Status s = ValidateCertificate(certificate); !s.ok()) {
    return absl::Status(s.code(), StrCat(what, ": ", s.message()));
  }
  std::lock_guard<std::mutex> lock(mu_);
  return InsertCertificateLocked(certificate, certificate.request_id, what);
}

absl::StatusOr<CertificateRecord> SqliteStore::GetCertificate(const std::string& serial) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), StrCat("reading certificate ", serial));
  if (absl::Status st = s.Prepare(
          StrCat("SELECT ", kCertificateColumns, " FROM certificates c WHERE c.serial = ?1"));
      !st.ok()) {
    return st;
  }
  s.BindText(1, serial);
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(StrCat("certificate with serial ", serial, " not found"));
  return ReadCertificate(s);
}

absl::StatusOr<std::vector<CertificateRecord>> SqliteStore::FindCertificates(
    const CertificateQuery& query) {
  // Only constant fragments go into the SQL text; every value is a parameter.
  std::string sql = StrCat("SELECT ", kCertificateColumns, " FROM certificates c");
  if (query.only_with_archived_key) {
    sql += " JOIN requests r ON r.id = c.request_id AND r.archived_key IS NOT NULL";
  }
  std::vector<std::variant<int64_t, std::string>> params;
  std::vector<std::string> conditions;
  // `before` ?N `after`, with N the value's parameter index.
  auto add = [&](const char* before, std::variant<int64_t, std::string> value,
                 const char* after = "") {
    params.push_back(std::move(value));
    conditions.push_back(StrCat(before, params.size(), after));
  };
  if (!query.serial.empty()) add("c.serial = ?", query.serial);
  if (!query.sha1.empty()) add("c.sha1 = ?", query.sha1);
  // instr on lower() rather than LIKE: a '%' or '_' in the search text is
  // literal. Case folding is ASCII-only (SQLite has no Unicode tables).
  if (!query.subject_contains.empty()) {
    add("instr(lower(c.subject), lower(?", query.subject_contains, ")) > 0");
  }
  if (!query.subject.empty()) add("c.subject = ?", query.subject);
  if (!query.common_name.empty()) add("c.cn = ?", query.common_name);
  if (!query.upn.empty()) add("c.upn = ?", query.upn);
  if (!query.email.empty()) add("c.email = ?", query.email);
  if (query.request_id != 0) add("c.request_id = ?", query.request_id);
  if (!query.spki_sha256.empty()) add("c.spki_sha256 = ?", query.spki_sha256);
  if (!conditions.empty()) sql += StrCat(" WHERE ", StrJoin(conditions, " AND "));
  sql += StrCat(" ORDER BY c.rowid LIMIT ?", params.size() + 1);

  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "searching certificates");
  if (absl::Status st = s.Prepare(sql); !st.ok()) return st;
  int index = 1;
  for (const auto& p : params) {
    if (const int64_t* i = std::get_if<int64_t>(&p)) {
      s.BindInt(index++, *i);
    } else {
      s.BindText(index++, std::get<std::string>(p));
    }
  }
  s.BindInt(index, LimitParameter(query.limit));
  std::vector<CertificateRecord> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(ReadCertificate(s));
  }
  return out;
}

absl::Status SqliteStore::Revoke(const std::string& serial, int reason, UnixTime at) {
  const std::string what = StrCat("revoking certificate ", serial);
  // RFC 5280 CRLReason: 0..10, 7 unassigned.
  if (reason < 0 || reason > 10 || reason == 7) {
    return absl::InvalidArgumentError(
        StrCat(what, ": ", reason, " is not an RFC 5280 CRLReason (0-6, 8-10)"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  {
    Statement s(db_.get(), what);
    if (absl::Status st = s.Prepare("SELECT revoked FROM certificates WHERE serial = ?1");
        !st.ok()) {
      return st;
    }
    s.BindText(1, serial);
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) return absl::NotFoundError(StrCat(what, ": no certificate with that serial"));
    if (s.Int(0) != 0) return absl::FailedPreconditionError(StrCat(what, ": already revoked"));
  }
  Statement s(db_.get(), what);
  if (absl::Status st =
          s.Prepare("UPDATE certificates SET revoked = 1, revocation_reason = ?1, revoked_at = ?2 "
                    "WHERE serial = ?3");
      !st.ok()) {
    return st;
  }
  s.BindInt(1, reason);
  s.BindInt(2, at);
  s.BindText(3, serial);
  if (absl::Status st = s.Run(); !st.ok()) return st;
  return txn.Commit(what);
}

absl::StatusOr<std::vector<CertificateRecord>> SqliteStore::RevokedCertificates(UnixTime now) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "listing revoked certificates");
  if (absl::Status st = s.Prepare(StrCat("SELECT ", kCertificateColumns,
                                         " FROM certificates c WHERE c.revoked = 1 AND "
                                         "c.not_after >= ?1 ORDER BY c.revoked_at, c.serial"));
      !st.ok()) {
    return st;
  }
  s.BindInt(1, now);
  std::vector<CertificateRecord> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(ReadCertificate(s));
  }
  return out;
}

absl::Status SqliteStore::PutSetting(const std::string& name, const std::string& value) {
  if (name.empty()) return absl::InvalidArgumentError("setting a value: the name is empty");
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), StrCat("writing setting \"", name, "\""));
  if (absl::Status st = s.Prepare("INSERT INTO settings (name, value) VALUES (?1, ?2) "
                                  "ON CONFLICT (name) DO UPDATE SET value = excluded.value");
      !st.ok()) {
    return st;
  }
  s.BindText(1, name);
  s.BindText(2, value);
  return s.Run();
}

absl::StatusOr<std::string> SqliteStore::GetSetting(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), StrCat("reading setting \"", name, "\""));
  if (absl::Status st = s.Prepare("SELECT value FROM settings WHERE name = ?1"); !st.ok()) {
    return st;
  }
  s.BindText(1, name);
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError(StrCat("setting \"", name, "\" is not set"));
  return s.Text(0);
}

absl::StatusOr<int64_t> SqliteStore::NextCounter(const std::string& name) {
  const std::string what = StrCat("incrementing counter \"", name, "\"");
  if (name.empty()) return absl::InvalidArgumentError(StrCat(what, ": the name is empty"));
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  int64_t value = 0;
  {
    Statement s(db_.get(), what);
    if (absl::Status st = s.Prepare("SELECT value FROM settings WHERE name = ?1"); !st.ok()) {
      return st;
    }
    s.BindText(1, name);
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (*row) {
      // Strict parse: a counter silently restarting from 0 would reuse CRL
      // numbers or serials.
      std::string text = s.Text(0);
      auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      if (ec != std::errc() || end != text.data() + text.size()) {
        return absl::FailedPreconditionError(
            StrCat(what, ": the setting holds \"", text, "\", not an integer"));
      }
    }
  }
  if (value == std::numeric_limits<int64_t>::max()) {
    return absl::OutOfRangeError(StrCat(what, ": the counter is at its maximum"));
  }
  ++value;
  Statement s(db_.get(), what);
  if (absl::Status st = s.Prepare("INSERT INTO settings (name, value) VALUES (?1, ?2) "
                                  "ON CONFLICT (name) DO UPDATE SET value = excluded.value");
      !st.ok()) {
    return st;
  }
  s.BindText(1, name);
  s.BindText(2, std::to_string(value));
  if (absl::Status st = s.Run(); !st.ok()) return st;
  if (absl::Status st = txn.Commit(what); !st.ok()) return st;
  return value;
}

// A lease is the setting "lease.<name>" = "<expiry> <holder>".
absl::StatusOr<bool> SqliteStore::AcquireLease(const std::string& name, const std::string& holder,
                                               UnixTime now, int64_t ttl_seconds) {
  const std::string what = StrCat("taking lease \"", name, "\" for \"", holder, "\"");
  if (name.empty() || holder.empty() || ttl_seconds <= 0) {
    return absl::InvalidArgumentError(StrCat(what, ": needs a name, a holder and a positive ttl"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  {
    Statement s(db_.get(), what);
    if (absl::Status st = s.Prepare("SELECT value FROM settings WHERE name = ?1"); !st.ok()) {
      return st;
    }
    s.BindText(1, StrCat("lease.", name));
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (*row) {
      const std::string value = s.Text(0);
      const size_t space = value.find(' ');
      int64_t expiry = 0;
      const auto [end, ec] = std::from_chars(value.data(), value.data() + space, expiry);
      if (space == std::string::npos || ec != std::errc() || end != value.data() + space) {
        return absl::DataLossError(StrCat(what, ": the lease holds \"", value, "\""));
      }
      if (value.substr(space + 1) != holder && expiry > now) return false;
    }
  }
  Statement s(db_.get(), what);
  if (absl::Status st = s.Prepare("INSERT INTO settings (name, value) VALUES (?1, ?2) "
                                  "ON CONFLICT (name) DO UPDATE SET value = excluded.value");
      !st.ok()) {
    return st;
  }
  s.BindText(1, StrCat("lease.", name));
  s.BindText(2, StrCat(now + ttl_seconds, " ", holder));
  if (absl::Status st = s.Run(); !st.ok()) return st;
  if (absl::Status st = txn.Commit(what); !st.ok()) return st;
  return true;
}

absl::Status SqliteStore::ReleaseLease(const std::string& name, const std::string& holder) {
  const std::string what = StrCat("releasing lease \"", name, "\" of \"", holder, "\"");
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), what);
  if (absl::Status st =
          s.Prepare("DELETE FROM settings WHERE name = ?1 AND substr(value, instr(value, ' ') + 1) "
                    "= ?2");
      !st.ok()) {
    return st;
  }
  s.BindText(1, StrCat("lease.", name));
  s.BindText(2, holder);
  return s.Run();
}

absl::StatusOr<AuditRecord> SqliteStore::AppendAudit(const std::string& principal,
                                                     const std::string& event,
                                                     const std::string& details_json, UnixTime at) {
  const std::string what = StrCat("appending audit event \"", event, "\"");
  std::lock_guard<std::mutex> lock(mu_);
  Transaction txn(db_.get());
  if (absl::Status s = txn.Begin(what); !s.ok()) return s;
  auto record = AppendAuditLocked(AuditEntry{principal, event, details_json}, at);
  if (!record.ok()) return record.status();
  if (absl::Status s = txn.Commit(what); !s.ok()) return s;
  return record;
}

absl::StatusOr<AuditRecord> SqliteStore::AppendAuditLocked(const AuditEntry& entry, UnixTime at) {
  const std::string what = StrCat("appending audit event \"", entry.event, "\"");
  AuditRecord record;
  record.time = at;
  record.principal = entry.principal;
  record.event = entry.event;
  record.details = entry.details_json;
  {
    Statement s(db_.get(), what);
    if (absl::Status st = s.Prepare("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1");
        !st.ok()) {
      return st;
    }
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (*row) {
      record.seq = s.Int(0) + 1;
      record.prev_hash = s.Blob(1);
    } else {
      record.seq = 1;
      record.prev_hash.assign(32, 0);
    }
  }
  {
    // A sequence number is never reused: after records were removed (and
    // the daemon told to start anyway) numbering continues after the
    // highest seq a checkpoint vouched for, leaving the gap visible.
    absl::StatusOr<int64_t> signed_seq =
        QueryInt(db_.get(), "SELECT coalesce(max(seq), 0) FROM audit_checkpoints", what);
    if (!signed_seq.ok()) return signed_seq.status();
    if (*signed_seq >= record.seq) record.seq = *signed_seq + 1;
  }
  record.hash = AuditHash(record);
  if (record.hash.size() != 32) {
    return absl::InternalError(StrCat(what, ": computing the SHA-256 chain hash failed"));
  }
  Statement s(db_.get(), what);
  if (absl::Status st =
          s.Prepare("INSERT INTO audit (seq, time, principal, event, details, prev_hash, hash) "
                    "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
      !st.ok()) {
    return st;
  }
  s.BindInt(1, record.seq);
  s.BindInt(2, record.time);
  s.BindText(3, record.principal);
  s.BindText(4, record.event);
  s.BindText(5, record.details);
  s.BindBlob(6, record.prev_hash);
  s.BindBlob(7, record.hash);
  if (absl::Status st = s.Run(); !st.ok()) return st;
  return record;
}

absl::StatusOr<std::vector<AuditRecord>> SqliteStore::ReadAudit(int64_t from_seq, size_t limit) {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), StrCat("reading audit records from seq ", from_seq));
  if (absl::Status st = s.Prepare(
          StrCat("SELECT ", kAuditColumns, " FROM audit WHERE seq >= ?1 ORDER BY seq LIMIT ?2"));
      !st.ok()) {
    return st;
  }
  s.BindInt(1, from_seq);
  s.BindInt(2, LimitParameter(limit));
  std::vector<AuditRecord> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(ReadAuditRecord(s));
  }
  return out;
}

absl::StatusOr<AuditRecord> SqliteStore::LastAudit() {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "reading the newest audit record");
  if (absl::Status st =
          s.Prepare(StrCat("SELECT ", kAuditColumns, " FROM audit ORDER BY seq DESC LIMIT 1"));
      !st.ok()) {
    return st;
  }
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError("the audit log is empty");
  return ReadAuditRecord(s);
}

absl::Status SqliteStore::AppendAuditCheckpoint(const StoredCheckpoint& c) {
  const std::string what = StrCat("storing audit checkpoint ", c.number, " (seq ", c.seq, ")");
  if (c.number < 1 || c.seq < 1 || c.der.empty()) {
    return absl::InvalidArgumentError(StrCat(what, ": no number, seq or signed checkpoint"));
  }
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), what);
  if (absl::Status st =
          s.Prepare("INSERT INTO audit_checkpoints (number, seq, der) VALUES (?1, ?2, ?3)");
      !st.ok()) {
    return st;
  }
  s.BindInt(1, c.number);
  s.BindInt(2, c.seq);
  s.BindBlob(3, c.der);
  absl::Status st = s.Run();
  if (absl::IsAborted(st) || absl::IsFailedPrecondition(st) || absl::IsAlreadyExists(st)) {
    return absl::AlreadyExistsError(StrCat(what, ": ", st.message()));
  }
  return st;
}

absl::StatusOr<std::vector<StoredCheckpoint>> SqliteStore::ReadAuditCheckpoints() {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "reading audit checkpoints");
  if (absl::Status st = s.Prepare("SELECT number, seq, der FROM audit_checkpoints ORDER BY number");
      !st.ok()) {
    return st;
  }
  std::vector<StoredCheckpoint> out;
  while (true) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    out.push_back(StoredCheckpoint{s.Int(0), s.Int(1), s.Blob(2)});
  }
  return out;
}

absl::StatusOr<StoredCheckpoint> SqliteStore::LastAuditCheckpoint() {
  std::lock_guard<std::mutex> lock(mu_);
  Statement s(db_.get(), "reading the newest audit checkpoint");
  if (absl::Status st =
          s.Prepare("SELECT number, seq, der FROM audit_checkpoints ORDER BY number DESC LIMIT 1");
      !st.ok()) {
    return st;
  }
  absl::StatusOr<bool> row = s.Step();
  if (!row.ok()) return row.status();
  if (!*row) return absl::NotFoundError("no audit checkpoint is stored");
  return StoredCheckpoint{s.Int(0), s.Int(1), s.Blob(2)};
}

absl::Status SqliteStore::CheckAuditTriggers() {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> wrong;
  for (const AuditTrigger& t : kAuditTriggers) {
    Statement s(db_.get(), StrCat("reading trigger ", t.name));
    if (absl::Status st = s.Prepare(
            "SELECT tbl_name, sql FROM sqlite_master WHERE type = 'trigger' AND name = ?1");
        !st.ok()) {
      return st;
    }
    s.BindText(1, t.name);
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return row.status();
    if (!*row) {
      wrong.push_back(StrCat(t.name, " (missing)"));
    } else if (s.Text(0) != t.table || s.Text(1) != t.sql) {
      wrong.push_back(StrCat(t.name, " (altered)"));
    }
  }
  if (wrong.empty()) return absl::OkStatus();
  std::string list;
  for (const auto& w : wrong) list += (list.empty() ? "" : ", ") + w;
  return absl::DataLossError(
      StrCat("the triggers that keep the audit log append-only were "
             "removed or changed: ",
             list, " (someone with write access to the database file)"));
}

std::string SqliteStore::Schema() {
  std::lock_guard<std::mutex> lock(mu_);
  std::string out = StrCat("-- keywarden CA database (SQLite), schema version ", kSchemaVersion,
                           " (PRAGMA user_version)\n");
  Statement s(db_.get(), "reading the schema");
  // sqlite_master keeps each CREATE statement as written; internal objects
  // (sqlite_sequence, automatic indexes) are left out.
  absl::Status st = s.Prepare(
      "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL "
      "AND name NOT LIKE 'sqlite!_%' ESCAPE '!' ORDER BY rowid");
  while (st.ok()) {
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) {
      st = row.status();
      break;
    }
    if (!*row) break;
    out += StrCat(s.Text(0), ";\n");
  }
  if (!st.ok()) out += StrCat("-- error: ", st.message(), "\n");
  return out;
}

int SqliteStore::SchemaVersion() {
  std::lock_guard<std::mutex> lock(mu_);
  absl::StatusOr<int64_t> v = QueryInt(db_.get(), "PRAGMA user_version", "reading user_version");
  return v.ok() ? static_cast<int>(*v) : -1;
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
      std::lock_guard<std::mutex> lock(mu_);
      result = CopyDatabase(db_.get(), destination.get(), what);
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
absl::Status BackfillKeyHashes(sqlite3* db, std::string_view) {
  std::vector<std::pair<std::string, std::string>> hashes;  // serial, spki hash
  {
    Statement s(db, "reading certificates to index their keys");
    if (absl::Status st = s.Prepare("SELECT serial, der FROM certificates"); !st.ok()) return st;
    while (true) {
      absl::StatusOr<bool> row = s.Step();
      if (!row.ok()) return row.status();
      if (!*row) break;
      hashes.emplace_back(s.Text(0), SpkiSha256OfCertificate(s.Blob(1)));
    }
  }
  for (const auto& [serial, spki] : hashes) {
    Statement u(db, StrCat("indexing the key of certificate ", serial));
    if (absl::Status st = u.Prepare("UPDATE certificates SET spki_sha256 = ?1 WHERE serial = ?2");
        !st.ok()) {
      return st;
    }
    u.BindText(1, spki);
    u.BindText(2, serial);
    if (absl::Status st = u.Run(); !st.ok()) return st;
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
  Statement read(db, std::string(what));
  if (absl::Status st = read.Prepare("SELECT serial, der FROM certificates ORDER BY rowid");
      !st.ok()) {
    return st;
  }
  while (true) {
    absl::StatusOr<bool> row = read.Step();
    if (!row.ok()) return row.status();
    if (!*row) break;
    const std::vector<uint8_t> der = read.Blob(1);
    absl::StatusOr<pki::AltNames> names = pki::CertificateAltNames(der);
    if (!names.ok() || (names->upns.empty() && names->emails.empty())) continue;
    Statement write(db, std::string(what));
    if (absl::Status st =
            write.Prepare("UPDATE certificates SET upn = ?1, email = ?2 WHERE serial = ?3");
        !st.ok()) {
      return st;
    }
    write.BindText(1, names->upns.empty() ? std::string() : names->upns.front());
    write.BindText(2, names->emails.empty() ? std::string() : names->emails.front());
    write.BindText(3, read.Text(0));
    if (absl::Status st = write.Run(); !st.ok()) return st;
  }
  return absl::OkStatus();
}

absl::Status Migrate(sqlite3* db, const std::string& path) {
  const std::string what = StrCat("migrating CA database \"", path, "\"");
  Transaction txn(db);
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
      Statement s(db.get(), StrCat(what, ": setting journal_mode=WAL"));
      if (absl::Status st = s.Prepare("PRAGMA journal_mode = WAL"); !st.ok()) return st;
      absl::StatusOr<bool> row = s.Step();
      if (!row.ok()) return row.status();
      // In-memory databases stay "memory"; files must really be in WAL.
      return *row && (s.Text(0) == "wal" || s.Text(0) == "memory");
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
  return std::unique_ptr<Store>(new SqliteStore(std::move(db), std::move(file)));
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
    Statement s(db.get(), StrCat(what, ": PRAGMA quick_check"));
    if (absl::Status st = s.Prepare("PRAGMA quick_check"); !st.ok()) {
      return absl::DataLossError(st.message());
    }
    absl::StatusOr<bool> row = s.Step();
    if (!row.ok()) return absl::DataLossError(row.status().message());
    if (!*row || s.Text(0) != "ok") {
      return absl::DataLossError(
          StrCat(what, ": the database is damaged (quick_check: ", *row ? s.Text(0) : "", ")"));
    }
  }
  SqliteStore store(std::move(db), "");
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
