// The keywarden binary against a real keywardend on loopback (DaemonHarness),
// one client certificate per role, exactly as an operator runs it. What it
// writes is checked with the openssl command line; --json output with python3.
#include <sys/stat.h>

#include <cstdio>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "tests/service/daemon_harness.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

class CliClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonHarness::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::string Connection(const std::string& who) const { return daemon_->CliConnection(who); }

  // keywarden as `who`; stdout and stderr together.
  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, Connection(who), args));
  }

  // keywarden --json as `who`; stdout alone goes to `name`.json (checked
  // to be one JSON document by python3), stderr is returned in `output`.
  CommandResult KwJson(const std::string& who, const std::string& args, const std::string& name) {
    const std::string file = tmp_.File(name + ".json");
    // In a subshell: RunCommand appends its own 2>&1.
    CommandResult r = RunCommand(StrCat("(", KEYWARDEN_CLI, " --json", Connection(who), args, " > ",
                                        file, " 2> ", file, ".err)"));
    auto parse = RunCommand(StrCat("python3 -c 'import json,sys; json.load(sys.stdin)' < ", file));
    EXPECT_EQ(parse.exit_code, 0) << "not JSON: " << args << "\n" << Slurp(file) << parse.output;
    r.output = Slurp(file) + Slurp(file + ".err");
    return r;
  }

  // A value from a JSON file, e.g. Field("submit", "d['request_id']").
  std::string Field(const std::string& name, const std::string& expr) {
    std::string quoted;  // inside the shell's single quotes
    for (char c : expr) quoted += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    auto r =
        RunCommand(StrCat("python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(",
                          quoted, ")' ", tmp_.File(name + ".json")));
    EXPECT_EQ(r.exit_code, 0) << expr << "\n" << r.output;
    return Trim(r.output);
  }

  std::string Slurp(const std::string& path) const {
    auto bytes = ReadFile(path);
    return std::string(bytes.begin(), bytes.end());
  }

  // A PKCS#10 request from `openssl req` (PEM unless der).
  std::string MakeCsr(const std::string& name, const std::string& subject, bool der = false) {
    const std::string key = tmp_.File(name + ".key");
    const std::string csr = tmp_.File(name + (der ? ".der" : ".csr"));
    auto r = RunCommand(StrCat("openssl req -new -newkey rsa:2048 -nodes -subj '", subject,
                               "' -keyout ", key, der ? " -outform DER" : "", " -out ", csr));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return csr;
  }

  CommandResult VerifyCert(const std::string& pem) const {
    return RunCommand(StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ", pem));
  }

  // "ab12..." from openssl's "SHA1 Fingerprint=AB:12:...".
  std::string OpensslSha1(const std::string& pem) {
    auto r = RunCommand(StrCat("openssl x509 -noout -fingerprint -sha1 -in ", pem));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string out;
    const size_t eq = r.output.find('=');
    if (eq == std::string::npos) return out;
    for (char c : r.output.substr(eq + 1)) {
      if (c == ':' || c == '\n') continue;
      out += static_cast<char>(c >= 'A' && c <= 'F' ? c - 'A' + 'a' : c);
    }
    return out;
  }

  // Submits a request for the pending template; returns its id.
  std::string SubmitPending(const std::string& name) {
    const std::string csr = MakeCsr(name, "/CN=" + name + "/O=keywarden test");
    auto r = KwJson("enrollee", StrCat("submit ", csr, " --template PendingUser"), name);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(Field(name, "d['disposition']"), "pending") << r.output;
    return Field(name, "d['request_id']");
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(CliClientTest, SubmitUserIsIssuedWrittenAndVerifies) {
  const std::string csr = MakeCsr("alice", "/CN=alice/O=keywarden test");
  const std::string cert = tmp_.File("alice.pem");
  auto r = Kw("enrollee", StrCat("submit ", csr, " --template User --out ", cert));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "issued")) << r.output;
  EXPECT_TRUE(Contains(r.output, "Serial")) << r.output;
  EXPECT_TRUE(Contains(r.output, OpensslSha1(cert))) << r.output;
  EXPECT_FALSE(Contains(r.output, "PRIVATE KEY")) << r.output;
  auto v = VerifyCert(cert);
  EXPECT_EQ(v.exit_code, 0) << v.output;

  // The same --out again: refused before anything reaches the CA; the file stays.
  const std::string before = Slurp(cert);
  auto again = Kw("enrollee", StrCat("submit ", csr, " --template User --out ", cert));
  EXPECT_EQ(again.exit_code, 3) << again.output;
  EXPECT_TRUE(Contains(again.output, "already exists")) << again.output;
  EXPECT_EQ(Slurp(cert), before);
}

