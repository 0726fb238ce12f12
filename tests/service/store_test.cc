// The CA database, tested through the Store interface only, so the same suite
// runs on every backend: SQLite now; the PostgreSQL backend instantiates
// StoreTest with its own Backend. SQLite-only checks (the file itself, garbage
// files) and the audit-chain functions follow at the end.
#include <sqlite3.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "service/storage/sql_store.h"
#include "service/storage/store.h"
#include "tests/pg_test_util.h"
#include "tests/test_util.h"

namespace keywarden::service {
namespace {

using testing::PgTestDatabase;
using testing::TestPgConninfo;
using testing::TestPgRequired;

// -- what a backend provides to the suite

struct Backend {
  std::string name;
  // Opens the store kept in `dir`, creating it on first use; a later call
  // with the same dir sees the same data.
  std::function<absl::StatusOr<std::unique_ptr<Store>>(const std::string& dir)> open;
  // Opens what Store::Backup wrote at `path`.
  std::function<absl::StatusOr<std::unique_ptr<Store>>(const std::string& path)> open_backup;
  // Runs SQL on the database in `dir` behind the store's back, as someone with
  // write access to the database would, the store's own guards (append-only
  // triggers, permissions) out of the way. The suite closes the store first.
  std::function<absl::Status(const std::string& dir, const std::string& sql)> tamper;
  // Marks the database in `dir` as written by a keywarden with schema `version`.
  std::function<absl::Status(const std::string& dir, int version)> set_schema_version;
};

void PrintTo(const Backend& backend, std::ostream* os) {
  *os << backend.name;
}

// -- SQLite

std::string SqliteFile(const std::string& dir) {
  return dir + "/ca.db";
}

// Runs `sql` on the file with a connection of its own.
absl::Status RawSqlite(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr);
  absl::Status status = absl::OkStatus();
  if (rc != SQLITE_OK) {
    status = absl::InternalError(
        StrCat("sqlite3 on ", path, ": ", db != nullptr ? sqlite3_errmsg(db) : "open failed"));
  }
  sqlite3_close_v2(db);
  return status;
}

absl::StatusOr<std::string> RawSqliteText(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  std::string out;
  int rc = sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr);
  auto callback = [](void* arg, int columns, char** values, char**) -> int {
    auto* text = static_cast<std::string*>(arg);
    for (int i = 0; i < columns; ++i) {
      if (!text->empty()) text->push_back('\n');
      *text += values[i] != nullptr ? values[i] : "NULL";
    }
    return 0;
  };
  if (rc == SQLITE_OK) rc = sqlite3_exec(db, sql.c_str(), callback, &out, nullptr);
  absl::Status status = absl::OkStatus();
  if (rc != SQLITE_OK) {
    status = absl::InternalError(
        StrCat("sqlite3 on ", path, ": ", db != nullptr ? sqlite3_errmsg(db) : "open failed"));
  }
  sqlite3_close_v2(db);
  if (!status.ok()) return status;
  return out;
}

Backend SqliteBackend() {
  Backend b;
  b.name = "Sqlite";
  b.open = [](const std::string& dir) { return OpenSqliteStore(SqliteFile(dir)); };
  b.open_backup = [](const std::string& path) { return OpenSqliteStore(path); };
  b.tamper = [](const std::string& dir, const std::string& sql) -> absl::Status {
    // An attacker with the file drops the append-only triggers first.
    absl::StatusOr<std::string> triggers =
        RawSqliteText(SqliteFile(dir), "SELECT name FROM sqlite_master WHERE type = 'trigger'");
    if (!triggers.ok()) return triggers.status();
    std::string drops;
    size_t start = 0;
    while (start < triggers->size()) {
      size_t end = triggers->find('\n', start);
      if (end == std::string::npos) end = triggers->size();
      drops += StrCat("DROP TRIGGER \"", triggers->substr(start, end - start), "\";");
      start = end + 1;
    }
    return RawSqlite(SqliteFile(dir), drops + sql);
  };
  b.set_schema_version = [](const std::string& dir, int version) {
    return RawSqlite(SqliteFile(dir), StrCat("PRAGMA user_version = ", version));
  };
  return b;
}

// -- PostgreSQL: one fresh database per test directory, on the cluster
// deploy/test.sh starts (KEYWARDEN_TEST_PG).

PgTestDatabase* PgDatabaseFor(const std::string& dir) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<PgTestDatabase>> databases;
  std::lock_guard<std::mutex> lock(mu);
  auto it = databases.find(dir);
  if (it != databases.end()) return it->second.get();
  absl::StatusOr<PgTestDatabase> created = PgTestDatabase::Create();
  if (!created.ok()) return nullptr;
  auto owned = std::make_unique<PgTestDatabase>(*std::move(created));
  PgTestDatabase* db = owned.get();
  databases.emplace(dir, std::move(owned));
  return db;
}

absl::StatusOr<std::unique_ptr<Store>> OpenPg(const std::string& dir) {
  PgTestDatabase* db = PgDatabaseFor(dir);
  if (db == nullptr) return absl::UnavailableError("no PostgreSQL test database");
  DatabaseOptions options;
  options.backend = "postgresql";
  options.connection = db->conninfo();
  options.pool_size = 4;
  return OpenStore(options);
}

Backend PostgresqlBackend() {
  Backend b;
  b.name = "Postgresql";
  b.open = OpenPg;
  // Store::Backup writes an SQLite file whatever the backend.
  b.open_backup = [](const std::string& path) { return OpenSqliteStore(path); };
  b.tamper = [](const std::string& dir, const std::string& sql) -> absl::Status {
    PgTestDatabase* db = PgDatabaseFor(dir);
    if (db == nullptr) return absl::UnavailableError("no PostgreSQL test database");
    // Someone with the table owner's rights switches the append-only
    // triggers off first.
    return db
        ->Query(
            "ALTER TABLE audit DISABLE TRIGGER USER; "
            "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER; " +
            sql)
        .status();
  };
  b.set_schema_version = [](const std::string& dir, int version) -> absl::Status {
    PgTestDatabase* db = PgDatabaseFor(dir);
    if (db == nullptr) return absl::UnavailableError("no PostgreSQL test database");
    return db->Query(StrCat("INSERT INTO keywarden_schema (version) VALUES (", version, ")"))
        .status();
  };
  return b;
}

// -- helpers

::testing::AssertionResult MessageHas(const absl::Status& status, const std::string& text) {
  std::string message(status.message().data(), status.message().size());
  if (message.find(text) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << status << " does not say \"" << text << "\"";
}

RequestRecord MakeRequest(const std::string& requester, UnixTime at = 1000) {
  RequestRecord r;
  r.requester = requester;
  r.template_name = "User";
  r.format = "pkcs10";
  r.raw = {0x30, 0x82, 0x00, 0x00, 0x02, 0x01, 0xff};  // with NULs: must survive as bytes
  r.subject = StrCat("CN=", requester, ",DC=corp,DC=example");
  r.submitted_at = at;
  return r;
}

CertificateRecord MakeCertificate(const std::string& serial, const std::string& subject,
                                  const std::string& upn = "") {
  CertificateRecord c;
  c.serial = serial;
  c.der = {0x30, 0x82, 0x01, 0x00, 0x00, 0x0a};
  c.der.insert(c.der.end(), serial.begin(), serial.end());
  c.subject = subject;
  c.upn = upn;
  c.template_name = "User";
  c.sha1 = std::string(40 - serial.size(), '5') + serial;
  c.sha256 = std::string(64 - serial.size(), '6') + serial;
  c.not_before = 1000;
  c.not_after = 1000 + 365 * 86400;
  return c;
}

ArchivedKey MakeArchivedKey() {
  ArchivedKey k;
  k.envelope = {0x30, 0x80, 0x06, 0x09, 0x00, 0x00, 0x2a, 0x86, 0x48};
  k.scheme = "aes256-rsa-oaep";
  k.kra_sha1 = {std::string(40, 'a'), std::string(40, 'b')};
  k.encrypted_key_hash = {0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09,
                          0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13};
  return k;
}

void ExpectSameArchivedKey(const std::optional<ArchivedKey>& got, const ArchivedKey& want) {
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->envelope, want.envelope);
  EXPECT_EQ(got->scheme, want.scheme);
  EXPECT_EQ(got->kra_sha1, want.kra_sha1);
  EXPECT_EQ(got->encrypted_key_hash, want.encrypted_key_hash);
}

void ExpectSameCertificate(const CertificateRecord& got, const CertificateRecord& want) {
  EXPECT_EQ(got.serial, want.serial);
  EXPECT_EQ(got.request_id, want.request_id);
  EXPECT_EQ(got.der, want.der);
  EXPECT_EQ(got.subject, want.subject);
  EXPECT_EQ(got.upn, want.upn);
  EXPECT_EQ(got.email, want.email);
  EXPECT_EQ(got.template_name, want.template_name);
  EXPECT_EQ(got.sha1, want.sha1);
  EXPECT_EQ(got.sha256, want.sha256);
  EXPECT_EQ(got.not_before, want.not_before);
  EXPECT_EQ(got.not_after, want.not_after);
  EXPECT_EQ(got.revoked, want.revoked);
  EXPECT_EQ(got.revocation_reason, want.revocation_reason);
  EXPECT_EQ(got.revoked_at, want.revoked_at);
}

std::vector<int64_t> Ids(const std::vector<RequestRecord>& requests) {
  std::vector<int64_t> ids;
  for (const RequestRecord& r : requests) ids.push_back(r.id);
  return ids;
}

// Sorted: the interface promises no order for searches.
std::vector<std::string> Serials(const absl::StatusOr<std::vector<CertificateRecord>>& found) {
  std::vector<std::string> serials;
  if (!found.ok()) return {StrCat("error: ", found.status().ToString())};
  for (const CertificateRecord& c : *found) serials.push_back(c.serial);
  std::sort(serials.begin(), serials.end());
  return serials;
}

// -- the backend-independent suite

class StoreTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    if (GetParam().name == "Postgresql" && TestPgConninfo().empty()) {
      if (TestPgRequired()) FAIL() << "KEYWARDEN_REQUIRE_PG=1 but KEYWARDEN_TEST_PG is not set";
      GTEST_SKIP() << "no PostgreSQL test cluster (KEYWARDEN_TEST_PG); deploy/test.sh starts one";
    }
    Open();
  }

  void Open() {
    absl::StatusOr<std::unique_ptr<Store>> store = GetParam().open(dir_.path());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void Close() { store_.reset(); }
  void Reopen() {
    Close();
    Open();
  }
  Store& store() { return *store_; }

  // A pending request, returning its id.
  int64_t Submit(const std::string& requester) {
    absl::StatusOr<int64_t> id = store().InsertRequest(MakeRequest(requester));
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or(0);
  }

  // Ten audit records, details {"n":1} .. {"n":10}.
  void AppendTenAuditRecords() {
    for (int i = 1; i <= 10; ++i) {
      absl::StatusOr<AuditRecord> r =
          store().AppendAudit("officer", "request.issued", StrCat("{\"n\":", i, "}"), 1000 + i);
      ASSERT_TRUE(r.ok()) << r.status();
    }
  }

  absl::Status VerifyStoredChain() {
    absl::StatusOr<std::vector<AuditRecord>> records = store().ReadAudit(1, 1000000);
    if (!records.ok()) return records.status();
    return VerifyAuditChain(*records);
  }

  testing::TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_P(StoreTest, InsertGetAndListRequests) {
  RequestRecord first = MakeRequest("alice", 1000);
  RequestRecord second = MakeRequest("bob", 1001);
  second.subject = "";  // Windows autoenrollment sends none
  second.format = "cmc";
  RequestRecord third = MakeRequest("carol", 1002);

  absl::StatusOr<int64_t> id1 = store().InsertRequest(first);
  absl::StatusOr<int64_t> id2 = store().InsertRequest(second);
  absl::StatusOr<int64_t> id3 = store().InsertRequest(third);
  ASSERT_TRUE(id1.ok() && id2.ok() && id3.ok()) << id1.status() << id2.status() << id3.status();
  EXPECT_GT(*id1, 0);
  EXPECT_LT(*id1, *id2);
  EXPECT_LT(*id2, *id3);

  absl::StatusOr<RequestRecord> got = store().GetRequest(*id2);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->id, *id2);
  EXPECT_EQ(got->requester, "bob");
  EXPECT_EQ(got->template_name, "User");
  EXPECT_EQ(got->format, "cmc");
  EXPECT_EQ(got->raw, second.raw);
  EXPECT_EQ(got->subject, "");
  EXPECT_EQ(got->disposition, Disposition::kPending);
  EXPECT_EQ(got->submitted_at, 1001);
  EXPECT_EQ(got->resolved_at, 0);
  EXPECT_EQ(got->serial, "");
  EXPECT_FALSE(got->archived_key.has_value());

  absl::StatusOr<RequestRecord> missing = store().GetRequest(*id3 + 100);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  absl::StatusOr<std::vector<RequestRecord>> all = store().ListRequests(std::nullopt, 10);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(Ids(*all), (std::vector<int64_t>{*id3, *id2, *id1}));  // newest first
  absl::StatusOr<std::vector<RequestRecord>> two = store().ListRequests(std::nullopt, 2);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ(Ids(*two), (std::vector<int64_t>{*id3, *id2}));

  ASSERT_TRUE(store().ResolveRequest(*id2, Disposition::kDenied, "no", 1, "policy", 1100).ok());
  absl::StatusOr<std::vector<RequestRecord>> pending =
      store().ListRequests(Disposition::kPending, 10);
  ASSERT_TRUE(pending.ok()) << pending.status();
  EXPECT_EQ(Ids(*pending), (std::vector<int64_t>{*id3, *id1}));
  absl::StatusOr<std::vector<RequestRecord>> denied =
      store().ListRequests(Disposition::kDenied, 10);
  ASSERT_TRUE(denied.ok()) << denied.status();
  EXPECT_EQ(Ids(*denied), (std::vector<int64_t>{*id2}));
}

TEST_P(StoreTest, ResolvePendingRequestOnlyOnce) {
  int64_t id = Submit("alice");
  ASSERT_TRUE(store()
                  .ResolveRequest(id, Disposition::kDenied, "Denied by a Certificate Manager",
                                  0x80094012, "officer1", 2000)
                  .ok());
  absl::StatusOr<RequestRecord> r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kDenied);
  EXPECT_EQ(r->disposition_message, "Denied by a Certificate Manager");
  EXPECT_EQ(r->status_code, 0x80094012u);
  EXPECT_EQ(r->resolved_by, "officer1");
  EXPECT_EQ(r->resolved_at, 2000);

  absl::Status again = store().ResolveRequest(id, Disposition::kFailed, "x", 1, "officer2", 2001);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  EXPECT_TRUE(MessageHas(again, StrCat(id)));
  r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kDenied);
  EXPECT_EQ(r->resolved_by, "officer1");

  int64_t failing = Submit("bob");
  EXPECT_TRUE(
      store().ResolveRequest(failing, Disposition::kFailed, "HSM error", 5, "policy", 2002).ok());

  // Issuing goes through RecordIssued, never through ResolveRequest.
  int64_t pending = Submit("carol");
  absl::Status issue = store().ResolveRequest(pending, Disposition::kIssued, "", 0, "x", 2003);
  EXPECT_EQ(issue.code(), absl::StatusCode::kInvalidArgument) << issue;
  r = store().GetRequest(pending);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kPending);

  absl::Status unknown =
      store().ResolveRequest(pending + 100, Disposition::kDenied, "", 0, "x", 2004);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound) << unknown;
}

TEST_P(StoreTest, RecordIssuedStoresCertificateAndResolvesRequestOnce) {
  int64_t id = Submit("alice");
  CertificateRecord cert =
      MakeCertificate("0a01", "CN=alice,DC=corp,DC=example", "alice@corp.example");
  ASSERT_TRUE(store().RecordIssued(id, cert, std::nullopt, "policy", 3000).ok());

  absl::StatusOr<RequestRecord> r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kIssued);
  EXPECT_EQ(r->serial, "0a01");
  EXPECT_EQ(r->resolved_at, 3000);
  EXPECT_EQ(r->resolved_by, "policy");
  EXPECT_FALSE(r->archived_key.has_value());

  absl::StatusOr<CertificateRecord> stored = store().GetCertificate("0a01");
  ASSERT_TRUE(stored.ok()) << stored.status();
  cert.request_id = id;  // filled in from the request
  ExpectSameCertificate(*stored, cert);

  // A second issue of the same request fails and writes no certificate.
  CertificateRecord second = MakeCertificate("0a02", "CN=alice,DC=corp,DC=example");
  absl::Status again = store().RecordIssued(id, second, std::nullopt, "policy", 3001);
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  EXPECT_EQ(store().GetCertificate("0a02").status().code(), absl::StatusCode::kNotFound);
  r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->serial, "0a01");
  EXPECT_EQ(r->resolved_at, 3000);

  absl::Status unknown =
      store().RecordIssued(id + 100, MakeCertificate("0a03", "CN=x"), std::nullopt, "p", 1);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound) << unknown;
  EXPECT_EQ(store().GetCertificate("0a03").status().code(), absl::StatusCode::kNotFound);

  int64_t denied = Submit("bob");
  ASSERT_TRUE(store().ResolveRequest(denied, Disposition::kDenied, "", 0, "policy", 1).ok());
  absl::Status after_denial =
      store().RecordIssued(denied, MakeCertificate("0a04", "CN=bob"), std::nullopt, "p", 2);
  EXPECT_EQ(after_denial.code(), absl::StatusCode::kFailedPrecondition) << after_denial;

  // A certificate record that names another request is a caller bug.
  int64_t other = Submit("carol");
  CertificateRecord mismatched = MakeCertificate("0a05", "CN=carol");
  mismatched.request_id = id;
  absl::Status wrong = store().RecordIssued(other, mismatched, std::nullopt, "p", 3);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument) << wrong;
}

TEST_P(StoreTest, RecordIssuedWithTakenSerialWritesNothing) {
  int64_t first = Submit("alice");
  ASSERT_TRUE(
      store().RecordIssued(first, MakeCertificate("0b01", "CN=alice"), std::nullopt, "p", 10).ok());

  int64_t second = Submit("bob");
  CertificateRecord clash = MakeCertificate("0b01", "CN=bob", "bob@corp.example");
  clash.sha1 = std::string(40, 'c');  // only the serial is taken
  absl::Status s = store().RecordIssued(second, clash, MakeArchivedKey(), "p", 11);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_TRUE(MessageHas(s, "0b01"));

  absl::StatusOr<RequestRecord> r = store().GetRequest(second);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kPending);
  EXPECT_EQ(r->serial, "");
  EXPECT_EQ(r->resolved_at, 0);
  EXPECT_EQ(r->resolved_by, "");
  EXPECT_FALSE(r->archived_key.has_value());

  CertificateQuery by_request;
  by_request.request_id = second;
  EXPECT_TRUE(Serials(store().FindCertificates(by_request)).empty());
  absl::StatusOr<CertificateRecord> kept = store().GetCertificate("0b01");
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(kept->request_id, first);
  EXPECT_EQ(kept->subject, "CN=alice");

  // The request is still pending, so it can be issued properly afterwards.
  EXPECT_TRUE(
      store()
          .RecordIssued(second, MakeCertificate("0b02", "CN=bob"), MakeArchivedKey(), "p", 12)
          .ok());
}

TEST_P(StoreTest, RecordIssuedWithTakenThumbprintWritesNothing) {
  int64_t first = Submit("alice");
  CertificateRecord a = MakeCertificate("0c01", "CN=alice");
  ASSERT_TRUE(store().RecordIssued(first, a, std::nullopt, "p", 10).ok());

  int64_t second = Submit("bob");
  CertificateRecord clash = MakeCertificate("0c02", "CN=bob");
  clash.sha1 = a.sha1;
  absl::Status s = store().RecordIssued(second, clash, MakeArchivedKey(), "p", 11);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;

  absl::StatusOr<RequestRecord> r = store().GetRequest(second);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kPending);
  EXPECT_FALSE(r->archived_key.has_value());
  EXPECT_EQ(store().GetCertificate("0c02").status().code(), absl::StatusCode::kNotFound);
}

