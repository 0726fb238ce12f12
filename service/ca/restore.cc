#include "service/ca/restore.h"

#include <dirent.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <ctime>
#include <limits>
#include <map>
#include <memory>
#include <set>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "hsm/ossl.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/files.h"
#include "service/ca/crl_state.h"
#include "service/ca/issuer.h"
#include "service/storage/db_lock.h"
#include "service/storage/postgres_database.h"
#include "service/storage/store.h"

namespace keywarden::service {
namespace {

using absl::StrCat;
using nlohmann::json;

absl::Status Errno(const std::string& what) {
  const int err = errno;
  return absl::InternalError(StrCat(what, ": ", std::strerror(err)));
}

bool Exists(const std::string& path) {
  struct stat st {};
  return lstat(path.c_str(), &st) == 0;
}

void RemoveWithCompanions(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    unlink(StrCat(path, suffix).c_str());
  }
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

absl::Status FsyncPath(const std::string& path, int flags) {
  const int fd = open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return Errno(StrCat("opening ", path, " to sync it"));
  const int rc = fsync(fd);
  close(fd);
  if (rc != 0) return Errno(StrCat("fsync ", path));
  return absl::OkStatus();
}

// Removes the temporary copy unless released.
class TempFile {
 public:
  explicit TempFile(std::string path) : path_(std::move(path)) {}
  ~TempFile() {
    if (!path_.empty()) RemoveWithCompanions(path_);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }
  void Release() { path_.clear(); }

