// keywarden restore into a PostgreSQL CA database (KEYWARDEN_TEST_BACKEND=
// postgresql, a fresh database on the test cluster per test), as an
// operator runs it: refused while any keywardend replica is connected (every
// one holds the daemon advisory lock shared), refuses a damaged backup
// without changing anything (row counts and the audit head read with psql),
// and a restore to an older backup keeps the replaced contents in a
// verified SQLite copy, never turns time back (revocations made after the
// backup stay revoked on the CRL the daemon publishes, read with `openssl
// crl`; CRL numbers keep increasing, read with `openssl crl -crlnumber`) and
// never reuses a request id.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <set>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "service/storage/postgres_database.h"
#include "service/storage/store.h"
#include "tests/cli/restore_fixture.h"
#include "tests/pg_test_util.h"
#include "tests/service/daemon_harness.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif
#ifndef KEYWARDEN_DAEMON
#error "KEYWARDEN_DAEMON must be the path of the keywardend binary"
#endif

namespace keywarden::testing {
namespace {

// Names in a directory starting with `prefix`.
std::set<std::string> Listing(const std::string& dir, const std::string& prefix) {
  std::set<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (std::string(e->d_name).rfind(prefix, 0) == 0) out.insert(e->d_name);
    }
    closedir(d);
  }
  return out;
}

// What a refused restore must leave as it was, read with psql: the row
// counts of the tables the daemon does not write by itself, that nothing
// was restored, and the audit record `seq` (hash) still there. (A running
// daemon appends audit records and checkpoints of its own.)
std::string StateSql(int64_t seq) {
  return StrCat(
      "SELECT (SELECT count(*) FROM requests) || ',' || (SELECT count(*) FROM certificates) || "
      "',' || (SELECT count(*) FROM audit WHERE event = 'database.restored') || ',' || "
      "(SELECT count(*) FROM audit WHERE seq <= ",
      seq, ") || ',' || (SELECT encode(hash, 'hex') FROM audit WHERE seq = ", seq, ")");
}

class PgRestoreTest : public RestoreFixture {
 protected:
  void SetUp() override {
    // Like every PostgreSQL test: skipped without a test cluster, failed
    // when one is required (CI).
    if (keywarden::testing::TestPgConninfo().empty()) {
      if (keywarden::testing::TestPgRequired()) FAIL() << "KEYWARDEN_REQUIRE_PG=1 but no cluster";
      GTEST_SKIP() << "no PostgreSQL test cluster (KEYWARDEN_TEST_PG)";
    }
    RestoreFixture::SetUp();
    if (HasFatalFailure()) return;
    ASSERT_TRUE(daemon_->postgres()) << "run with KEYWARDEN_TEST_BACKEND=postgresql";
  }

  // One value from psql on the daemon's database.
  std::string Psql(const std::string& sql) const {
    auto r = RunCommand(daemon_->SqlCommand(sql));
    EXPECT_EQ(r.exit_code, 0) << sql << "\n" << r.output;
    return Trim(r.output);
  }
};