TEST_P(StoreTest, AuditRecordsCommitWithTheirStateChangeOrNotAtAll) {
  // Inserted with its "request.received" record, which names the new id.
  RequestRecord request = MakeRequest("alice");
  request.submitted_at = 500;
  absl::StatusOr<int64_t> id = store().InsertRequest(request, [](int64_t new_id) {
    return std::vector<AuditEntry>{
        {"alice", "request.received", StrCat("{\"request_id\":", new_id, "}")}};
  });
  ASSERT_TRUE(id.ok()) << id.status();
  // Issued with two records in the same transaction.
  const std::vector<AuditEntry> issued = {{"policy", "archival.done", "{}"},
                                          {"policy", "request.issued", "{}"}};
  ASSERT_TRUE(store()
                  .RecordIssued(*id, MakeCertificate("0d01", "CN=alice"), MakeArchivedKey(),
                                "policy", 600, issued)
                  .ok());
  absl::StatusOr<std::vector<AuditRecord>> records = store().ReadAudit(1, 100);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), 3u);
  EXPECT_EQ((*records)[0].event, "request.received");
  EXPECT_EQ((*records)[0].details, StrCat("{\"request_id\":", *id, "}"));
  EXPECT_EQ((*records)[0].time, 500);
  EXPECT_EQ((*records)[1].event, "archival.done");
  EXPECT_EQ((*records)[2].event, "request.issued");
  EXPECT_EQ((*records)[2].time, 600);
  EXPECT_TRUE(VerifyAuditChain(*records).ok()) << VerifyAuditChain(*records);

  // A refused issuance (serial taken) appends none of its records.
  int64_t second = Submit("bob");
  absl::Status s = store().RecordIssued(second, MakeCertificate("0d01", "CN=bob"),
                                        MakeArchivedKey(), "policy", 700, issued);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  records = store().ReadAudit(1, 100);
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 3u);
  EXPECT_EQ(store().GetRequest(second)->disposition, Disposition::kPending);
}

// KRA rollover: the archive gets its new envelope and KRAs, the old ones go
// to the history (versions 1, 2, ...), and a stale expectation changes nothing.
TEST_P(StoreTest, RewrapReplacesTheArchiveAndKeepsTheOldOneInTheHistory) {
  int64_t id = Submit("alice");
  const ArchivedKey key = MakeArchivedKey();
  ASSERT_TRUE(
      store().RecordIssued(id, MakeCertificate("0e01", "CN=alice"), key, "policy", 10).ok());
  const std::vector<uint8_t> second = {0x30, 0x03, 0x02, 0x01, 0x07};
  const std::vector<uint8_t> third = {0x30, 0x03, 0x02, 0x01, 0x09};
  const std::vector<std::string> kras2 = {std::string(40, 'c')};
  const std::vector<std::string> kras3 = {std::string(40, 'd'), std::string(40, 'e')};

  // The stored envelope is not what the rewrap was made from: refused.
  absl::StatusOr<int64_t> stale =
      store().ReplaceArchivedKey(id, second, third, kras3, "", "CN=officer", 20,
                                 {{"CN=officer", "archival.key_rewrapped", "{}"}});
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition) << stale.status();
  EXPECT_TRUE(store().ArchiveHistory(id)->empty());
  ExpectSameArchivedKey(store().GetRequest(id)->archived_key, key);
  const size_t audit_before = store().ReadAudit(1, 1000)->size();

  absl::StatusOr<int64_t> v1 =
      store().ReplaceArchivedKey(id, key.envelope, second, kras2, "", "CN=officer", 20,
                                 {{"CN=officer", "archival.key_rewrapped", "{\"n\":1}"}});
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(*v1, 1);
  absl::StatusOr<int64_t> v2 = store().ReplaceArchivedKey(
      id, second, third, kras3, "des3-rsa-pkcs1-threshold-2of2", "CN=other", 30, {});
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(*v2, 2);
  EXPECT_EQ(store().ReadAudit(1, 1000)->size(), audit_before + 1);

  absl::StatusOr<RequestRecord> r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->archived_key->envelope, third);
  EXPECT_EQ(r->archived_key->kra_sha1, kras3);
  EXPECT_EQ(r->archived_key->scheme, "des3-rsa-pkcs1-threshold-2of2");  // a threshold rewrap
  EXPECT_EQ(r->archived_key->encrypted_key_hash, key.encrypted_key_hash);

  absl::StatusOr<std::vector<ArchiveHistoryRecord>> h = store().ArchiveHistory(id);
  ASSERT_TRUE(h.ok()) << h.status();
  ASSERT_EQ(h->size(), 2u);
  EXPECT_EQ((*h)[0].version, 1);
  EXPECT_EQ((*h)[0].envelope, key.envelope);
  EXPECT_EQ((*h)[0].kra_sha1, key.kra_sha1);
  EXPECT_EQ((*h)[0].scheme, key.scheme);
  EXPECT_EQ((*h)[0].replaced_by, "CN=officer");
  EXPECT_EQ((*h)[0].replaced_at, 20);
  EXPECT_EQ((*h)[1].version, 2);
  EXPECT_EQ((*h)[1].envelope, second);
  EXPECT_EQ((*h)[1].kra_sha1, kras2);
  EXPECT_EQ((*h)[1].scheme, key.scheme);  // the first rewrap kept it
  EXPECT_EQ((*h)[1].replaced_by, "CN=other");

  // A request without an archived key, and an unknown one.
  int64_t plain = Submit("bob");
  EXPECT_EQ(
      store().ReplaceArchivedKey(plain, {}, second, kras2, "", "CN=o", 40, {}).status().code(),
      absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(
      store().ReplaceArchivedKey(999999, {}, second, kras2, "", "CN=o", 40, {}).status().code(),
      absl::StatusCode::kNotFound);

  // The history survives a backup.
  const std::string path = dir_.File("history-backup.db");
  ASSERT_TRUE(store().admin().Backup(path).ok());
  auto copy = GetParam().open_backup(path);
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ((*copy)->ArchiveHistory(id)->size(), 2u);
}

// A database of schema version 4 (before the archive history) is migrated.
TEST_P(StoreTest, Schema4DatabaseGetsTheArchiveHistory) {
  EXPECT_EQ(store().admin().SchemaVersion(), 5);
  int64_t id = Submit("alice");
  const ArchivedKey key = MakeArchivedKey();
  ASSERT_TRUE(
      store().RecordIssued(id, MakeCertificate("0f01", "CN=alice"), key, "policy", 10).ok());
  Close();
  const bool sqlite = GetParam().name == "Sqlite";
  ASSERT_TRUE(GetParam()
                  .tamper(dir_.path(), sqlite
                                           ? "DROP TABLE archive_history; PRAGMA user_version = 4;"
                                           : "DROP TABLE archive_history; DELETE FROM "
                                             "keywarden_schema; INSERT INTO keywarden_schema "
                                             "(version) VALUES (4);")
                  .ok());
  auto reopened = GetParam().open(dir_.path());
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->admin().SchemaVersion(), 5);
  ExpectSameArchivedKey((*reopened)->GetRequest(id)->archived_key, key);
  EXPECT_TRUE((*reopened)->ArchiveHistory(id)->empty());
  auto v = (*reopened)->ReplaceArchivedKey(id, key.envelope, {0x30, 0x00}, {std::string(40, 'c')},
                                           "", "CN=officer", 20, {});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ((*reopened)->ArchiveHistory(id)->size(), 1u);
}

TEST_P(StoreTest, ArchivedKeyRoundTrips) {
  int64_t id = Submit("alice");
  ArchivedKey key = MakeArchivedKey();
  ASSERT_TRUE(
      store().RecordIssued(id, MakeCertificate("0d01", "CN=alice"), key, "policy", 10).ok());
  absl::StatusOr<RequestRecord> r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectSameArchivedKey(r->archived_key, key);

  // One KRA, and a key stored with the request itself.
  RequestRecord with_key = MakeRequest("bob");
  ArchivedKey single = MakeArchivedKey();
  single.scheme = "des3-rsa-pkcs1";
  single.kra_sha1 = {std::string(40, 'f')};
  with_key.archived_key = single;
  absl::StatusOr<int64_t> id2 = store().InsertRequest(with_key);
  ASSERT_TRUE(id2.ok()) << id2.status();
  absl::StatusOr<RequestRecord> r2 = store().GetRequest(*id2);
  ASSERT_TRUE(r2.ok()) << r2.status();
  ExpectSameArchivedKey(r2->archived_key, single);

  // Issuing without a key keeps the one the request already has.
  ASSERT_TRUE(
      store().RecordIssued(*id2, MakeCertificate("0d02", "CN=bob"), std::nullopt, "p", 11).ok());
  r2 = store().GetRequest(*id2);
  ASSERT_TRUE(r2.ok()) << r2.status();
  ExpectSameArchivedKey(r2->archived_key, single);
}