 private:
  std::string path_;
};

// Copies `from` to a new temporary file next to `database` (mode 0600,
// fsynced); returns its SHA-256 and size.
absl::Status CopyToTemp(const std::string& from, const std::string& to, std::string& sha256,
                        int64_t& bytes) {
  const int in = open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(StrCat(from, ": no such backup file"));
    return absl::FailedPreconditionError(StrCat(from, ": ", std::strerror(err)));
  }
  struct stat st {};
  if (fstat(in, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(in);
    return absl::FailedPreconditionError(StrCat(from, ": not a regular file"));
  }
  const int out = open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (out < 0) {
    close(in);
    return Errno(StrCat("creating ", to));
  }
  ossl::UniquePtr<EVP_MD_CTX> sha(EVP_MD_CTX_new());
  if (!sha || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1) {
    close(in);
    close(out);
    return absl::InternalError("SHA-256 is not available");
  }
  std::vector<char> buf(1 << 16);
  bytes = 0;
  absl::Status status;
  for (;;) {
    const ssize_t n = read(in, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      status = Errno(StrCat("reading ", from));
      break;
    }
    if (n == 0) break;
    EVP_DigestUpdate(sha.get(), buf.data(), static_cast<size_t>(n));
    for (ssize_t done = 0; done < n;) {
      const ssize_t w = write(out, buf.data() + done, static_cast<size_t>(n - done));
      if (w < 0) {
        if (errno == EINTR) continue;
        status = Errno(StrCat("writing ", to));
        break;
      }
      done += w;
    }
    if (!status.ok()) break;
    bytes += n;
  }
  if (status.ok() && fsync(out) != 0) status = Errno(StrCat("fsync ", to));
  close(in);
  if (close(out) != 0 && status.ok()) status = Errno(StrCat("closing ", to));
  if (!status.ok()) return status;
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(sha.get(), digest, &len);
  sha256 = HexString({digest, len});
  return absl::OkStatus();
}

struct CrlFacts {
  int64_t number = 0;
  std::vector<CarriedRevocation> entries;
};

// The last published CRL: one CRL, issued by the CA of the configuration and
// signed by its key, with a CRL number.
absl::StatusOr<CrlFacts> ReadPublishedCrl(const std::string& path, X509* ca) {
  auto crls = pki::ReadCrlFile(path);
  if (!crls.ok()) return absl::InvalidArgumentError(StrCat("--crl: ", crls.status().message()));
  if (crls->size() != 1) {
    return absl::InvalidArgumentError(StrCat("--crl ", path, ": holds ", crls->size(),
                                             " CRLs; give the last one the CA published"));
  }
  X509_CRL* crl = (*crls)[0].get();
  if (ca == nullptr) return absl::InternalError("--crl: no CA certificate to check it with");
  if (X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(ca)) != 0 ||
      X509_CRL_verify(crl, X509_get0_pubkey(ca)) != 1) {
    ERR_clear_error();
    return absl::FailedPreconditionError(
        StrCat("--crl ", path,
               ": not a CRL of this CA (its issuer or signature does not match the CA certificate "
               "of the configuration); nothing was changed"));
  }
  CrlFacts facts;
  int crit = 0;
  ossl::UniquePtr<ASN1_INTEGER> number(
      static_cast<ASN1_INTEGER*>(X509_CRL_get_ext_d2i(crl, NID_crl_number, &crit, nullptr)));
  int64_t n = 0;
  if (!number || ASN1_INTEGER_get_int64(&n, number.get()) != 1 || n < 0) {
    ERR_clear_error();
    return absl::InvalidArgumentError(
        StrCat("--crl ", path, ": no CRL number this build can read (absent or above 2^63)"));
  }
  facts.number = n;
  STACK_OF(X509_REVOKED)* revoked = X509_CRL_get_REVOKED(crl);
  for (int i = 0; i < sk_X509_REVOKED_num(revoked); ++i) {
    const X509_REVOKED* r = sk_X509_REVOKED_value(revoked, i);
    CarriedRevocation e;
    e.serial = SerialHex(X509_REVOKED_get0_serialNumber(r));
    e.revoked_at = ToUnix(X509_REVOKED_get0_revocationDate(r));
    ossl::UniquePtr<ASN1_ENUMERATED> reason(
        static_cast<ASN1_ENUMERATED*>(X509_REVOKED_get_ext_d2i(r, NID_crl_reason, &crit, nullptr)));
    e.reason = reason ? static_cast<int>(ASN1_ENUMERATED_get(reason.get())) : 0;
    if (e.reason < 0 || e.reason > 10 || e.reason == 7) e.reason = 0;
    facts.entries.push_back(std::move(e));
  }
  ERR_clear_error();
  return facts;
}

// What the database being replaced knows that must survive the restore.
struct CurrentFacts {
  std::vector<CertificateRecord> revoked;
  std::vector<CarriedRevocation> carried;
  int64_t crl_number = 0;
};

absl::StatusOr<CurrentFacts> ReadCurrentStore(Store& store) {
  CurrentFacts facts;
  auto revoked = store.RevokedCertificates(std::numeric_limits<int64_t>::min());
  if (!revoked.ok()) return revoked.status();
  facts.revoked = std::move(*revoked);
  auto carried = CarriedRevocations(store);
  if (!carried.ok()) return carried.status();
  facts.carried = std::move(*carried);
  auto number = HighestCrlNumber(store);
  if (!number.ok()) return number.status();
  facts.crl_number = *number;
  return facts;
}

absl::StatusOr<CurrentFacts> ReadCurrent(const std::string& path) {
  // Never let SQLite make a new database in an empty or foreign file: only
  // an SQLite file is opened.
  if (auto version = SqliteFileSchemaVersion(path); !version.ok()) return version.status();
  // Opened as the daemon opens it; closing it checkpoints its WAL into the
  // file, so the file renamed aside afterwards is complete by itself.
  auto store = OpenSqliteStore(path);
  if (!store.ok()) return store.status();
  return ReadCurrentStore(**store);
}

// The PostgreSQL store opened without creating the schema: NOT_FOUND for a
// database without one (nothing to carry over).
absl::StatusOr<std::unique_ptr<Store>> OpenPostgresCurrent(const DatabaseOptions& pg) {
  DatabaseOptions options;
  options.backend = "postgresql";
  options.connection = pg.connection;
  options.password = pg.password;
  options.pool_size = 2;
  options.create_schema = false;
  return OpenStore(options);
}

// Every audit record of a store, verified as one chain; returns how many.
absl::StatusOr<int64_t> VerifyStoreAudit(Store& store) {
  std::vector<AuditRecord> all;
  for (int64_t from = 1;;) {
    auto page = store.ReadAudit(from, 10000);
    if (!page.ok()) return page.status();
    if (page->empty()) break;
    from = page->back().seq + 1;
    for (auto& r : *page) all.push_back(std::move(r));
  }
  if (auto st = VerifyAuditChain(all); !st.ok()) return st;
  return static_cast<int64_t>(all.size());
}

// Temporary copies ("<db>.restore-XXXXXX" and their -wal/-shm/-journal)
// left by a restore that was killed: stale, since this one holds the lock.
void RemoveStaleCopies(const std::string& database) {
  const std::string dir = DirectoryOf(database);
  const size_t slash = database.rfind('/');
  const std::string prefix =
      StrCat(slash == std::string::npos ? database : database.substr(slash + 1), ".restore-");
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return;
  std::vector<std::string> stale;
  while (const dirent* e = readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    std::string rest = name.substr(prefix.size());
    for (const char* suffix : {"-wal", "-shm", "-journal"}) {
      const std::string s(suffix);
      if (rest.size() > s.size() && rest.compare(rest.size() - s.size(), s.size(), s) == 0) {
        rest.resize(rest.size() - s.size());
        break;
      }
    }
    if (rest.size() == 6) stale.push_back(StrCat(dir, "/", name));  // mkstemp's XXXXXX
  }
  closedir(d);
  for (const auto& path : stale) unlink(path.c_str());
}

std::string UtcStamp(int64_t now) {
  const time_t t = static_cast<time_t>(now);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

bool PlainFileName(const std::string& name) {
  if (name.empty() || name[0] == '.' || name.size() > 255) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-')) {
      return false;
    }
  }
  return true;
}