TEST_F(CliClientTest, SubmitAcceptsDerAndPrintsJson) {
  const std::string csr = MakeCsr("der", "/CN=der user/O=keywarden test", /*der=*/true);
  auto r = KwJson("enrollee", StrCat("submit ", csr, " --template User"), "submit");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Field("submit", "d['disposition']"), "issued");
  EXPECT_TRUE(Contains(Field("submit", "d['certificate']['subject']"), "CN=der user"));
  // The PEM in the JSON is the certificate, and it verifies.
  const std::string pem = tmp_.File("from-json.pem");
  WriteFile(pem, Field("submit", "d['certificate']['pem']"));
  auto v = VerifyCert(pem);
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_EQ(Field("submit", "d['certificate']['sha1']"), OpensslSha1(pem));
}

TEST_F(CliClientTest, PendingRequestIsApprovedByAnOfficer) {
  const std::string id = SubmitPending("pend");
  ASSERT_FALSE(id.empty());

  auto list = Kw("officer", "officer list --pending");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_TRUE(Contains(list.output, "DISPOSITION")) << list.output;
  EXPECT_TRUE(Contains(list.output, "pending")) << list.output;
  EXPECT_TRUE(Contains(list.output, "CN=pend")) << list.output;

  auto still = Kw("enrollee", StrCat("retrieve ", id));
  EXPECT_EQ(still.exit_code, 0) << still.output;
  EXPECT_TRUE(Contains(still.output, "pending")) << still.output;

  const std::string cert = tmp_.File("approved.pem");
  auto approve = Kw("officer", StrCat("officer approve ", id, " --out ", cert));
  ASSERT_EQ(approve.exit_code, 0) << approve.output;
  EXPECT_TRUE(Contains(approve.output, "issued")) << approve.output;
  auto v = VerifyCert(cert);
  EXPECT_EQ(v.exit_code, 0) << v.output;

  // The enrollee now retrieves the same certificate.
  const std::string mine = tmp_.File("retrieved.pem");
  auto got = Kw("enrollee", StrCat("retrieve ", id, " --out ", mine));
  ASSERT_EQ(got.exit_code, 0) << got.output;
  EXPECT_EQ(Slurp(mine), Slurp(cert));

  // Approving twice: the request is no longer pending.
  auto twice = Kw("officer", StrCat("officer approve ", id));
  EXPECT_EQ(twice.exit_code, 3) << twice.output;
  EXPECT_TRUE(Contains(twice.output, "0x80094003")) << twice.output;
}

TEST_F(CliClientTest, OfficerDeniesAPendingRequest) {
  const std::string id = SubmitPending("deny-me");
  ASSERT_FALSE(id.empty());
  auto deny = Kw("officer", StrCat("officer deny ", id, " --reason 'no badge shown'"));
  ASSERT_EQ(deny.exit_code, 0) << deny.output;
  EXPECT_TRUE(Contains(deny.output, "denied")) << deny.output;

  auto show = KwJson("officer", StrCat("officer show ", id), "show");
  ASSERT_EQ(show.exit_code, 0) << show.output;
  EXPECT_EQ(Field("show", "d['disposition']"), "denied");
  EXPECT_TRUE(Contains(Field("show", "d['message']"), "no badge shown"));
  EXPECT_EQ(Field("show", "d['requester']"), "CN=alice,O=keywarden test");

  // The requester sees the denial: exit 1, with the reason.
  auto r = Kw("enrollee", StrCat("retrieve ", id));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "no badge shown")) << r.output;

  auto list = KwJson("officer", "officer list --denied --limit 5", "denied");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_EQ(Field("denied", "len(d['requests'])"), "1");
}