TEST_P(StoreTest, FindCertificates) {
  int64_t alice = Submit("alice");
  int64_t bob = Submit("bob");
  CertificateRecord a =
      MakeCertificate("0a01", "CN=Alice Smith,OU=Users,DC=corp,DC=example", "alice@corp.example");
  CertificateRecord b =
      MakeCertificate("0b02", "CN=Bob Jones,OU=Users,DC=corp,DC=example", "bob@corp.example");
  ASSERT_TRUE(store().RecordIssued(alice, a, MakeArchivedKey(), "policy", 10).ok());
  ASSERT_TRUE(store().RecordIssued(bob, b, std::nullopt, "policy", 11).ok());
  for (const CertificateRecord& c : {
           MakeCertificate("0c03", "CN=Corp Root CA,DC=corp,DC=example"),
           MakeCertificate("0d04", "CN=Alice Smith Jr,O=Other Org", "alice.jr@other.example"),
           MakeCertificate("0e05", "CN=Mallory,OU=Alice Smith,O=Other Org"),
           MakeCertificate("0f06", "CN=Smith\\, Alice,O=Escaped Org"),
           MakeCertificate("1007", "CN=O'Brien+UID=obrien,O=Quote Org"),
       }) {
    absl::Status s = store().InsertCertificate(c);
    ASSERT_TRUE(s.ok()) << s;
  }
  using V = std::vector<std::string>;
  auto find = [&](const std::function<void(CertificateQuery&)>& set) {
    CertificateQuery q;
    set(q);
    return Serials(store().FindCertificates(q));
  };

  EXPECT_EQ(find([](CertificateQuery&) {}).size(), 7u);
  EXPECT_EQ(find([](CertificateQuery& q) { q.limit = 2; }).size(), 2u);
  EXPECT_EQ(find([](CertificateQuery& q) { q.serial = "0b02"; }), V{"0b02"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.serial = "ffff"; }), V{});
  EXPECT_EQ(find([&](CertificateQuery& q) { q.sha1 = a.sha1; }), V{"0a01"});
  // Exact CN: not a prefix, not another attribute, escapes undone.
  EXPECT_EQ(find([](CertificateQuery& q) { q.common_name = "Alice Smith"; }), V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.common_name = "Smith, Alice"; }), V{"0f06"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.common_name = "O'Brien"; }), V{"1007"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.common_name = "Alice"; }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.upn = "bob@corp.example"; }), V{"0b02"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.upn = "bob"; }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject_contains = "alice smith"; }),
            (V{"0a01", "0d04", "0e05"}));
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject_contains = "ALICE"; }),
            (V{"0a01", "0d04", "0e05", "0f06"}));
  EXPECT_EQ(find([&](CertificateQuery& q) { q.request_id = alice; }), V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.only_with_archived_key = true; }), V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) {
              q.subject_contains = "corp";
              q.only_with_archived_key = true;
            }),
            V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) {
              q.subject_contains = "OU=Users";
              q.upn = "bob@corp.example";
            }),
            V{"0b02"});
  EXPECT_EQ(find([](CertificateQuery& q) {
              q.common_name = "Alice Smith";
              q.upn = "bob@corp.example";
            }),
            V{});
  // Search text is literal, never a pattern or SQL. (The one-character
  // strings are built, not assigned from a literal: GCC 12 at -O3 reports a
  // false -Wrestrict in the inlined basic_string::_M_replace of such an
  // assignment, GCC bug 105329.)
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject_contains = std::string(1, '%'); }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject_contains = std::string(1, '_'); }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject_contains = std::string(1, '\''); }),
            V{"1007"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.common_name = "x' OR '1'='1"; }), V{});

  absl::StatusOr<std::vector<CertificateRecord>> full = [&] {
    CertificateQuery q;
    q.serial = "0a01";
    return store().FindCertificates(q);
  }();
  ASSERT_TRUE(full.ok()) << full.status();
  ASSERT_EQ(full->size(), 1u);
  a.request_id = alice;
  ExpectSameCertificate((*full)[0], a);
}

TEST_P(StoreTest, RevokeAndListForTheCrl) {
  CertificateRecord expiring = MakeCertificate("0a01", "CN=short");
  expiring.not_after = 5000;
  CertificateRecord valid = MakeCertificate("0a02", "CN=long");
  valid.not_after = 100000;
  CertificateRecord untouched = MakeCertificate("0a03", "CN=fine");
  for (const CertificateRecord& c : {expiring, valid, untouched}) {
    ASSERT_TRUE(store().InsertCertificate(c).ok());
  }

  ASSERT_TRUE(store().Revoke("0a01", 1, 2000).ok());
  ASSERT_TRUE(store().Revoke("0a02", 4, 2100).ok());
  absl::Status twice = store().Revoke("0a02", 5, 2200);
  EXPECT_EQ(twice.code(), absl::StatusCode::kFailedPrecondition) << twice;
  absl::Status unknown = store().Revoke("ffff", 1, 2200);
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound) << unknown;
  EXPECT_TRUE(MessageHas(unknown, "ffff"));

  absl::StatusOr<CertificateRecord> got = store().GetCertificate("0a02");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->revoked);
  EXPECT_EQ(got->revocation_reason, 4);
  EXPECT_EQ(got->revoked_at, 2100);

  using V = std::vector<std::string>;
  EXPECT_EQ(Serials(store().RevokedCertificates(3000)), (V{"0a01", "0a02"}));
  EXPECT_EQ(Serials(store().RevokedCertificates(5000)), (V{"0a01", "0a02"}));  // expires at 5000
  EXPECT_EQ(Serials(store().RevokedCertificates(5001)), V{"0a02"});
  EXPECT_EQ(Serials(store().RevokedCertificates(200000)), V{});
}