TEST_F(PgRestoreTest, RefusedWhileKeywardendRunsAndNothingChanges) {
  Issue("before-backup");
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  // Something after the backup, so a restore would change the state.
  Issue("after-backup");
  const int64_t seq = std::stoll(Psql("SELECT max(seq) FROM audit"));
  const std::string before = Psql(StateSql(seq));
  ASSERT_TRUE(Contains(before, StrCat(",0,", seq, ","))) << before;

  auto r = Restore(backup);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, "keywardend is running (1 session: pid ")) << r.output;
  EXPECT_TRUE(Contains(r.output, "stop every keywardend replica first")) << r.output;
  EXPECT_TRUE(Contains(r.output, "keywardend@")) << r.output;
  EXPECT_EQ(Psql(StateSql(seq)), before);
  EXPECT_TRUE(Listing(tmp_.path(), "postgresql-").empty());

  // Two replicas: both counted.
  auto replica = daemon_->StartReplica();
  ASSERT_TRUE(replica.ok()) << replica.status();
  auto two = Restore(backup);
  EXPECT_EQ(two.exit_code, 3) << two.output;
  EXPECT_TRUE(Contains(two.output, "keywardend is running (2 sessions: pid ")) << two.output;
  // One stopped, the other still holds it.
  ASSERT_TRUE(daemon_->Stop().ok());
  auto one = Restore(backup);
  EXPECT_EQ(one.exit_code, 3) << one.output;
  EXPECT_TRUE(Contains(one.output, "keywardend is running (1 session: pid ")) << one.output;
  EXPECT_EQ(Psql(StateSql(seq)), before);
  EXPECT_TRUE(Listing(tmp_.path(), "postgresql-").empty());
  ASSERT_TRUE(daemon_->StopReplica(*replica).ok());

  // The other way round: while a restore holds the lock, keywardend does
  // not start.
  {
    service::PostgresOptions pg;
    pg.connection = daemon_->pg_conninfo();
    auto lock = service::LockPostgresDatabase(pg, service::PostgresLockMode::kExclusive,
                                              "keywarden restore");
    ASSERT_TRUE(lock.ok()) << lock.status();
    auto started = RunCommand(
        StrCat(KEYWARDEN_DAEMON, " --config ", daemon_->config_path(), " --port-file /dev/null"));
    EXPECT_EQ(started.exit_code, 1) << started.output;
    EXPECT_TRUE(Contains(started.output, "keywarden restore is replacing the database"))
        << started.output;
    // Whose session holds it, from pg_stat_activity.
    EXPECT_TRUE(Contains(started.output, "keywarden restore@")) << started.output;
    // Nor does a second restore run.
    auto second = Restore(backup);
    EXPECT_EQ(second.exit_code, 3) << second.output;
    EXPECT_TRUE(Contains(second.output, "keywardend is running (1 session")) << second.output;
  }
  EXPECT_EQ(Psql(StateSql(seq)), before);
  // Released: the daemon starts and serves.
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Kw("admin", "ca status").exit_code, 0);
}

TEST_F(PgRestoreTest, DamagedBackupIsRefusedAndNothingChanges) {
  Issue("before-backup");
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  Issue("after-backup");
  ASSERT_TRUE(daemon_->Stop().ok());
  const int64_t seq = std::stoll(Psql("SELECT max(seq) FROM audit"));
  const std::string before = Psql(StateSql(seq));

  // An audit record edited: the chain no longer verifies.
  const std::string tampered = tmp_.File("tampered.db");
  ASSERT_EQ(RunCommand(StrCat("cp ", backup, " ", tampered)).exit_code, 0);
  auto edit =
      RunCommand(StrCat("python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); "
                        "c.execute(\"DROP TRIGGER IF EXISTS audit_no_update\"); "
                        "c.execute(\"UPDATE audit SET principal=? WHERE seq=2\", (\"mallory\",)); "
                        "c.commit()' ",
                        tampered));
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  auto e = Restore(tampered);
  EXPECT_NE(e.exit_code, 0) << e.output;
  EXPECT_TRUE(Contains(e.output, "audit chain does not verify")) << e.output;
  EXPECT_TRUE(Contains(e.output, "nothing was changed")) << e.output;

  // Truncated to half its size.
  const std::string truncated = tmp_.File("truncated.db");
  ASSERT_EQ(
      RunCommand(StrCat("head -c $(( $(stat -c %s ", backup, ") / 2 )) ", backup, " > ", truncated))
          .exit_code,
      0);
  auto t = Restore(truncated);
  EXPECT_NE(t.exit_code, 0) << t.output;
  EXPECT_TRUE(Contains(t.output, "is not usable")) << t.output;

  // Not a database at all.
  const std::string junk = tmp_.File("junk.db");
  WriteFile(junk, std::string(8192, 'x'));
  auto j = Restore(junk);
  EXPECT_EQ(j.exit_code, 3) << j.output;
  EXPECT_TRUE(Contains(j.output, "not an SQLite database")) << j.output;

  // Nothing changed: same rows, same audit head, no copy made, no
  // temporary file left.
  EXPECT_EQ(Psql(StateSql(seq)), before);
  EXPECT_EQ(Psql(StrCat("SELECT max(seq) FROM audit")), std::to_string(seq));
  EXPECT_TRUE(Listing(tmp_.path(), "postgresql-").empty());
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Kw("admin", "ca status").exit_code, 0);
  auto verify = Kw("auditor", "audit verify");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
}