// Checks an archive directory against its manifest; returns the path of the
// database copy in it and sets `config` to its configuration file.
absl::StatusOr<std::string> CheckArchive(const std::string& dir, std::string& config) {
  const std::string manifest_path = StrCat(dir, "/", kBackupManifest);
  auto bytes = pki::ReadFileBytes(manifest_path, 1 << 20);
  if (!bytes.ok()) {
    return absl::FailedPreconditionError(
        StrCat("restore: ", dir, " is a directory but not a backup archive (",
               bytes.status().message(), "); nothing was changed"));
  }
  json m = json::parse(bytes->begin(), bytes->end(), nullptr, false);
  auto bad = [&](const std::string& why) {
    return absl::FailedPreconditionError(
        StrCat("restore: ", manifest_path, ": ", why, "; nothing was changed"));
  };
  if (!m.is_object() || m.value("format", "") != kBackupManifestFormat) {
    return bad(StrCat("not a keywarden backup manifest (\"format\" is not \"",
                      kBackupManifestFormat, "\")"));
  }
  if (!m.contains("format_version") || m["format_version"] != 1) {
    return bad("format_version is not 1 (made by a newer keywarden?)");
  }
  if (!m.contains("files") || !m["files"].is_array() || m["files"].size() > 64) {
    return bad("no \"files\" list");
  }
  std::string database;
  for (const auto& f : m["files"]) {
    if (!f.is_object() || !f.contains("name") || !f["name"].is_string() || !f.contains("sha256") ||
        !f["sha256"].is_string() || !f.contains("role") || !f["role"].is_string()) {
      return bad(StrCat("a malformed file entry: ", f.dump()));
    }
    const std::string name = f["name"].get<std::string>();
    if (!PlainFileName(name)) return bad(StrCat("file name \"", name, "\" is not a plain name"));
    const std::string path = StrCat(dir, "/", name);
    auto actual = FileSha256(path);
    if (!actual.ok()) return bad(StrCat(name, ": ", actual.status().message()));
    if (*actual != f["sha256"].get<std::string>()) {
      return absl::DataLossError(StrCat("restore: archive ", dir, ": ", name, " has SHA-256 ",
                                        *actual, ", the manifest says ",
                                        f["sha256"].get<std::string>(), "; nothing was changed"));
    }
    const std::string role = f["role"].get<std::string>();
    if (role == "database") {
      if (!database.empty()) return bad("more than one database");
      database = path;
    } else if (role == "configuration") {
      config = path;
    }
  }
  if (database.empty()) return bad("no file with role \"database\"");
  return database;
}

}  // namespace