// certutil -revoke SERIAL Unrevoke: only a certificateHold is released,
// and a failed release inside a unit of work keeps nothing of it.
TEST_P(StoreTest, OnlyAHoldIsReleasedAndTheReleaseLeavesTheCrl) {
  for (const char* serial : {"0b01", "0b02", "0b03"}) {
    CertificateRecord c = MakeCertificate(serial, StrCat("CN=", serial));
    c.not_after = 100000;
    ASSERT_TRUE(store().InsertCertificate(c).ok());
  }
  ASSERT_TRUE(store().Revoke("0b01", 6, 2000).ok());  // certificateHold
  ASSERT_TRUE(store().Revoke("0b02", 1, 2000).ok());  // keyCompromise
  auto release = [&](const std::string& serial) -> absl::StatusOr<CertificateRecord> {
    absl::StatusOr<CertificateRecord> out = absl::UnknownError("not run");
    absl::Status st = store().Transact("release", [&](Transaction& t) -> absl::Status {
      out = t.ReleaseHold(serial);
      return out.status();
    });
    if (!st.ok()) return st;
    return out;
  };
  auto compromised = release("0b02");
  EXPECT_EQ(compromised.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(MessageHas(compromised.status(), "not certificateHold"));
  auto valid = release("0b03");
  EXPECT_EQ(valid.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(MessageHas(valid.status(), "not revoked"));
  EXPECT_EQ(release("ffff").status().code(), absl::StatusCode::kNotFound);

  using V = std::vector<std::string>;
  EXPECT_EQ(Serials(store().RevokedCertificates(3000)), (V{"0b01", "0b02"}));
  auto held = release("0b01");
  ASSERT_TRUE(held.ok()) << held.status();
  EXPECT_EQ(held->revocation_reason, 6);  // the row as it was
  EXPECT_EQ(held->revoked_at, 2000);
  EXPECT_EQ(Serials(store().RevokedCertificates(3000)), V{"0b02"});
  auto now = store().GetCertificate("0b01");
  ASSERT_TRUE(now.ok());
  EXPECT_FALSE(now->revoked);
  EXPECT_EQ(now->revocation_reason, 0);
  EXPECT_EQ(release("0b01").status().code(), absl::StatusCode::kFailedPrecondition);

  // Released in a unit of work that then fails: still held.
  ASSERT_TRUE(store().Revoke("0b01", 6, 2500).ok());
  absl::Status failed = store().Transact("release, then fail", [&](Transaction& t) -> absl::Status {
    if (auto r = t.ReleaseHold("0b01"); !r.ok()) return r.status();
    return absl::AbortedError("changed my mind");
  });
  EXPECT_EQ(failed.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Serials(store().RevokedCertificates(3000)), (V{"0b01", "0b02"}));
}

TEST_P(StoreTest, SettingsAndCounters) {
  EXPECT_EQ(store().GetSetting("exchange.serial").status().code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store().PutSetting("exchange.serial", "0a1b").ok());
  EXPECT_EQ(store().GetSetting("exchange.serial").value_or("?"), "0a1b");
  ASSERT_TRUE(store().PutSetting("exchange.serial", "0c0d").ok());
  EXPECT_EQ(store().GetSetting("exchange.serial").value_or("?"), "0c0d");
  ASSERT_TRUE(store().PutSetting("empty", "").ok());
  EXPECT_EQ(store().GetSetting("empty").value_or("?"), "");

  EXPECT_EQ(store().NextCounter("crl.number").value_or(-1), 1);
  EXPECT_EQ(store().NextCounter("crl.number").value_or(-1), 2);
  EXPECT_EQ(store().GetSetting("crl.number").value_or("?"), "2");
  ASSERT_TRUE(store().PutSetting("serial.counter", "41").ok());
  EXPECT_EQ(store().NextCounter("serial.counter").value_or(-1), 42);

  // A counter that does not hold a number is not silently restarted.
  absl::StatusOr<int64_t> bad = store().NextCounter("exchange.serial");
  EXPECT_FALSE(bad.ok());
  EXPECT_TRUE(MessageHas(bad.status(), "exchange.serial"));
  EXPECT_EQ(store().GetSetting("exchange.serial").value_or("?"), "0c0d");
}

TEST_P(StoreTest, CounterFromEightThreadsNeverRepeats) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 100;
  std::vector<std::vector<int64_t>> values(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<int64_t> v = store().NextCounter("crl.number");
        if (v.ok()) {
          values[t].push_back(*v);
        } else {
          ++failures;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  std::set<int64_t> distinct;
  for (const auto& v : values) distinct.insert(v.begin(), v.end());
  EXPECT_EQ(distinct.size(), size_t{kThreads * kPerThread});
  EXPECT_EQ(*distinct.begin(), 1);
  EXPECT_EQ(*distinct.rbegin(), kThreads * kPerThread);
  EXPECT_EQ(store().GetSetting("crl.number").value_or("?"), StrCat(kThreads * kPerThread));
}

// Leases: one holder at a time; it renews its own; another gets it only
// once it has expired or been released; two stores (two replicas) racing
// for it never both win.
TEST_P(StoreTest, LeaseHasOneHolderUntilItExpiresOrIsReleased) {
  EXPECT_EQ(store().AcquireLease("crl", "replica-a", 1000, 60).value_or(false), true);
  EXPECT_EQ(store().AcquireLease("crl", "replica-b", 1059, 60).value_or(true), false);
  EXPECT_EQ(store().AcquireLease("crl", "replica-a", 1059, 60).value_or(false), true);  // renewed
  EXPECT_EQ(store().AcquireLease("crl", "replica-b", 1100, 60).value_or(true), false);
  EXPECT_EQ(store().AcquireLease("crl", "replica-b", 1119, 60).value_or(false), true);  // expired
  EXPECT_EQ(store().AcquireLease("exchange", "replica-a", 1119, 60).value_or(false), true);
  ASSERT_TRUE(store().ReleaseLease("crl", "replica-a").ok());  // not a's: nothing happens
  EXPECT_EQ(store().AcquireLease("crl", "replica-a", 1120, 60).value_or(true), false);
  ASSERT_TRUE(store().ReleaseLease("crl", "replica-b").ok());
  EXPECT_EQ(store().AcquireLease("crl", "replica-a", 1120, 60).value_or(false), true);
  EXPECT_FALSE(store().AcquireLease("", "replica-a", 1120, 60).ok());
  EXPECT_FALSE(store().AcquireLease("crl", "", 1120, 60).ok());
  EXPECT_FALSE(store().AcquireLease("crl", "replica-a", 1120, 0).ok());

  absl::StatusOr<std::unique_ptr<Store>> other = GetParam().open(dir_.path());
  ASSERT_TRUE(other.ok()) << other.status();
  std::atomic<int> won{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      Store* s = t % 2 == 0 ? &store() : other->get();
      absl::StatusOr<bool> got = s->AcquireLease("race", StrCat("replica-", t), 5000, 30);
      if (!got.ok()) ++failures;
      if (got.value_or(false)) ++won;
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(won.load(), 1);
}

// Two stores on one database stand for two processes (the daemon and the CLI).
TEST_P(StoreTest, TwoStoresOnOneDatabaseShareCounterAndChain) {
  absl::StatusOr<std::unique_ptr<Store>> other = GetParam().open(dir_.path());
  ASSERT_TRUE(other.ok()) << other.status();
  std::vector<Store*> stores = {&store(), other->get()};
  std::vector<std::vector<int64_t>> values(4);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      Store* s = stores[t % 2];
      for (int i = 0; i < 50; ++i) {
        absl::StatusOr<int64_t> v = s->NextCounter("serial");
        if (v.ok()) {
          values[t].push_back(*v);
        } else {
          ++failures;
        }
        if (!s->AppendAudit("system", "test", "{}", i).ok()) ++failures;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  std::set<int64_t> distinct;
  for (const auto& v : values) distinct.insert(v.begin(), v.end());
  EXPECT_EQ(distinct.size(), 200u);
  absl::StatusOr<std::vector<AuditRecord>> records = store().ReadAudit(1, 1000);
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 200u);
  EXPECT_TRUE(VerifyAuditChain(*records).ok()) << VerifyAuditChain(*records);
}

TEST_P(StoreTest, AuditFromEightThreadsFormsOneChain) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 50;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      int64_t last_seq = 0;
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<AuditRecord> r = store().AppendAudit(
            StrCat("thread", t), "request.submitted", StrCat("{\"i\":", i, "}"), 1000 + i);
        // A thread's own records come back in increasing seq order.
        if (!r.ok() || r->seq <= last_seq || r->hash.size() != 32) {
          ++failures;
        } else {
          last_seq = r->seq;
        }
      }
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);

  absl::StatusOr<std::vector<AuditRecord>> records = store().ReadAudit(1, 100000);
  ASSERT_TRUE(records.ok()) << records.status();
  ASSERT_EQ(records->size(), size_t{kThreads * kPerThread});
  for (size_t i = 0; i < records->size(); ++i) {
    EXPECT_EQ((*records)[i].seq, static_cast<int64_t>(i + 1));
  }
  EXPECT_EQ((*records)[0].prev_hash, std::vector<uint8_t>(32, 0));
  absl::Status verified = VerifyAuditChain(*records);
  EXPECT_TRUE(verified.ok()) << verified;
}

TEST_P(StoreTest, ReadAuditFromSeqWithLimit) {
  AppendTenAuditRecords();
  absl::StatusOr<std::vector<AuditRecord>> part = store().ReadAudit(4, 3);
  ASSERT_TRUE(part.ok()) << part.status();
  ASSERT_EQ(part->size(), 3u);
  EXPECT_EQ((*part)[0].seq, 4);
  EXPECT_EQ((*part)[2].seq, 6);
  EXPECT_EQ((*part)[0].principal, "officer");
  EXPECT_EQ((*part)[0].event, "request.issued");
  EXPECT_EQ((*part)[0].details, "{\"n\":4}");
  EXPECT_EQ((*part)[0].time, 1004);
  EXPECT_EQ((*part)[0].hash, AuditHash((*part)[0]));
  EXPECT_EQ((*part)[1].prev_hash, (*part)[0].hash);
  absl::StatusOr<std::vector<AuditRecord>> none = store().ReadAudit(11, 10);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_TRUE(none->empty());
}

TEST_P(StoreTest, AuditEditIsDetected) {
  if (!GetParam().tamper) GTEST_SKIP() << "backend has no tamper hook";
  AppendTenAuditRecords();
  ASSERT_TRUE(VerifyStoredChain().ok());
  Close();
  ASSERT_TRUE(GetParam()
                  .tamper(dir_.path(),
                          "UPDATE audit SET details = '{\"n\":\"forged\"}' "
                          "WHERE seq = 5")
                  .ok());
  Open();
  absl::Status s = VerifyStoredChain();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(MessageHas(s, "seq 5"));
  EXPECT_TRUE(MessageHas(s, "edited"));
}

TEST_P(StoreTest, AuditDeletionIsDetected) {
  if (!GetParam().tamper) GTEST_SKIP() << "backend has no tamper hook";
  AppendTenAuditRecords();
  Close();
  ASSERT_TRUE(GetParam().tamper(dir_.path(), "DELETE FROM audit WHERE seq = 5").ok());
  Open();
  absl::Status s = VerifyStoredChain();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(MessageHas(s, "seq 5"));
  EXPECT_TRUE(MessageHas(s, "missing"));
}

TEST_P(StoreTest, AuditReorderIsDetected) {
  if (!GetParam().tamper) GTEST_SKIP() << "backend has no tamper hook";
  AppendTenAuditRecords();
  Close();
  // Rows 3 and 5 trade places: each seq now holds the other's contents.
  ASSERT_TRUE(GetParam()
                  .tamper(dir_.path(),
                          "UPDATE audit SET seq = -3 WHERE seq = 3; "
                          "UPDATE audit SET seq = 3 WHERE seq = 5; "
                          "UPDATE audit SET seq = 5 WHERE seq = -3;")
                  .ok());
  Open();
  absl::Status s = VerifyStoredChain();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_TRUE(MessageHas(s, "seq 3"));
  EXPECT_TRUE(MessageHas(s, "reordered"));
}

TEST_P(StoreTest, DataSurvivesReopening) {
  int64_t id = Submit("alice");
  ArchivedKey key = MakeArchivedKey();
  CertificateRecord cert = MakeCertificate("0a01", "CN=alice", "alice@corp.example");
  ASSERT_TRUE(store().RecordIssued(id, cert, key, "policy", 10).ok());
  ASSERT_TRUE(store().PutSetting("ca.name", "Corp Issuing CA").ok());
  ASSERT_TRUE(store().NextCounter("crl.number").ok());
  AppendTenAuditRecords();

  Reopen();
  absl::StatusOr<RequestRecord> r = store().GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kIssued);
  ExpectSameArchivedKey(r->archived_key, key);
  absl::StatusOr<CertificateRecord> c = store().GetCertificate("0a01");
  ASSERT_TRUE(c.ok()) << c.status();
  cert.request_id = id;
  ExpectSameCertificate(*c, cert);
  EXPECT_EQ(store().GetSetting("ca.name").value_or("?"), "Corp Issuing CA");
  EXPECT_EQ(store().NextCounter("crl.number").value_or(-1), 2);
  absl::StatusOr<std::vector<AuditRecord>> records = store().ReadAudit(1, 100);
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 10u);
  EXPECT_TRUE(VerifyAuditChain(*records).ok());
  // The chain continues where it was.
  absl::StatusOr<AuditRecord> next = store().AppendAudit("system", "ca.started", "{}", 2000);
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->seq, 11);
  EXPECT_TRUE(VerifyStoredChain().ok());
}

// A pended archival request denied (or failed) loses its archived key in
// the same transaction as the denial and its audit records; a caller may
// keep it (KRAF_SAVEBADREQUESTKEY).
TEST_P(StoreTest, ResolveRequestDiscardsTheArchivedKeyWithItsAuditInOneTransaction) {
  const int64_t denied = Submit("alice");
  ASSERT_TRUE(store().AttachArchivedKey(denied, MakeArchivedKey()).ok());
  absl::Status st = store().ResolveRequest(
      denied, Disposition::kDenied, "Denied by the Certificate Manager", 0, "officer", 500,
      /*discard_archived_key=*/true,
      {{"officer", "request.denied", StrCat("{\"request_id\":", denied, "}")},
       {"officer", "archival.key_discarded", StrCat("{\"request_id\":", denied, "}")}});
  ASSERT_TRUE(st.ok()) << st;
  absl::StatusOr<RequestRecord> r = store().GetRequest(denied);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kDenied);
  EXPECT_EQ(r->resolved_by, "officer");
  EXPECT_FALSE(r->archived_key.has_value());
  absl::StatusOr<std::vector<AuditRecord>> audit = store().ReadAudit(1, 100);
  ASSERT_TRUE(audit.ok()) << audit.status();
  ASSERT_EQ(audit->size(), 2u);
  EXPECT_EQ((*audit)[0].event, "request.denied");
  EXPECT_EQ((*audit)[1].event, "archival.key_discarded");
  EXPECT_EQ((*audit)[1].time, 500);
  EXPECT_TRUE(VerifyStoredChain().ok());

  // Kept: the key stays with the failed request.
  const int64_t kept = Submit("bob");
  ASSERT_TRUE(store().AttachArchivedKey(kept, MakeArchivedKey()).ok());
  ASSERT_TRUE(store()
                  .ResolveRequest(kept, Disposition::kFailed, "token error", 0, "system", 501,
                                  /*discard_archived_key=*/false,
                                  {{"system", "archival.key_kept", "{}"}})
                  .ok());
  r = store().GetRequest(kept);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kFailed);
  ExpectSameArchivedKey(r->archived_key, MakeArchivedKey());

  // Not pending: nothing changes, no audit record is added.
  absl::Status again = store().ResolveRequest(kept, Disposition::kDenied, "x", 0, "officer", 502,
                                              true, {{"officer", "archival.key_discarded", "{}"}});
  EXPECT_EQ(again.code(), absl::StatusCode::kFailedPrecondition) << again;
  r = store().GetRequest(kept);
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectSameArchivedKey(r->archived_key, MakeArchivedKey());
  EXPECT_EQ(store().ReadAudit(1, 100)->size(), 3u);
}