TEST_F(CliClientTest, RevokedCertificateIsOnTheCrl) {
  const std::string csr = MakeCsr("leaf", "/CN=leaf/O=keywarden test");
  const std::string leaf = tmp_.File("leaf.pem");
  auto s = KwJson("enrollee", StrCat("submit ", csr, " --template User --out ", leaf), "leaf");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  const std::string serial = Field("leaf", "d['certificate']['serial']");

  auto bad = Kw("officer", StrCat("officer revoke ", serial, " --reason 7"));
  EXPECT_EQ(bad.exit_code, 2) << bad.output;
  auto bad_name = Kw("officer", StrCat("officer revoke ", serial, " --reason stolen"));
  EXPECT_EQ(bad_name.exit_code, 2) << bad_name.output;

  auto revoke = Kw("officer", StrCat("officer revoke ", serial, " --reason keyCompromise"));
  ASSERT_EQ(revoke.exit_code, 0) << revoke.output;
  EXPECT_TRUE(Contains(revoke.output, "keyCompromise")) << revoke.output;

  const std::string crl = tmp_.File("crl.pem");
  auto got = Kw("enrollee", StrCat("ca crl --out ", crl));
  ASSERT_EQ(got.exit_code, 0) << got.output;
  auto v = RunCommand(StrCat("openssl verify -crl_check -CAfile ", daemon_->ca_cert_path(),
                             " -CRLfile ", crl, " ", leaf));
  EXPECT_NE(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "certificate revoked")) << v.output;
  auto text = RunCommand(StrCat("openssl crl -noout -text -in ", crl));
  EXPECT_TRUE(Contains(AsciiLower(text.output), "key compromise")) << text.output;

  auto find = KwJson("officer", StrCat("officer find --serial ", serial), "find");
  ASSERT_EQ(find.exit_code, 0) << find.output;
  EXPECT_EQ(Field("find", "d['certificates'][0]['revoked']"), "True");
  EXPECT_EQ(Field("find", "d['certificates'][0]['revocation_reason']"), "1");

  auto table = Kw("officer", "officer find --cn leaf");
  ASSERT_EQ(table.exit_code, 0) << table.output;
  EXPECT_TRUE(Contains(table.output, serial)) << table.output;
  EXPECT_TRUE(Contains(table.output, "keyCompromise")) << table.output;

  // Revoking again is refused.
  auto twice = Kw("officer", StrCat("officer revoke ", serial));
  EXPECT_EQ(twice.exit_code, 3) << twice.output;
}

TEST_F(CliClientTest, CaCertificateAndExchangeCertificateVerify) {
  const std::string ca = tmp_.File("ca.pem");
  auto r = Kw("nobody", StrCat("ca cert --out ", ca));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(OpensslSha1(ca), OpensslSha1(daemon_->ca_cert_path()));

  const std::string xchg = tmp_.File("xchg.pem");
  auto x = Kw("enrollee", StrCat("ca xchg --out ", xchg));
  ASSERT_EQ(x.exit_code, 0) << x.output;
  auto v = VerifyCert(xchg);
  EXPECT_EQ(v.exit_code, 0) << v.output;
  auto text = RunCommand(StrCat("openssl x509 -noout -subject -in ", xchg));
  EXPECT_TRUE(Contains(text.output, "Xchg")) << text.output;

  // Without --out the PEM goes to stdout, ready for a pipe.
  auto piped = RunCommand(StrCat(KEYWARDEN_CLI, Connection("enrollee"),
                                 "ca cert 2>/dev/null | openssl x509 -noout -subject"));
  EXPECT_EQ(piped.exit_code, 0) << piped.output;
  EXPECT_TRUE(Contains(piped.output, "keywarden Test CA")) << piped.output;
}