// The whole story on PostgreSQL: CRLs published, a backup, more issuance,
// revocations and CRLs, then a restore to the backup with the last CRL.
TEST_F(PgRestoreTest, RestoreToOlderBackupNeverTurnsTimeBack) {
  const std::string kept = Issue("kept");
  const std::string later_revoked = Issue("revoked");
  std::vector<uint64_t> numbers;
  numbers.push_back(PublishAndFetchCrl("crl-1"));

  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);

  const std::string after = Issue("after");
  const std::string after_revoked = Issue("after-revoked");
  Revoke(later_revoked);
  Revoke(after_revoked);
  numbers.push_back(PublishAndFetchCrl("crl-2"));
  numbers.push_back(PublishAndFetchCrl("crl-last"));
  for (size_t i = 1; i < numbers.size(); ++i) EXPECT_GT(numbers[i], numbers[i - 1]);
  const std::string max_request_id = Psql("SELECT max(id) FROM requests");

  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string audit_before = Psql("SELECT count(*) FROM audit");
  auto r = Restore(StrCat(backup, " --crl ", tmp_.File("crl-last.crl")), "restore");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  // What it says it did, against independent facts.
  EXPECT_EQ(Py("restore", "d['backend']"), "postgresql");
  EXPECT_EQ(Py("restore", "d['backup_sha256']"), Sha256(backup));
  EXPECT_EQ(Py("restore", "d['crl_number_floor']"), std::to_string(numbers.back()));
  EXPECT_EQ(Py("restore",
               "sorted((r['serial'].upper(), r['action']) for r in "
               "d['revocations_reapplied'])"),
            Py("restore", StrCat("sorted([('", later_revoked, "', 'revoked'), ('", after_revoked,
                                 "', 'inserted')])")));
  // The replaced contents: a verified SQLite copy next to the backup, 0600.
  const std::string replaced = Py("restore", "d['replaced']");
  EXPECT_TRUE(Contains(replaced, tmp_.File("postgresql-before-restore-"))) << replaced;
  EXPECT_EQ(replaced.substr(replaced.size() - 3), ".db") << replaced;
  EXPECT_EQ(Listing(tmp_.path(), "postgresql-").size(), 1u);  // no temporary copy left
  struct stat st {};
  ASSERT_EQ(stat(replaced.c_str(), &st), 0) << replaced;
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto old_audit = VerifyAuditOffline(replaced);
  EXPECT_EQ(old_audit.exit_code, 0) << old_audit.output;
  auto old_count = RunCommand(StrCat("sqlite3 ", replaced, " 'SELECT count(*) FROM audit'"));
  EXPECT_EQ(Trim(old_count.output), audit_before) << old_count.output;
  auto old_after = RunCommand(StrCat("sqlite3 ", replaced,
                                     " \"SELECT count(*) FROM certificates WHERE serial = '",
                                     Lower(after), "'\""));
  EXPECT_EQ(Trim(old_after.output), "1") << old_after.output;

  // The PostgreSQL database, read with psql: the backup's contents brought
  // forward, the restore the last audit record, naming the copy.
  EXPECT_EQ(Psql("SELECT event FROM audit ORDER BY seq DESC LIMIT 1"), "database.restored");
  EXPECT_TRUE(Contains(Psql("SELECT details FROM audit ORDER BY seq DESC LIMIT 1"), replaced));
  EXPECT_EQ(Psql(StrCat("SELECT count(*) FROM certificates WHERE serial = '", Lower(after), "'")),
            "0");
  EXPECT_EQ(Psql(StrCat("SELECT revoked || ',' || revocation_reason FROM certificates WHERE "
                        "serial = '",
                        Lower(later_revoked), "'")),
            "1,1");
  EXPECT_EQ(
      Psql(StrCat("SELECT revoked FROM certificates WHERE serial = '", Lower(after_revoked), "'")),
      "1");
  // The append-only triggers are back, and refuse.
  EXPECT_EQ(Psql("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'audit%' AND NOT tgisinternal"),
            "6");
  auto del = RunCommand(daemon_->SqlCommand("DELETE FROM audit WHERE seq = 1"));
  EXPECT_NE(del.exit_code, 0) << del.output;
  EXPECT_TRUE(Contains(del.output, "append-only")) << del.output;

  // The daemon starts on it; its CRL is numbered above every earlier one
  // and lists both revocations.
  ASSERT_TRUE(daemon_->Restart().ok());
  const uint64_t after_restore = FetchCrl("crl-after");
  for (uint64_t n : numbers) EXPECT_GT(after_restore, n);
  auto text = RunCommand(StrCat("openssl crl -noout -text -in ", tmp_.File("crl-after.crl")));
  EXPECT_TRUE(Contains(text.output, StrCat("Serial Number: ", later_revoked))) << text.output;
  EXPECT_TRUE(Contains(text.output, StrCat("Serial Number: ", after_revoked))) << text.output;
  EXPECT_FALSE(Contains(text.output, kept)) << text.output;
  auto v = RunCommand(StrCat("openssl verify -crl_check -CAfile ", daemon_->ca_cert_path(),
                             " -CRLfile ", tmp_.File("crl-after.crl"), " ", Pem("revoked")));
  EXPECT_NE(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "certificate revoked")) << v.output;
  EXPECT_GT(PublishAndFetchCrl("crl-after-2"), after_restore);

  auto verify = Kw("auditor", "audit verify");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  const std::string last_seq = Psql("SELECT max(seq) FROM audit WHERE event = 'database.restored'");
  EXPECT_EQ(Py("restore", "d['audit_seq']"), last_seq);

  // A new request gets an id above every id handed out before the
  // restore, even those the backup does not have.
  Issue("fresh");
  const std::string fresh_id = Psql("SELECT max(id) FROM requests");
  EXPECT_GT(std::stoll(fresh_id), std::stoll(max_request_id));

  // The same backup once more, without --crl, in text mode: the contents
  // replaced now are the ones the daemon just ran on; their revocations and
  // CRL number carry over by themselves, and they are kept in a second file.
  const uint64_t before_second = PublishAndFetchCrl("crl-before-second");
  ASSERT_TRUE(daemon_->Stop().ok());
  auto again = Restore(backup);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(Contains(again.output, "Database restored")) << again.output;
  EXPECT_TRUE(Contains(again.output, "postgresql-before-restore-")) << again.output;
  EXPECT_TRUE(Contains(again.output, "in one transaction; next request id ")) << again.output;
  EXPECT_TRUE(Contains(again.output, Lower(later_revoked))) << again.output;
  EXPECT_TRUE(Contains(again.output, Lower(after_revoked))) << again.output;
  EXPECT_TRUE(Contains(again.output, std::to_string(before_second))) << again.output;
  EXPECT_EQ(Listing(tmp_.path(), "postgresql-").size(), 2u);
  for (const std::string& name : Listing(tmp_.path(), "postgresql-")) {
    auto kept_audit = VerifyAuditOffline(tmp_.File(name));
    EXPECT_EQ(kept_audit.exit_code, 0) << name << "\n" << kept_audit.output;
  }
  ASSERT_TRUE(daemon_->Restart().ok());
  const uint64_t after_second = FetchCrl("crl-after-second");
  EXPECT_GT(after_second, before_second);
  auto text2 =
      RunCommand(StrCat("openssl crl -noout -text -in ", tmp_.File("crl-after-second.crl")));
  EXPECT_TRUE(Contains(text2.output, StrCat("Serial Number: ", later_revoked))) << text2.output;
  EXPECT_TRUE(Contains(text2.output, StrCat("Serial Number: ", after_revoked))) << text2.output;
  Issue("fresh-2");
  EXPECT_GT(std::stoll(Psql("SELECT max(id) FROM requests")), std::stoll(fresh_id));
  auto verify2 = Kw("auditor", "audit verify");
  EXPECT_EQ(verify2.exit_code, 0) << verify2.output;
}

}  // namespace
}  // namespace keywarden::testing