TEST_P(StoreTest, BackupIsAStoreWithTheSameData) {
  int64_t id = Submit("alice");
  ASSERT_TRUE(
      store()
          .RecordIssued(id, MakeCertificate("0a01", "CN=alice"), MakeArchivedKey(), "policy", 10)
          .ok());
  ASSERT_TRUE(store().PutSetting("ca.name", "Corp Issuing CA").ok());
  AppendTenAuditRecords();

  testing::TempDir backups;
  const std::string path = backups.File("ca-backup.db");
  absl::Status backed_up = store().admin().Backup(path);
  ASSERT_TRUE(backed_up.ok()) << backed_up;

  // The original keeps working; the copy does not see later writes.
  ASSERT_TRUE(store().PutSetting("ca.name", "changed").ok());

  absl::StatusOr<std::unique_ptr<Store>> copy = GetParam().open_backup(path);
  ASSERT_TRUE(copy.ok()) << copy.status();
  absl::StatusOr<RequestRecord> r = (*copy)->GetRequest(id);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->disposition, Disposition::kIssued);
  ExpectSameArchivedKey(r->archived_key, MakeArchivedKey());
  EXPECT_TRUE((*copy)->GetCertificate("0a01").ok());
  EXPECT_EQ((*copy)->GetSetting("ca.name").value_or("?"), "Corp Issuing CA");
  absl::StatusOr<std::vector<AuditRecord>> records = (*copy)->ReadAudit(1, 100);
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 10u);
  EXPECT_TRUE(VerifyAuditChain(*records).ok());
  EXPECT_EQ((*copy)->admin().SchemaVersion(), store().admin().SchemaVersion());
}

TEST_P(StoreTest, BackupRefusesAnExistingPath) {
  testing::TempDir backups;
  const std::string path = backups.File("precious");
  testing::WriteFile(path, std::string("do not overwrite"));
  absl::Status s = store().admin().Backup(path);
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_TRUE(MessageHas(s, path));
  std::vector<uint8_t> content = testing::ReadFile(path);
  EXPECT_EQ(std::string(content.begin(), content.end()), "do not overwrite");
}

TEST_P(StoreTest, BackupIsConsistentWhileOthersWrite) {
  AppendTenAuditRecords();
  std::atomic<bool> stop{false};
  std::atomic<int> appended{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> writers;
  for (int t = 0; t < 4; ++t) {
    writers.emplace_back([&, t] {
      while (!stop.load()) {
        if (store().AppendAudit(StrCat("writer", t), "test", "{}", 1).ok() &&
            store().NextCounter("serial").ok()) {
          ++appended;
        } else {
          ++failures;
        }
      }
    });
  }
  while (appended.load() < 50 && failures.load() == 0) std::this_thread::yield();
  testing::TempDir backups;
  const std::string path = backups.File("busy.db");
  absl::Status backed_up = store().admin().Backup(path);
  stop = true;
  for (std::thread& t : writers) t.join();
  ASSERT_TRUE(backed_up.ok()) << backed_up;
  EXPECT_EQ(failures.load(), 0);

  absl::StatusOr<std::unique_ptr<Store>> copy = GetParam().open_backup(path);
  ASSERT_TRUE(copy.ok()) << copy.status();
  absl::StatusOr<std::vector<AuditRecord>> records = (*copy)->ReadAudit(1, 1000000);
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_GE(records->size(), 60u);
  absl::Status verified = VerifyAuditChain(*records);
  EXPECT_TRUE(verified.ok()) << verified;
}

TEST_P(StoreTest, NewerSchemaVersionIsRefused) {
  if (!GetParam().set_schema_version) GTEST_SKIP() << "backend has no schema version hook";
  const int current = store().admin().SchemaVersion();
  ASSERT_GE(current, 1);
  Close();
  ASSERT_TRUE(GetParam().set_schema_version(dir_.path(), current + 1).ok());
  absl::StatusOr<std::unique_ptr<Store>> store = GetParam().open(dir_.path());
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(MessageHas(store.status(), StrCat("schema version ", current + 1)));
  EXPECT_TRUE(MessageHas(store.status(), "newer"));
}

TEST_P(StoreTest, SchemaDescribesTheTables) {
  EXPECT_GE(store().admin().SchemaVersion(), 1);
  std::string schema = store().admin().Schema();
  for (const char* text : {"CREATE TABLE", "requests", "certificates", "settings", "audit",
                           "archived_key", "prev_hash"}) {
    EXPECT_NE(schema.find(text), std::string::npos) << text << " not in:\n" << schema;
  }
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest,
                         ::testing::Values(SqliteBackend(), PostgresqlBackend()),
                         [](const ::testing::TestParamInfo<Backend>& param_info) {
                           return param_info.param.name;
                         });

// -- SQLite only

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> bytes(n);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
  return bytes;
}

TEST(SqliteStoreTest, GarbageFileIsRefused) {
  testing::TempDir dir;
  const std::string path = dir.File("garbage.db");
  testing::WriteFile(path, RandomBytes(64 * 1024, 1));
  absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
  ASSERT_FALSE(store.ok());
  EXPECT_TRUE(MessageHas(store.status(), path));
  EXPECT_TRUE(MessageHas(store.status(), "not a database"));
  EXPECT_EQ(testing::ReadFile(path), RandomBytes(64 * 1024, 1));  // left as it was
}

TEST(SqliteStoreTest, CorruptPagesAfterAValidHeaderAreRefused) {
  testing::TempDir dir;
  const std::string path = dir.File("ca.db");
  {
    absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)->PutSetting("a", "b").ok());
  }
  // Keep the 100-byte header, scramble everything after it.
  std::vector<uint8_t> bytes = testing::ReadFile(path);
  ASSERT_GT(bytes.size(), 100u);
  std::vector<uint8_t> noise = RandomBytes(bytes.size() - 100, 2);
  std::copy(noise.begin(), noise.end(), bytes.begin() + 100);
  testing::WriteFile(path, bytes);
  absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
  if (store.ok()) {
    // SQLite may only notice when it reads a damaged page; then it must
    // still fail cleanly.
    EXPECT_FALSE((*store)->GetSetting("a").ok());
  } else {
    EXPECT_TRUE(MessageHas(store.status(), path));
  }
}

TEST(SqliteStoreTest, SomeoneElsesDatabaseIsRefused) {
  testing::TempDir dir;
  const std::string path = dir.File("other.db");
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE songs (title TEXT)", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_TRUE(MessageHas(store.status(), "not a keywarden CA database"));
}

TEST(SqliteStoreTest, MissingDirectoryIsNotFound) {
  testing::TempDir dir;
  absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(dir.File("no/such/ca.db"));
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kNotFound) << store.status();
  EXPECT_TRUE(MessageHas(store.status(), "no/such/ca.db"));
}

TEST(SqliteStoreTest, FileIsWalOwnerOnlyAndAuditIsAppendOnly) {
  testing::TempDir dir;
  const std::string path = dir.File("ca.db");
  absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
  ASSERT_TRUE(store.ok()) << store.status();
  ASSERT_TRUE((*store)->AppendAudit("system", "ca.started", "{}", 1).ok());

  EXPECT_EQ(RawSqliteText(path, "PRAGMA journal_mode").value_or("?"), "wal");
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // Without dropping the triggers first, the file refuses to rewrite history.
  absl::Status update = RawSqlite(path, "UPDATE audit SET details = 'x'");
  EXPECT_TRUE(MessageHas(update, "append-only"));
  absl::Status del = RawSqlite(path, "DELETE FROM audit");
  EXPECT_TRUE(MessageHas(del, "append-only"));
  absl::StatusOr<std::vector<AuditRecord>> records = (*store)->ReadAudit(1, 10);
  ASSERT_TRUE(records.ok()) << records.status();
  EXPECT_EQ(records->size(), 1u);
  EXPECT_TRUE(VerifyAuditChain(*records).ok());

  // A backup holds archived keys too.
  const std::string backup = dir.File("backup.db");
  ASSERT_TRUE((*store)->admin().Backup(backup).ok());
  ASSERT_EQ(stat(backup.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

// The discarded key is gone from the file itself (secure_delete), and an
// audit record that cannot be written leaves request and key as they were.
TEST(SqliteStoreTest, DiscardedArchivedKeyLeavesNoBytesAndFailsClosedWithoutItsAudit) {
  testing::TempDir dir;
  const std::string path = dir.File("ca.db");
  // A recognisable envelope of several pages (an overflow chain).
  ArchivedKey key = MakeArchivedKey();
  key.envelope = RandomBytes(12000, 7);
  key.envelope[0] = 0x30;
  const std::vector<uint8_t> needle(key.envelope.begin() + 100, key.envelope.begin() + 164);
  auto file_has_needle = [&] {
    std::vector<uint8_t> bytes = testing::ReadFile(path);
    std::vector<uint8_t> wal = testing::ReadFile(path + "-wal");
    bytes.insert(bytes.end(), wal.begin(), wal.end());
    return std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end()) != bytes.end();
  };
  int64_t id = 0, second = 0;
  {
    absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    id = (*store)->InsertRequest(MakeRequest("alice")).value_or(0);
    second = (*store)->InsertRequest(MakeRequest("bob")).value_or(0);
    ASSERT_TRUE((*store)->AttachArchivedKey(id, key).ok());
  }
  ASSERT_TRUE(file_has_needle()) << "the test's needle must be in the file before";

  // A database fault on the audit insert (as a full disk would be).
  ASSERT_TRUE(RawSqlite(path,
                        "CREATE TRIGGER test_audit_fault BEFORE INSERT ON audit BEGIN "
                        "SELECT RAISE(ABORT, 'audit insert refused by test'); END;")
                  .ok());
  {
    absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    absl::Status st = (*store)->ResolveRequest(id, Disposition::kDenied, "no", 0, "officer", 9,
                                               true, {{"officer", "request.denied", "{}"}});
    EXPECT_FALSE(st.ok());
    EXPECT_TRUE(MessageHas(st, "audit insert refused by test")) << st;
    absl::StatusOr<RequestRecord> r = (*store)->GetRequest(id);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->disposition, Disposition::kPending);
    ASSERT_TRUE(r->archived_key.has_value());
    EXPECT_EQ(r->archived_key->envelope, key.envelope);
  }
  ASSERT_TRUE(RawSqlite(path, "DROP TRIGGER test_audit_fault").ok());
  {
    absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    ASSERT_TRUE((*store)
                    ->ResolveRequest(id, Disposition::kDenied, "no", 0, "officer", 10, true,
                                     {{"officer", "request.denied", "{}"}})
                    .ok());
    ASSERT_TRUE(
        (*store)->ResolveRequest(second, Disposition::kDenied, "no", 0, "officer", 11).ok());
  }  // closed: the WAL is checkpointed into the file
  EXPECT_EQ(
      RawSqliteText(path, StrCat("SELECT archived_key IS NULL, archival_scheme IS NULL, kra_sha1 "
                                 "IS NULL, encrypted_key_hash IS NULL FROM requests WHERE id = ",
                                 id))
          .value_or("?"),
      "1\n1\n1\n1");
  EXPECT_FALSE(file_has_needle()) << "the discarded envelope is still in the database file";
}

// How the daemon reads the copy it streams: whole or an error.
TEST(SqliteStoreTest, StreamBackupFileFailsClosed) {
  testing::TempDir dir;
  const std::string path = dir.File("copy.db");
  const std::vector<uint8_t> bytes = RandomBytes(150000, 9);
  testing::WriteFile(path, bytes);
  std::string streamed;
  size_t calls = 0;
  absl::StatusOr<std::string> sha = StreamBackupFile(path, 64 * 1024, [&](std::string_view d) {
    ++calls;
    streamed.append(d);
    return true;
  });
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(streamed, std::string(bytes.begin(), bytes.end()));
  EXPECT_EQ(calls, 3u);  // 64 KiB + 64 KiB + the rest
  // The checksum, computed here by the sha256sum command.
  auto sum = testing::RunCommand(StrCat("sha256sum ", path));
  ASSERT_EQ(sum.exit_code, 0) << sum.output;
  EXPECT_EQ(sum.output.substr(0, 64), *sha);

  // A copy that cannot be read (a directory where the file should be: the
  // open succeeds, every read fails, even for root).
  const std::string unreadable = dir.File("unreadable.db");
  ASSERT_EQ(mkdir(unreadable.c_str(), 0700), 0);
  calls = 0;
  auto count = [&](std::string_view) {
    ++calls;
    return true;
  };
  absl::StatusOr<std::string> bad = StreamBackupFile(unreadable, 4096, count);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInternal) << bad.status();
  EXPECT_TRUE(MessageHas(bad.status(), "reading the copy")) << bad.status();
  EXPECT_EQ(calls, 0u);
  // Missing, empty.
  absl::StatusOr<std::string> missing = StreamBackupFile(dir.File("gone.db"), 4096, count);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInternal) << missing.status();
  EXPECT_TRUE(MessageHas(missing.status(), "cannot open")) << missing.status();
  const std::string empty = dir.File("empty.db");
  testing::WriteFile(empty, std::vector<uint8_t>{});
  EXPECT_EQ(StreamBackupFile(empty, 4096, count).status().code(), absl::StatusCode::kInternal);
  EXPECT_EQ(calls, 0u);
  // A reader that stops: CANCELLED after the first chunk, no checksum.
  calls = 0;
  absl::StatusOr<std::string> stopped =
      StreamBackupFile(path, 64 * 1024, [&](std::string_view) { return ++calls < 1; });
  EXPECT_EQ(stopped.status().code(), absl::StatusCode::kCancelled) << stopped.status();
  EXPECT_EQ(calls, 1u);
}