absl::StatusOr<std::string> FileSha256(const std::string& path, int64_t* bytes) {
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(StrCat(path, ": no such file"));
    return absl::FailedPreconditionError(StrCat(path, ": ", std::strerror(err)));
  }
  ossl::UniquePtr<EVP_MD_CTX> sha(EVP_MD_CTX_new());
  if (!sha || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1) {
    close(fd);
    return absl::InternalError("SHA-256 is not available");
  }
  std::vector<char> buf(1 << 16);
  int64_t total = 0;
  for (;;) {
    const ssize_t n = read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      absl::Status st = Errno(StrCat("reading ", path));
      close(fd);
      return st;
    }
    if (n == 0) break;
    EVP_DigestUpdate(sha.get(), buf.data(), static_cast<size_t>(n));
    total += n;
  }
  close(fd);
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(sha.get(), digest, &len);
  if (bytes != nullptr) *bytes = total;
  return HexString({digest, len});
}

absl::StatusOr<int> SqliteFileSchemaVersion(const std::string& path) {
  unsigned char header[100] = {0};
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno(StrCat("opening ", path));
  const ssize_t n = read(fd, header, sizeof header);
  close(fd);
  static constexpr char kMagic[] = "SQLite format 3";
  if (n != static_cast<ssize_t>(sizeof header) || std::memcmp(header, kMagic, sizeof kMagic) != 0) {
    return absl::FailedPreconditionError(StrCat(path, ": not an SQLite database"));
  }
  // The user_version (keywarden's schema version): 4 bytes big-endian at 60.
  return static_cast<int>((uint32_t{header[60]} << 24) | (uint32_t{header[61]} << 16) |
                          (uint32_t{header[62]} << 8) | uint32_t{header[63]});
}