TEST_F(CliClientTest, UnknownTemplateIsInvalidArgumentWithTheHresult) {
  const std::string csr = MakeCsr("unknown", "/CN=unknown/O=keywarden test");
  auto r = Kw("enrollee", StrCat("submit ", csr, " --template NoSuchTemplate"));
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "0x80094800")) << r.output;
  EXPECT_TRUE(Contains(r.output, "CERTSRV_E_UNSUPPORTED_CERT_TYPE")) << r.output;
  EXPECT_TRUE(Contains(r.output, "NoSuchTemplate")) << r.output;

  auto j = KwJson("enrollee", StrCat("submit ", csr, " --template NoSuchTemplate"), "err");
  EXPECT_EQ(j.exit_code, 2) << j.output;
  EXPECT_EQ(Field("err", "d['hresult']"), "0x80094800");
  EXPECT_EQ(Field("err", "d['symbol']"), "CERTSRV_E_UNSUPPORTED_CERT_TYPE");
  EXPECT_EQ(Field("err", "d['code']"), "INVALID_ARGUMENT");
  EXPECT_EQ(Field("err", "d['exit_code']"), "2");
}

TEST_F(CliClientTest, EnrolleeMayNotActAsOfficer) {
  auto r = Kw("enrollee", "officer list");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, "E_ACCESSDENIED")) << r.output;
  EXPECT_TRUE(Contains(r.output, "0x80070005")) << r.output;
  auto j = KwJson("enrollee", "officer list", "denied");
  EXPECT_EQ(j.exit_code, 3) << j.output;
  EXPECT_EQ(Field("denied", "d['symbol']"), "E_ACCESSDENIED");
  EXPECT_EQ(Field("denied", "d['code']"), "PERMISSION_DENIED");
}

TEST_F(CliClientTest, AuditorReadsAndVerifiesTheAuditLog) {
  const std::string csr = MakeCsr("audited", "/CN=audited/O=keywarden test");
  ASSERT_EQ(Kw("enrollee", StrCat("submit ", csr, " --template User")).exit_code, 0);

  auto v = Kw("auditor", "audit verify");
  ASSERT_EQ(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "ok")) << v.output;
  auto vj = KwJson("auditor", "audit verify", "verify");
  ASSERT_EQ(vj.exit_code, 0) << vj.output;
  EXPECT_EQ(Field("verify", "d['ok']"), "True");

  auto read = Kw("auditor", "audit read");
  ASSERT_EQ(read.exit_code, 0) << read.output;
  EXPECT_TRUE(Contains(read.output, "request.issued")) << read.output;
  auto rj = KwJson("auditor", "audit read --from 1 --limit 2", "read");
  ASSERT_EQ(rj.exit_code, 0) << rj.output;
  EXPECT_EQ(Field("read", "len(d['records'])"), "2");
  EXPECT_EQ(Field("read", "d['records'][0]['seq']"), "1");
  EXPECT_EQ(Field("read", "len(d['records'][0]['hash'])"), "64");

  // Only Auditors.
  auto officer = Kw("officer", "audit verify");
  EXPECT_EQ(officer.exit_code, 3) << officer.output;
}