// What `keywarden backup` checks before it keeps a copy.
TEST(SqliteStoreTest, VerifySqliteCopyAcceptsOnlyAnIntactKeywardenDatabase) {
  testing::TempDir dir;
  const std::string path = dir.File("ca.db");
  const std::string copy = dir.File("copy.db");
  {
    absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    // No audit record yet: not a CA database anyone ran.
    ASSERT_TRUE((*store)->admin().Backup(dir.File("empty-log.db")).ok());
    for (int i = 1; i <= 3; ++i) {
      ASSERT_TRUE((*store)->AppendAudit("system", "test", StrCat("{\"n\":", i, "}"), i).ok());
    }
    ASSERT_TRUE((*store)->admin().Backup(copy).ok());
  }
  absl::StatusOr<int64_t> good = VerifySqliteCopy(copy);
  ASSERT_TRUE(good.ok()) << good.status();
  EXPECT_EQ(*good, 3);

  absl::StatusOr<int64_t> no_log = VerifySqliteCopy(dir.File("empty-log.db"));
  EXPECT_EQ(no_log.status().code(), absl::StatusCode::kDataLoss) << no_log.status();
  EXPECT_TRUE(MessageHas(no_log.status(), "audit log is empty"));

  // An edited record (triggers dropped, as someone with the file would).
  const std::string edited = dir.File("edited.db");
  testing::WriteFile(edited, testing::ReadFile(copy));
  ASSERT_TRUE(RawSqlite(edited,
                        "DROP TRIGGER audit_no_update; UPDATE audit SET principal = 'mallory' "
                        "WHERE seq = 2")
                  .ok());
  absl::StatusOr<int64_t> bad = VerifySqliteCopy(edited);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kDataLoss) << bad.status();
  EXPECT_TRUE(MessageHas(bad.status(), "audit chain does not verify"));

  // Empty and truncated files, garbage, someone else's database: refused and
  // left as they were (nothing is created or migrated).
  const std::string empty = dir.File("empty.db");
  testing::WriteFile(empty, std::vector<uint8_t>{});
  absl::StatusOr<int64_t> e = VerifySqliteCopy(empty);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kFailedPrecondition) << e.status();
  EXPECT_TRUE(MessageHas(e.status(), "not an SQLite database"));
  EXPECT_TRUE(testing::ReadFile(empty).empty());
  const std::string half = dir.File("half.db");
  std::vector<uint8_t> bytes = testing::ReadFile(copy);
  bytes.resize(bytes.size() / 2);
  testing::WriteFile(half, bytes);
  EXPECT_FALSE(VerifySqliteCopy(half).ok());
  const std::string garbage = dir.File("garbage.db");
  testing::WriteFile(garbage, RandomBytes(8192, 3));
  EXPECT_EQ(VerifySqliteCopy(garbage).status().code(), absl::StatusCode::kFailedPrecondition);
  const std::string other = dir.File("other.db");
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, "CREATE TABLE songs (title TEXT)", nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  absl::StatusOr<int64_t> o = VerifySqliteCopy(other);
  EXPECT_EQ(o.status().code(), absl::StatusCode::kFailedPrecondition) << o.status();
  EXPECT_TRUE(MessageHas(o.status(), "not a keywarden CA database"));
  EXPECT_EQ(VerifySqliteCopy(dir.File("missing.db")).status().code(), absl::StatusCode::kNotFound);
}

// Schema version 3 adds certificates.email and fills upn and email of the
// rows already stored from their certificate DER (before it, upn was never
// filled). The certificate is made by the openssl CLI, not by keywarden.
TEST(SqliteStoreTest, MigrationToVersion4BackfillsUpnAndEmailFromTheStoredCertificates) {
  testing::TempDir dir;
  const std::string key = dir.File("k.pem"), pem = dir.File("c.pem"), der = dir.File("c.der");
  auto made = testing::RunCommand(
      StrCat("openssl req -x509 -newkey rsa:2048 -nodes -keyout ", key, " -out ", pem,
             " -subj /CN=Frank -days 30 -addext "
             "'subjectAltName=otherName:1.3.6.1.4.1.311.20.2.3;UTF8:frank@corp.example,"
             "email:frank@example.com,email:second@example.com' 2>&1 && openssl x509 -in ",
             pem, " -outform DER -out ", der));
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string db = SqliteFile(dir.path());
  {
    auto store = OpenSqliteStore(db);
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_EQ((*store)->admin().SchemaVersion(), 5);
    CertificateRecord c = MakeCertificate("0a01", "CN=Frank");
    c.der = testing::ReadFile(der);
    c.upn = "";  // as every version before 4 stored it
    ASSERT_TRUE((*store)->InsertCertificate(c).ok());
    ASSERT_TRUE((*store)->InsertCertificate(MakeCertificate("0b02", "CN=NoSan")).ok());
  }
  // Back to what a version-3 database holds: no email column, upn empty
  // (never filled before version 4).
  ASSERT_TRUE(RawSqlite(db,
                        "DROP TABLE archive_history; DROP INDEX certificates_by_email; ALTER TABLE "
                        "certificates DROP COLUMN "
                        "email; UPDATE certificates SET upn = ''; PRAGMA user_version = 3;")
                  .ok());
  auto store = OpenSqliteStore(db);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->admin().SchemaVersion(), 5);
  auto frank = (*store)->GetCertificate("0a01");
  ASSERT_TRUE(frank.ok()) << frank.status();
  EXPECT_EQ(frank->upn, "frank@corp.example");
  EXPECT_EQ(frank->email, "frank@example.com");  // the first one
  // A DER that is no certificate keeps both empty; the migration still ran.
  auto other = (*store)->GetCertificate("0b02");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->upn, "");
  EXPECT_EQ(other->email, "");
  // Exact searches by UPN, e-mail and subject; no case folding, no part.
  auto find = [&](const std::function<void(CertificateQuery&)>& set) {
    CertificateQuery q;
    set(q);
    return Serials((*store)->FindCertificates(q));
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(find([](CertificateQuery& q) { q.upn = "frank@corp.example"; }), V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.upn = "Frank@corp.example"; }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.email = "frank@example.com"; }), V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.email = "second@example.com"; }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.email = "frank@example"; }), V{});
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject = "CN=Frank"; }), V{"0a01"});
  EXPECT_EQ(find([](CertificateQuery& q) { q.subject = "CN=Fran"; }), V{});
}