absl::StatusOr<RestoreReport> RestoreDatabase(const RestoreOptions& o) {
  if (o.backup.empty()) return absl::InvalidArgumentError("restore: no backup file given");
  const bool postgres = o.backend == "postgresql";
  if (!postgres && o.backend != "sqlite") {
    return absl::InvalidArgumentError(
        StrCat("restore: unknown database backend \"", o.backend, "\" (sqlite or postgresql)"));
  }
  if (!postgres && o.database.empty()) {
    return absl::InvalidArgumentError("restore: the configuration names no [database] path");
  }
  if (postgres && (o.postgres.connection.empty() || o.keep_dir.empty())) {
    return absl::InvalidArgumentError(
        "restore: PostgreSQL needs [database] connection and a directory for the copy of the "
        "replaced contents");
  }
  // 1. Nobody else writes the database from here on: SQLite, the lock file;
  // PostgreSQL, the daemon lock held exclusively (no keywardend replica).
  absl::StatusOr<std::unique_ptr<DatabaseLock>> lock = absl::UnknownError("not locked");
  if (postgres) {
    PostgresOptions pg;
    pg.connection = o.postgres.connection;
    pg.password = o.postgres.password;
    lock = LockPostgresDatabase(pg, PostgresLockMode::kExclusive, "keywarden restore");
  } else {
    lock = LockDatabase(o.database, "keywarden restore");
  }
  if (!lock.ok()) return lock.status();

  // 2. The inputs, before anything is touched.
  CrlFacts crl;
  if (!o.crl_path.empty()) {
    auto facts = ReadPublishedCrl(o.crl_path, o.ca_certificate);
    if (!facts.ok()) return facts.status();
    crl = std::move(*facts);
  }
  RestoreReport report;
  std::string backup = o.backup;
  struct stat backup_stat {};
  if (stat(backup.c_str(), &backup_stat) == 0 && S_ISDIR(backup_stat.st_mode)) {
    auto database = CheckArchive(backup, report.archive_config);
    if (!database.ok()) return database.status();
    report.archive = backup;
    backup = *database;
  }
  report.backup = backup;
  report.backend = postgres ? "postgresql" : "sqlite";
  report.database = o.database;
  if (postgres) {
    const std::string& described = (*lock)->path();
    const size_t on = described.find(" on ");
    report.database =
        StrCat("PostgreSQL ", on == std::string::npos ? "" : described.substr(on + 4));
  }
  report.crl_file_number = crl.number;
  const std::string dir = postgres ? o.keep_dir : DirectoryOf(o.database);
  std::string templ = postgres ? StrCat(o.keep_dir, "/postgresql-restore-XXXXXX")
                               : StrCat(o.database, ".restore-XXXXXX");
  {
    // mkstemp makes the unique name; the copy is written by CopyToTemp.
    const int fd = mkstemp(templ.data());
    if (fd < 0) return Errno(StrCat("restore: creating a temporary file in ", dir));
    close(fd);
    unlink(templ.c_str());
  }
  TempFile temp(templ);
  if (auto st = CopyToTemp(backup, temp.path(), report.backup_sha256, report.backup_bytes);
      !st.ok()) {
    return absl::Status(st.code(), StrCat("restore: ", st.message(), "; nothing was changed"));
  }
  if (auto records = VerifySqliteCopy(temp.path()); !records.ok()) {
    // Said of the backup, not of the temporary copy it was checked in.
    std::string why(records.status().message());
    for (size_t at = why.find(temp.path()); at != std::string::npos;
         at = why.find(temp.path(), at + backup.size())) {
      why.replace(at, temp.path().size(), backup);
    }
    return absl::Status(
        records.status().code(),
        StrCat("restore: the backup ", backup, " is not usable (", why, "); nothing was changed"));
  } else {
    report.backup_audit_records = *records;
  }

  // 3. What the current database knows.
  CurrentFacts current;
  std::unique_ptr<Store> pg_current;  // PostgreSQL: open until its contents are copied
  bool have_current = false;
  if (postgres) {
    auto opened = OpenPostgresCurrent(o.postgres);
    if (opened.ok()) {
      have_current = true;
      pg_current = std::move(*opened);
      auto facts = ReadCurrentStore(*pg_current);
      if (!facts.ok()) {
        // Its contents could not be copied aside either: never replaced.
        return absl::FailedPreconditionError(StrCat(
            "restore: the current PostgreSQL database cannot be read (", facts.status().message(),
            "), so its revocations and CRL number cannot be carried over nor its contents "
            "kept; nothing was changed. Copy it with pg_dump, drop its keywarden tables "
            "(or point [database] connection at an empty database) and restore again"));
      }
      current = std::move(*facts);
      report.replaced_read = true;
    } else if (!absl::IsNotFound(opened.status())) {
      return absl::Status(opened.status().code(),
                          StrCat("restore: opening the current PostgreSQL database: ",
                                 opened.status().message(), "; nothing was changed"));
    }
  } else if ((have_current = Exists(o.database))) {
    auto facts = ReadCurrent(o.database);
    if (facts.ok()) {
      current = std::move(*facts);
      report.replaced_read = true;
    } else if (!o.discard_current) {
      return absl::FailedPreconditionError(StrCat(
          "restore: the current database ", o.database, " cannot be read (",
          facts.status().message(),
          "), so its revocations and CRL number cannot be carried over; nothing was changed. "
          "Give the last published CRL with --crl and add --discard-current to restore anyway "
          "(the current file is still kept, renamed)"));
    }
  }

  // 4. Bring the copy forward: revocations, CRL number floor, audit record.
  {
    auto opened = OpenSqliteStore(temp.path());
    if (!opened.ok()) {
      return absl::Status(opened.status().code(),
                          StrCat("restore: opening the copy of the backup: ",
                                 opened.status().message(), "; nothing was changed"));
    }
    Store& store = **opened;
    auto fail = [](const absl::Status& st) {
      return absl::Status(st.code(), StrCat("restore: ", st.message(), "; nothing was changed"));
    };
    auto last = store.LastAudit();
    if (!last.ok()) return fail(last.status());
    report.backup_last_seq = last->seq;
    report.backup_last_hash = HexString(last->hash);

    auto carried = CarriedRevocations(store);
    if (!carried.ok()) return fail(carried.status());
    std::set<std::string> carried_serials;
    for (const auto& c : *carried) carried_serials.insert(c.serial);

    // Revocation `r` from `source`: applied unless the copy already has it.
    auto reapply = [&](const CarriedRevocation& r, const CertificateRecord* record,
                       const std::string& source) -> absl::Status {
      auto have = store.GetCertificate(r.serial);
      if (have.ok()) {
        if (have->revoked) return absl::OkStatus();
        if (auto st = store.Revoke(r.serial, r.reason, r.revoked_at); !st.ok()) return st;
        report.reapplied.push_back({r.serial, r.reason, r.revoked_at, source, "revoked"});
        return absl::OkStatus();
      }
      if (!absl::IsNotFound(have.status())) return have.status();
      if (record != nullptr) {
        CertificateRecord copy = *record;
        copy.request_id = 0;  // its request is not in the backup
        if (auto st = store.InsertCertificate(copy); !st.ok()) return st;
        report.reapplied.push_back({r.serial, r.reason, r.revoked_at, source, "inserted"});
        return absl::OkStatus();
      }
      if (carried_serials.insert(r.serial).second) {
        carried->push_back(r);
        report.reapplied.push_back({r.serial, r.reason, r.revoked_at, source, "carried"});
      }
      return absl::OkStatus();
    };
    for (const auto& c : current.revoked) {
      if (auto st = reapply({c.serial, c.revocation_reason, c.revoked_at}, &c, "replaced database");
          !st.ok()) {
        return fail(st);
      }
    }
    for (const auto& c : current.carried) {
      if (auto st = reapply(c, nullptr, "replaced database"); !st.ok()) return fail(st);
    }
    for (const auto& c : crl.entries) {
      if (auto st = reapply(c, nullptr, "CRL"); !st.ok()) return fail(st);
    }
    if (auto st = PutCarriedRevocations(store, *carried); !st.ok()) return fail(st);

    auto restored_number = HighestCrlNumber(store);
    if (!restored_number.ok()) return fail(restored_number.status());
    report.crl_number_floor = std::max({*restored_number, current.crl_number, crl.number});
    if (auto st = store.PutSetting(kCrlNumberSetting, std::to_string(report.crl_number_floor));
        !st.ok()) {
      return fail(st);
    }
    // The CRL stored in the backup is stale (it lacks what was re-applied):
    // the daemon publishes a new one, numbered above the floor, at start.
    if (auto st = store.PutSetting(kCrlCurrentSetting, json{{"number", report.crl_number_floor},
                                                            {"invalidated_by", "keywarden restore"}}
                                                           .dump());
        !st.ok()) {
      return fail(st);
    }
    const std::string kept_base =
        postgres ? StrCat(o.keep_dir, "/postgresql-before-restore-", UtcStamp(o.now))
                 : StrCat(o.database, ".before-restore-", UtcStamp(o.now));
    const std::string kept_suffix = postgres ? ".db" : "";
    report.replaced = have_current ? StrCat(kept_base, kept_suffix) : "";
    for (int i = 2; !report.replaced.empty() && Exists(report.replaced); ++i) {
      report.replaced = StrCat(kept_base, "-", i, kept_suffix);
    }
    json reapplied = json::array();
    for (const auto& r : report.reapplied) {
      reapplied.push_back({{"serial", r.serial},
                           {"reason", r.reason},
                           {"revoked_at", r.revoked_at},
                           {"source", r.source},
                           {"action", r.action}});
    }
    json details = {{"backup", backup},
                    {"archive", report.archive.empty() ? json(nullptr) : json(report.archive)},
                    {"backup_sha256", report.backup_sha256},
                    {"backup_last_seq", report.backup_last_seq},
                    {"backup_last_hash", report.backup_last_hash},
                    {"replaced", report.replaced.empty() ? json(nullptr) : json(report.replaced)},
                    {"replaced_read", report.replaced_read},
                    {"revocations_reapplied", reapplied},
                    {"crl_file", o.crl_path.empty() ? json(nullptr) : json(o.crl_path)},
                    {"crl_file_number", crl.number},
                    {"crl_number_floor", report.crl_number_floor}};
    auto record = store.AppendAudit(o.principal, "database.restored", details.dump(), o.now);
    if (!record.ok()) return fail(record.status());
    report.audit_seq = record->seq;
  }  // closed: the WAL is checkpointed into the copy
  if (auto records = VerifySqliteCopy(temp.path()); !records.ok()) {
    return absl::Status(records.status().code(),
                        StrCat("restore: the restored copy does not verify (",
                               records.status().message(), "); nothing was changed"));
  } else {
    report.audit_records = *records;
  }
  if (Exists(StrCat(temp.path(), "-wal"))) {
    return absl::InternalError(StrCat("restore: the restored copy ", temp.path(),
                                      " still has a write-ahead log; nothing was changed"));
  }
  if (auto st = FsyncPath(temp.path(), O_RDONLY); !st.ok()) return st;

  if (postgres) {
    // 5. The current contents aside (a verified SQLite copy, never
    // deleted), then the restored copy loaded in one transaction.
    if (have_current) {
      if (auto st = pg_current->admin().Backup(report.replaced); !st.ok()) {
        return absl::Status(st.code(), StrCat("restore: copying the current contents aside: ",
                                              st.message(), "; nothing was changed"));
      }
      chmod(report.replaced.c_str(), 0600);
      auto kept = VerifySqliteCopy(report.replaced);
      if (!kept.ok()) {
        return absl::Status(kept.status().code(),
                            StrCat("restore: the copy of the current contents ", report.replaced,
                                   " does not verify (", kept.status().message(),
                                   "); it is left there; nothing else was changed"));
      }
      report.replaced_audit_records = *kept;
      if (auto st = FsyncPath(report.replaced, O_RDONLY); !st.ok()) return st;
      if (auto st = FsyncPath(dir, O_RDONLY | O_DIRECTORY); !st.ok()) return st;
    }
    pg_current.reset();
    auto loaded = ReplacePostgresContents(o.postgres, temp.path());
    if (!loaded.ok()) {
      return absl::Status(loaded.status().code(),
                          StrCat("restore: ", loaded.status().message(),
                                 " (rolled back: the database is as it was)"));
    }
    report.loaded = *loaded;
    // 6. Read back what the daemon will read.
    auto reopened = OpenPostgresCurrent(o.postgres);
    absl::Status check = reopened.status();
    if (check.ok()) check = (*reopened)->admin().CheckAuditTriggers();
    if (check.ok()) {
      auto records = VerifyStoreAudit(**reopened);
      check = records.status();
      if (records.ok() && *records != report.audit_records) {
        check = absl::DataLossError(
            StrCat("it holds ", *records, " audit records, the copy ", report.audit_records));
      }
    }
    if (!check.ok()) {
      return absl::Status(check.code(),
                          StrCat("restore: the restored PostgreSQL database does not verify (",
                                 check.message(), "); the replaced contents are in ",
                                 report.replaced.empty() ? "(none)" : report.replaced));
    }
    return report;
  }

  // 5. Swap: the current file aside (never deleted), the copy in.
  if (have_current) {
    // A leftover WAL or shared-memory file belongs to the old file: it goes
    // with it (kept, not deleted) so the new file never replays it.
    for (const char* suffix : {"-wal", "-shm", "-journal"}) {
      const std::string from = StrCat(o.database, suffix);
      if (Exists(from) && rename(from.c_str(), StrCat(report.replaced, suffix).c_str()) != 0) {
        return Errno(StrCat("restore: moving ", from, " aside; nothing else was changed"));
      }
    }
    if (rename(o.database.c_str(), report.replaced.c_str()) != 0) {
      return Errno(StrCat("restore: renaming ", o.database, " to ", report.replaced,
                          "; nothing else was changed"));
    }
    chmod(report.replaced.c_str(), 0600);
  }
  if (rename(temp.path().c_str(), o.database.c_str()) != 0) {
    absl::Status st = Errno(StrCat("restore: renaming the restored copy to ", o.database));
    if (have_current) rename(report.replaced.c_str(), o.database.c_str());  // put it back
    return st;
  }
  temp.Release();
  chmod(o.database.c_str(), 0600);
  RemoveStaleCopies(o.database);
  if (auto st = FsyncPath(dir, O_RDONLY | O_DIRECTORY); !st.ok()) return st;
  return report;
}

}  // namespace keywarden::service