// A backup the daemon cannot make is an error, and a copy that does not
// open as a keywarden database with a verifying audit chain is not kept:
// the CLI exits non-zero and leaves no file.
TEST_F(CliClientTest, BackupOfAnUnreadableOrTamperedDatabaseFailsAndLeavesNothing) {
  const std::string csr = MakeCsr("backed-up", "/CN=backed up/O=keywarden test");
  ASSERT_EQ(Kw("enrollee", StrCat("submit ", csr, " --template User")).exit_code, 0);
  struct stat st;

  // 1. The database file cannot be read at its path any more (a directory
  // stands where it was; the daemon's open connection keeps working).
  const std::string db = daemon_->db_path();
  ASSERT_EQ(std::rename(db.c_str(), (db + ".moved").c_str()), 0);
  ASSERT_EQ(mkdir(db.c_str(), 0700), 0);
  const std::string out1 = tmp_.File("unreadable.db");
  auto unreadable = Kw("backup", StrCat("backup ", out1));
  EXPECT_NE(unreadable.exit_code, 0) << unreadable.output;
  EXPECT_TRUE(Contains(unreadable.output, "backing up the CA database")) << unreadable.output;
  EXPECT_NE(stat(out1.c_str(), &st), 0) << "a failed backup left " << out1;
  ASSERT_EQ(rmdir(db.c_str()), 0);
  ASSERT_EQ(std::rename((db + ".moved").c_str(), db.c_str()), 0);

  // 2. The audit log was edited behind the daemon's back: the daemon's copy
  // is faithful (its checksum matches) but its audit chain does not verify.
  auto edit = RunCommand(
      StrCat("python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1], timeout=10); "
             "c.execute(\"DROP TRIGGER IF EXISTS audit_no_update\"); "
             "c.execute(\"UPDATE audit SET principal=? WHERE seq=2\", (\"mallory\",)); "
             "c.commit()' ",
             db));
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  const std::string out2 = tmp_.File("tampered.db");
  auto tampered = Kw("backup", StrCat("backup ", out2));
  EXPECT_EQ(tampered.exit_code, 1) << tampered.output;
  EXPECT_TRUE(Contains(tampered.output, "audit chain does not verify")) << tampered.output;
  EXPECT_TRUE(Contains(tampered.output, "was not kept")) << tampered.output;
  for (const char* suffix : {"", "-wal", "-shm"}) {
    EXPECT_NE(stat((out2 + suffix).c_str(), &st), 0) << "left " << out2 << suffix;
  }

  // 3. The daemon cannot write the backup's audit record (a database fault
  // on that insert): no checksum is sent, the backup is an error.
  auto fault = RunCommand(StrCat(
      "sqlite3 -cmd '.timeout 10000' ", db,
      " \"CREATE TRIGGER test_audit_fault BEFORE INSERT ON audit WHEN NEW.event = "
      "'backup.database' BEGIN SELECT RAISE(ABORT, 'audit write fault injected by the test'); "
      "END;\""));
  ASSERT_EQ(fault.exit_code, 0) << fault.output;
  const std::string out3 = tmp_.File("unaudited.db");
  auto unaudited = Kw("backup", StrCat("backup ", out3));
  EXPECT_EQ(unaudited.exit_code, 1) << unaudited.output;
  EXPECT_TRUE(Contains(unaudited.output, "audit record")) << unaudited.output;
  EXPECT_NE(stat(out3.c_str(), &st), 0) << "an unaudited backup was written";
}