TEST(SqliteStoreTest, BadInputIsRefusedWithTheInputNamed) {
  testing::TempDir dir;
  absl::StatusOr<std::unique_ptr<Store>> store = OpenSqliteStore(dir.File("ca.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  CertificateRecord c = MakeCertificate("0a01", "CN=x");
  c.serial = "not-hex";
  absl::Status s = (*store)->InsertCertificate(c);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(MessageHas(s, "not-hex"));

  c = MakeCertificate("0a01", "CN=x");
  c.request_id = 999;  // no such request
  s = (*store)->InsertCertificate(c);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(MessageHas(s, "0a01"));

  s = (*store)->Revoke("0a01", 7, 1);  // 7 is unassigned in RFC 5280
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;

  RequestRecord r = MakeRequest("alice");
  ArchivedKey key = MakeArchivedKey();
  key.kra_sha1 = {"aa,bb"};
  r.archived_key = key;
  absl::StatusOr<int64_t> id = (*store)->InsertRequest(r);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument) << id.status();
  EXPECT_TRUE(MessageHas(id.status(), "aa,bb"));
}

// -- the audit chain itself

AuditRecord Record(int64_t seq, UnixTime time, const std::string& principal,
                   const std::string& event, const std::string& details,
                   std::vector<uint8_t> prev_hash) {
  AuditRecord r;
  r.seq = seq;
  r.time = time;
  r.principal = principal;
  r.event = event;
  r.details = details;
  r.prev_hash = std::move(prev_hash);
  r.hash = AuditHash(r);
  return r;
}

std::vector<AuditRecord> Chain(int n) {
  std::vector<AuditRecord> chain;
  std::vector<uint8_t> prev(32, 0);
  for (int i = 1; i <= n; ++i) {
    chain.push_back(Record(i, 1000 + i, "officer", "e", StrCat("{\"n\":", i, "}"), prev));
    prev = chain.back().hash;
  }
  return chain;
}

TEST(AuditChainTest, HashIsSha256OfTheLengthPrefixedFields) {
  // Expected values computed independently (Python hashlib over the
  // encoding: each field as 8-byte big-endian length then bytes; seq and
  // time as 8-byte big-endian integers).
  AuditRecord first =
      Record(1, 1700000000, "system", "ca.started", "{\"v\":1}", std::vector<uint8_t>(32, 0));
  EXPECT_EQ(HexString(first.hash),
            "e3ea1e37f59882490550f488625fbc3ecc0655cac575a828ff4432e2854a4825");
  std::vector<uint8_t> prev(32);
  for (size_t i = 0; i < prev.size(); ++i) prev[i] = static_cast<uint8_t>(i);
  AuditRecord second = Record(2, -1, "", "e", "", prev);
  EXPECT_EQ(HexString(second.hash),
            "d7390819de6541f96c43830166d0c72e5903126e503caf788e52dde348929ff2");

  // Moving bytes between fields changes the hash.
  AuditRecord a = Record(1, 0, "ab", "c", "", {});
  AuditRecord b = Record(1, 0, "a", "bc", "", {});
  EXPECT_NE(a.hash, b.hash);
}

TEST(AuditChainTest, VerifyAcceptsIntactChains) {
  EXPECT_TRUE(VerifyAuditChain({}).ok());
  EXPECT_TRUE(VerifyAuditChain(Chain(1)).ok());
  EXPECT_TRUE(VerifyAuditChain(Chain(20)).ok());
}

TEST(AuditChainTest, VerifyNamesTheFirstBadRecord) {
  {
    std::vector<AuditRecord> chain = Chain(10);
    chain[6].details = "{}";   // seq 7
    chain[8].principal = "x";  // seq 9: only the first is reported
    absl::Status s = VerifyAuditChain(chain);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
    EXPECT_TRUE(MessageHas(s, "seq 7"));
    EXPECT_TRUE(MessageHas(s, "edited"));
  }
  {
    // Edited with the hash recomputed: the next record's link breaks.
    std::vector<AuditRecord> chain = Chain(10);
    chain[6].details = "{}";
    chain[6].hash = AuditHash(chain[6]);
    absl::Status s = VerifyAuditChain(chain);
    EXPECT_TRUE(MessageHas(s, "seq 8"));
    EXPECT_TRUE(MessageHas(s, "prev_hash"));
  }
  {
    std::vector<AuditRecord> chain = Chain(10);
    chain.erase(chain.begin() + 3, chain.begin() + 5);  // seqs 4 and 5
    absl::Status s = VerifyAuditChain(chain);
    EXPECT_TRUE(MessageHas(s, "seq 4"));
    EXPECT_TRUE(MessageHas(s, "missing"));
  }
  {
    std::vector<AuditRecord> chain = Chain(10);
    chain.erase(chain.begin());  // the first record
    absl::Status s = VerifyAuditChain(chain);
    EXPECT_TRUE(MessageHas(s, "seq 1"));
    EXPECT_TRUE(MessageHas(s, "missing"));
  }
  {
    // Adjacent records swapped with their seqs kept in place.
    std::vector<AuditRecord> chain = Chain(10);
    std::swap(chain[3], chain[4]);
    std::swap(chain[3].seq, chain[4].seq);
    absl::Status s = VerifyAuditChain(chain);
    EXPECT_TRUE(MessageHas(s, "seq 4"));
    EXPECT_TRUE(MessageHas(s, "reordered"));
  }
  {
    // Records swapped along with their seqs, as read in storage order.
    std::vector<AuditRecord> chain = Chain(10);
    std::swap(chain[3], chain[4]);
    absl::Status s = VerifyAuditChain(chain);
    EXPECT_TRUE(MessageHas(s, "seq 4"));
    EXPECT_TRUE(MessageHas(s, "reordered"));
  }
}

TEST(DispositionTest, Names) {
  EXPECT_STREQ(DispositionName(Disposition::kPending), "pending");
  EXPECT_STREQ(DispositionName(Disposition::kIssued), "issued");
  EXPECT_STREQ(DispositionName(Disposition::kDenied), "denied");
  EXPECT_STREQ(DispositionName(Disposition::kFailed), "failed");
}

}  // namespace
}  // namespace keywarden::service

namespace keywarden::service {
namespace {

// The SPKI hash the certificate index keeps is read by walking the DER;
// OpenSSL's decode and re-encode of the SubjectPublicKeyInfo must give the
// same hash, for v3 and v1 certificates, RSA and EC keys.
std::string OpenSslSpkiSha256(const std::vector<uint8_t>& der) {
  const unsigned char* p = der.data();
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
  if (!cert) return {};
  unsigned char* spki = nullptr;
  const int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert.get()), &spki);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(spki, static_cast<size_t>(len), md, &n, EVP_sha256(), nullptr);
  OPENSSL_free(spki);
  return HexString({md, n});
}

// A self-signed certificate of `key` (empty on failure).
std::vector<uint8_t> SelfSignedDer(EVP_PKEY* key, long version, long serial) {
  ossl::UniquePtr<X509> cert(X509_new());
  if (!cert) return {};
  X509_set_version(cert.get(), version);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(cert.get()), "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("spki"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 3600);
  X509_set_pubkey(cert.get(), key);
  if (X509_sign(cert.get(), key, EVP_sha256()) <= 0) return {};
  return pki::CertificateDer(cert.get());
}

TEST(SpkiSha256OfCertificateTest, SameAsOpenSslDecodeForV1AndV3Certificates) {
  std::vector<ossl::UniquePtr<EVP_PKEY>> keys;
  keys.push_back(testing::SoftwareRsaKey(2048));
  keys.emplace_back(EVP_EC_gen("P-256"));
  for (const auto& key : keys) {
    for (long version : {X509_VERSION_1, X509_VERSION_3}) {
      ASSERT_TRUE(key);
      const std::vector<uint8_t> der = SelfSignedDer(key.get(), version, 0x1234);
      ASSERT_FALSE(der.empty());
      const std::string expected = OpenSslSpkiSha256(der);
      ASSERT_EQ(expected.size(), 64u);
      EXPECT_EQ(SpkiSha256OfCertificate(der), expected) << "version " << version;
      // Not a certificate: no hash.
      std::vector<uint8_t> cut(der.begin(), der.end() - 1);
      EXPECT_EQ(SpkiSha256OfCertificate(cut), "");
      std::vector<uint8_t> longer = der;
      longer.push_back(0);
      EXPECT_EQ(SpkiSha256OfCertificate(longer), "");
    }
  }
  EXPECT_EQ(SpkiSha256OfCertificate({}), "");
}

// The owner check's view of a key: nothing for a key never certified (or
// certified only under the excluded serial), else one row per kind of holder
// named by its earliest certificate.
TEST_P(StoreTest, KeyHoldersAreFoundByTheKeyAndExcludedBySerial) {
  ossl::UniquePtr<EVP_PKEY> pair(EVP_EC_gen("P-256")), other_pair(EVP_EC_gen("P-256"));
  ASSERT_TRUE(pair && other_pair);
  // A record of a real certificate of `k`: the store indexes its key.
  auto certificate = [](EVP_PKEY* k, const std::string& serial, long n) {
    CertificateRecord c = MakeCertificate(serial, "CN=alice,DC=corp,DC=example");
    c.der = SelfSignedDer(k, X509_VERSION_3, n);
    return c;
  };
  const std::string key = OpenSslSpkiSha256(SelfSignedDer(pair.get(), X509_VERSION_3, 1));
  const std::string other_key =
      OpenSslSpkiSha256(SelfSignedDer(other_pair.get(), X509_VERSION_3, 1));
  ASSERT_EQ(key.size(), 64u);
  auto holders = [&](const std::string& spki, int64_t exclude_request,
                     const std::string& exclude_serial) {
    std::vector<Transaction::KeyHolder> out;
    absl::Status st = store().Read("holders", [&](Transaction& t) -> absl::Status {
      auto found = t.FindKeyHolders(spki, exclude_request, exclude_serial, 100);
      if (!found.ok()) return found.status();
      out = *found;
      return absl::OkStatus();
    });
    EXPECT_TRUE(st.ok()) << st;
    return out;
  };
  EXPECT_TRUE(holders(key, 0, "").empty());

  const int64_t alice = Submit("alice");
  CertificateRecord first = certificate(pair.get(), "0b01", 0xb01);
  ASSERT_TRUE(store().RecordIssued(alice, first, std::nullopt, "policy", 3000).ok());
  EXPECT_TRUE(holders(other_key, 0, "").empty());
  EXPECT_TRUE(holders(key, 0, "0b01").empty());  // its only certificate, excluded
  auto found = holders(key, 0, "");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].serial, "0b01");
  EXPECT_EQ(found[0].request_id, alice);
  EXPECT_EQ(found[0].subject, "CN=alice,DC=corp,DC=example");
  EXPECT_EQ(found[0].requester, "alice");
  EXPECT_FALSE(found[0].archived);

  // Renewed with the same key: still one holder, named by the first.
  const int64_t renewal = Submit("alice");
  CertificateRecord second = certificate(pair.get(), "0b02", 0xb02);
  ASSERT_TRUE(store().RecordIssued(renewal, second, std::nullopt, "policy", 3001).ok());
  found = holders(key, 0, "");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].serial, "0b01");
  found = holders(key, 0, "0b01");
  ASSERT_EQ(found.size(), 1u);
  EXPECT_EQ(found[0].serial, "0b02");
  // The request under processing is a kind of its own.
  found = holders(key, renewal, "");
  ASSERT_EQ(found.size(), 2u);
  EXPECT_EQ(found[0].serial, "0b01");
  EXPECT_EQ(found[1].serial, "0b02");
  EXPECT_EQ(found[1].request_id, renewal);
}

}  // namespace
}  // namespace keywarden::service