TEST_F(CliClientTest, BackupIsWrittenAndVerifiesOffline) {
  const std::string csr = MakeCsr("backed-up", "/CN=backed up/O=keywarden test");
  ASSERT_EQ(Kw("enrollee", StrCat("submit ", csr, " --template User")).exit_code, 0);

  const std::string db = tmp_.File("backup.db");
  auto b = KwJson("backup", StrCat("backup ", db), "backup");
  ASSERT_EQ(b.exit_code, 0) << b.output;
  struct stat st;
  ASSERT_EQ(stat(db.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(Field("backup", "d['bytes']"), std::to_string(st.st_size));
  auto sum = RunCommand(StrCat("sha256sum ", db));
  EXPECT_TRUE(Contains(sum.output, Field("backup", "d['sha256']"))) << sum.output;

  // Refuses to overwrite.
  auto again = Kw("backup", StrCat("backup ", db));
  EXPECT_EQ(again.exit_code, 3) << again.output;

  // Offline: no daemon, no connection options.
  ASSERT_TRUE(daemon_->Stop().ok());
  auto v = RunCommand(StrCat(KEYWARDEN_CLI, " audit verify --database ", db));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "ok")) << v.output;

  auto schema = RunCommand(StrCat(KEYWARDEN_CLI, " schema --database ", db));
  EXPECT_EQ(schema.exit_code, 0) << schema.output;
  EXPECT_TRUE(Contains(schema.output, "CREATE TABLE audit")) << schema.output;

  // An edited record is found, and the check fails with exit 1.
  auto edit =
      RunCommand(StrCat("python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                        "c.execute(\"DROP TRIGGER IF EXISTS audit_no_update\"); "
                        "c.execute(\"UPDATE audit SET principal=? WHERE seq=2\", (\"mallory\",)); "
                        "c.commit()' ",
                        db));
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  auto broken = RunCommand(StrCat(KEYWARDEN_CLI, " audit verify --database ", db));
  EXPECT_EQ(broken.exit_code, 1) << broken.output;
  EXPECT_TRUE(Contains(broken.output, "broken at seq 2")) << broken.output;

  auto missing = RunCommand(StrCat(KEYWARDEN_CLI, " audit verify --database ", tmp_.File("no.db")));
  EXPECT_EQ(missing.exit_code, 4) << missing.output;
  struct stat none;
  EXPECT_NE(stat(tmp_.File("no.db").c_str(), &none), 0) << "a missing database was created";
}

TEST_F(CliClientTest, SchemaPrintsCreateTableStatements) {
  auto r = RunCommand(StrCat(KEYWARDEN_CLI, " schema"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "CREATE TABLE requests")) << r.output;
  EXPECT_TRUE(Contains(r.output, "CREATE TABLE audit")) << r.output;
  auto j =
      RunCommand(StrCat("(", KEYWARDEN_CLI, " --json schema > ", tmp_.File("schema.json"), ")"));
  ASSERT_EQ(j.exit_code, 0) << j.output;
  EXPECT_TRUE(Contains(Field("schema", "d['sql']"), "CREATE TABLE"));
}

TEST_F(CliClientTest, AdministratorSeesStatusRenewsExchangeAndPublishesCrl) {
  auto s = Kw("admin", "ca status");
  ASSERT_EQ(s.exit_code, 0) << s.output;
  EXPECT_TRUE(Contains(s.output, "keywarden Test CA")) << s.output;
  EXPECT_TRUE(Contains(s.output, "PendingUser")) << s.output;
  auto sj = KwJson("admin", "ca status", "status");
  ASSERT_EQ(sj.exit_code, 0) << sj.output;
  const std::string before =
      Field("status", "[x['serial'] for x in d['exchange'] if x['current']][0]");

  const std::string xchg = tmp_.File("renewed.pem");
  auto renew = Kw("admin", StrCat("ca renew-xchg --out ", xchg));
  ASSERT_EQ(renew.exit_code, 0) << renew.output;
  auto v = VerifyCert(xchg);
  EXPECT_EQ(v.exit_code, 0) << v.output;
  ASSERT_EQ(KwJson("admin", "ca status", "status2").exit_code, 0);
  EXPECT_NE(Field("status2", "[x['serial'] for x in d['exchange'] if x['current']][0]"), before);

  auto crl = KwJson("admin", "ca publish-crl", "crl");
  ASSERT_EQ(crl.exit_code, 0) << crl.output;
  EXPECT_EQ(Field("crl", "d['revoked_entries']"), "0");

  // Not for enrollees.
  auto denied = Kw("enrollee", "ca publish-crl");
  EXPECT_EQ(denied.exit_code, 3) << denied.output;
}

TEST_F(CliClientTest, JsonOutputParsesForEveryListingVerb) {
  const std::string csr = MakeCsr("json", "/CN=json/O=keywarden test");
  ASSERT_EQ(KwJson("enrollee", StrCat("submit ", csr, " --template User"), "j-submit").exit_code,
            0);
  const std::vector<std::pair<std::string, std::string>> runs = {
      {"enrollee", "ca cert"},
      {"enrollee", "ca xchg"},
      {"enrollee", "ca crl"},
      {"officer", "officer list"},
      {"officer", "officer find --subject json"},
      {"officer", "officer show 1"},
      {"auditor", "audit read"},
      {"auditor", "audit verify"},
      {"enrollee", "retrieve 1"},
  };
  int i = 0;
  for (const auto& [who, args] : runs) {
    auto r = KwJson(who, args, StrCat("j", i++));
    EXPECT_EQ(r.exit_code, 0) << args << "\n" << r.output;
    EXPECT_FALSE(Contains(r.output, "PRIVATE KEY")) << args;
  }
  // Options may follow the verb too.
  auto after = RunCommand(StrCat("(", KEYWARDEN_CLI, " officer list --json", Connection("officer"),
                                 "> ", tmp_.File("after.json"), ")"));
  EXPECT_EQ(after.exit_code, 0) << after.output;
  EXPECT_EQ(Field("after", "type(d['requests']).__name__"), "list");
}

TEST_F(CliClientTest, ConnectionComesFromTheEnvironment) {
  const ClientIdentity& id = daemon_->client("enrollee");
  auto r = RunCommand(
      StrCat("KEYWARDEN_SERVER=", daemon_->target(), " KEYWARDEN_CLIENT_CERT=", id.cert_path,
             " KEYWARDEN_CLIENT_KEY=", id.key_path, " KEYWARDEN_SERVER_CA=", daemon_->tls_ca_path(),
             " KEYWARDEN_SERVER_NAME=localhost ", KEYWARDEN_CLI, " ca crl"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "BEGIN X509 CRL")) << r.output;

  auto none = RunCommand(StrCat("env -u KEYWARDEN_SERVER ", KEYWARDEN_CLI, " ca crl"));
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_TRUE(Contains(none.output, "--server")) << none.output;
}

TEST_F(CliClientTest, UnreachableOrUntrustedServerIsReportedClearly) {
  // A server certificate checked against the wrong anchor: the handshake fails.
  const ClientIdentity& id = daemon_->client("enrollee");
  auto wrong_ca =
      RunCommand(StrCat(KEYWARDEN_CLI, " --server ", daemon_->target(), " --client-cert ",
                        id.cert_path, " --client-key ", id.key_path, " --server-ca ",
                        daemon_->ca_cert_path(), " --server-name localhost --timeout 20 ca cert"));
  EXPECT_NE(wrong_ca.exit_code, 0) << wrong_ca.output;
  EXPECT_TRUE(Contains(wrong_ca.output, "cannot reach keywardend at " + daemon_->target()))
      << wrong_ca.output;
  // One clear line, not gRPC's own log lines as well.
  EXPECT_FALSE(Contains(wrong_ca.output, "ssl_transport_security")) << wrong_ca.output;

  // A certificate the daemon does not trust.
  auto untrusted = Kw("untrusted", "--timeout 20 ca cert");
  EXPECT_NE(untrusted.exit_code, 0) << untrusted.output;

  // Nobody listening.
  const std::string target = daemon_->target();
  ASSERT_TRUE(daemon_->Stop().ok());
  auto r = Kw("enrollee", "--timeout 20 ca cert");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "cannot reach keywardend at " + target)) << r.output;
  auto j = KwJson("enrollee", "--timeout 20 ca cert", "down");
  EXPECT_EQ(j.exit_code, 1) << j.output;
  EXPECT_EQ(Field("down", "d['code']"), "UNAVAILABLE");

  // A missing client key file: not found, before any connection.
  auto missing =
      RunCommand(StrCat(KEYWARDEN_CLI, " --server ", target, " --client-cert ", id.cert_path,
                        " --client-key ", tmp_.File("nope.key"), " ca cert"));
  EXPECT_EQ(missing.exit_code, 4) << missing.output;
}

TEST_F(CliClientTest, EveryVerbHasHelp) {
  const std::vector<std::string> verbs = {
      "",
      "submit",
      "retrieve",
      "ca",
      "ca cert",
      "ca xchg",
      "ca crl",
      "ca status",
      "ca renew-xchg",
      "ca publish-crl",
      "officer",
      "officer list",
      "officer show",
      "officer approve",
      "officer deny",
      "officer revoke",
      "officer find",
      "audit",
      "audit read",
      "audit verify",
      "backup",
      "restore",
      "schema",
      "token list",
      "ceremony root",
  };
  for (const auto& verb : verbs) {
    auto r = RunCommand(StrCat(KEYWARDEN_CLI, " ", verb, " --help"));
    EXPECT_EQ(r.exit_code, 0) << verb << "\n" << r.output;
    EXPECT_TRUE(Contains(r.output, "Usage:")) << verb << "\n" << r.output;
  }
  auto usage = RunCommand(StrCat(KEYWARDEN_CLI, " officer list --pending --issued"));
  EXPECT_EQ(usage.exit_code, 2) << usage.output;
}

}  // namespace
}  // namespace keywarden::testing
