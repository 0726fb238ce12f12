// keywarden restore (certutil -restoredb) against a real keywardend and its
// SQLite database, as an operator runs it: refused while the daemon holds
// the database, refuses a damaged backup or a CRL of another CA without
// changing anything, and a restore to an older backup never turns time
// back: revocations made after the backup stay revoked (on the CRL the
// daemon publishes, read with `openssl crl`), CRL numbers keep increasing
// (read with `openssl crl -noout -crlnumber`), no serial is reused.
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "service/ca/crl_state.h"
#include "service/storage/db_lock.h"
#include "service/storage/store.h"
#include "tests/cli/restore_fixture.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif
#ifndef KEYWARDEN_DAEMON
#error "KEYWARDEN_DAEMON must be the path of the keywardend binary"
#endif

namespace keywarden::testing {
namespace {

// Names in a directory (sorted).
std::set<std::string> Listing(const std::string& dir) {
  std::set<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) out.insert(e->d_name);
    closedir(d);
  }
  return out;
}

class RestoreTest : public RestoreFixture {};

TEST_F(RestoreTest, RefusedWhileKeywardendRunsAndNothingChanges) {
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  const auto before = Listing(daemon_->dir().path());
  // The daemon holds an owner-only lock file next to its database.
  struct stat st {};
  ASSERT_EQ(stat((daemon_->db_path() + ".lock").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  auto r = Restore(backup);
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, StrCat("keywardend is running (pid ", daemon_->pid(), ")")))
      << r.output;
  EXPECT_EQ(Listing(daemon_->dir().path()), before) << r.output;
  // The daemon still serves and its log has no restore in it.
  auto status = Kw("admin", "ca status");
  EXPECT_EQ(status.exit_code, 0) << status.output;
  auto read = Kw("auditor", "audit read");
  EXPECT_FALSE(Contains(read.output, "database.restored")) << read.output;

  // A second keywardend on the same database is refused the same way.
  auto second = RunCommand(
      StrCat(KEYWARDEN_DAEMON, " --config ", daemon_->config_path(), " --port-file /dev/null"));
  EXPECT_EQ(second.exit_code, 1) << second.output;
  EXPECT_TRUE(Contains(second.output, StrCat("keywardend is running (pid ", daemon_->pid(), ")")))
      << second.output;
}

// The other way round: while a restore holds the database, keywardend
// does not start on it (and says who holds it).
TEST_F(RestoreTest, KeywardendDoesNotStartDuringARestore) {
  ASSERT_TRUE(daemon_->Stop().ok());
  {
    auto lock = service::LockDatabase(daemon_->db_path(), "keywarden restore");
    ASSERT_TRUE(lock.ok()) << lock.status();
    auto started = RunCommand(
        StrCat(KEYWARDEN_DAEMON, " --config ", daemon_->config_path(), " --port-file /dev/null"));
    EXPECT_EQ(started.exit_code, 1) << started.output;
    EXPECT_TRUE(
        Contains(started.output, StrCat("keywarden restore is running (pid ", getpid(), ")")))
        << started.output;
    // Nor does a second restore.
    auto second = Restore(tmp_.File("any.db"));
    EXPECT_EQ(second.exit_code, 3) << second.output;
    EXPECT_TRUE(Contains(second.output, "keywarden restore is running")) << second.output;
  }
  // Released: it starts.
  ASSERT_TRUE(daemon_->Restart().ok());
}

TEST_F(RestoreTest, DamagedBackupIsRefusedAndNothingChanges) {
  Issue("before-backup");
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db_sha = Sha256(daemon_->db_path());
  const auto before = Listing(daemon_->dir().path());

  // 1. Truncated to half its size.
  const std::string truncated = tmp_.File("truncated.db");
  ASSERT_EQ(
      RunCommand(StrCat("head -c $(( $(stat -c %s ", backup, ") / 2 )) ", backup, " > ", truncated))
          .exit_code,
      0);
  auto t = Restore(truncated);
  EXPECT_NE(t.exit_code, 0) << t.output;
  EXPECT_TRUE(Contains(t.output, "is not usable")) << t.output;
  EXPECT_TRUE(Contains(t.output, "nothing was changed")) << t.output;

  // 2. An audit record edited (the chain no longer verifies).
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
  // Said of the backup given, not of a temporary file.
  EXPECT_TRUE(Contains(e.output, StrCat("checking database copy \"", tampered))) << e.output;
  EXPECT_FALSE(Contains(e.output, ".restore-")) << e.output;

  // 3. Not a database at all, and a missing file.
  const std::string junk = tmp_.File("junk.db");
  WriteFile(junk, std::string(8192, 'x'));
  auto j = Restore(junk);
  EXPECT_EQ(j.exit_code, 3) << j.output;
  EXPECT_TRUE(Contains(j.output, "not an SQLite database")) << j.output;
  auto missing = Restore(tmp_.File("missing.db"));
  EXPECT_EQ(missing.exit_code, 4) << missing.output;

  EXPECT_EQ(Sha256(daemon_->db_path()), db_sha);
  EXPECT_EQ(Listing(daemon_->dir().path()), before);
  // And the daemon starts on the untouched database.
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Kw("admin", "ca status").exit_code, 0);
}

TEST_F(RestoreTest, CrlOfAnotherCaIsRefused) {
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db_sha = Sha256(daemon_->db_path());
  const auto before = Listing(daemon_->dir().path());
  // Same subject as the CA under test, another key: only the signature
  // tells them apart. Made by `openssl ca -gencrl`.
  const std::string other = tmp_.File("other");
  ASSERT_EQ(
      RunCommand(StrCat("(mkdir -p ", other, " && cd ", other,
                        " && openssl req -x509 -newkey rsa:2048 -nodes -days 2 "
                        "-subj '/CN=keywarden Test CA/O=keywarden test' "
                        "-keyout ca.key -out ca.pem && touch index.txt && echo 1000 > "
                        "crlnumber && printf '[ca]\\ndefault_ca=d\\n[d]\\ndatabase=index.txt\\n"
                        "crlnumber=crlnumber\\ndefault_md=sha256\\ndefault_crl_days=1\\n' > "
                        "ca.cnf && openssl ca -config ca.cnf -gencrl -keyfile ca.key -cert "
                        "ca.pem -out other.crl)"))
          .exit_code,
      0);
  auto r = Restore(StrCat(backup, " --crl ", other, "/other.crl"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_TRUE(Contains(r.output, "not a CRL of this CA")) << r.output;
  EXPECT_EQ(Sha256(daemon_->db_path()), db_sha);
  EXPECT_EQ(Listing(daemon_->dir().path()), before);

  // Not a CRL at all: a usage error naming the file.
  auto junk = Restore(StrCat(backup, " --crl ", daemon_->ca_cert_path()));
  EXPECT_EQ(junk.exit_code, 2) << junk.output;
  EXPECT_TRUE(Contains(junk.output, "not a PEM or DER CRL")) << junk.output;
  EXPECT_EQ(Sha256(daemon_->db_path()), db_sha);
}

// The whole story: CRLs published, a backup, more issuance, revocations and
// CRLs, then a restore to the backup with the last CRL.
TEST_F(RestoreTest, RestoreToOlderBackupNeverTurnsTimeBack) {
  const std::string kept = Issue("kept");              // valid throughout
  const std::string later_revoked = Issue("revoked");  // revoked after the backup
  std::vector<uint64_t> numbers;
  numbers.push_back(PublishAndFetchCrl("crl-1"));
  numbers.push_back(PublishAndFetchCrl("crl-2"));
  EXPECT_GT(numbers[1], numbers[0]);

  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);

  const std::string after = Issue("after");                  // issued after the backup
  const std::string after_revoked = Issue("after-revoked");  // issued and revoked after it
  Revoke(later_revoked);
  Revoke(after_revoked);
  numbers.push_back(PublishAndFetchCrl("crl-3"));
  numbers.push_back(PublishAndFetchCrl("crl-last"));
  for (size_t i = 1; i < numbers.size(); ++i) EXPECT_GT(numbers[i], numbers[i - 1]);
  // The last CRL (given to restore) lists both.
  auto last_text = RunCommand(StrCat("openssl crl -noout -text -in ", tmp_.File("crl-last.crl")));
  ASSERT_TRUE(Contains(last_text.output, later_revoked)) << last_text.output;
  ASSERT_TRUE(Contains(last_text.output, after_revoked)) << last_text.output;

  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db = daemon_->db_path();
  // What a killed restore would leave: removed by the next one that succeeds.
  WriteFile(db + ".restore-AbC123", "stale copy");
  WriteFile(db + ".restore-AbC123-wal", "stale wal");
  auto r = Restore(StrCat(backup, " --crl ", tmp_.File("crl-last.crl")), "restore");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_FALSE(FileExists(db + ".restore-AbC123"));
  EXPECT_FALSE(FileExists(db + ".restore-AbC123-wal"));

  // What it says it did (its JSON), against independent facts.
  EXPECT_EQ(Py("restore", "d['backup_sha256']"), Sha256(backup));
  EXPECT_EQ(Py("restore", "d['crl_file_number']"), std::to_string(numbers.back()));
  EXPECT_EQ(Py("restore", "d['crl_number_floor']"), std::to_string(numbers.back()));
  EXPECT_EQ(Py("restore",
               "sorted((r['serial'].upper(), r['action']) for r in "
               "d['revocations_reapplied'])"),
            Py("restore", StrCat("sorted([('", later_revoked, "', 'revoked'), ('", after_revoked,
                                 "', 'inserted')])")));
  const std::string replaced = Py("restore", "d['replaced']");
  ASSERT_TRUE(Contains(replaced, db + ".before-restore-")) << replaced;
  struct stat st {};
  ASSERT_EQ(stat(replaced.c_str(), &st), 0) << replaced;
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(db.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  // The replaced database is intact: it still holds what was issued after
  // the backup, and its audit chain verifies offline.
  {
    auto old = service::OpenSqliteStore(replaced);
    ASSERT_TRUE(old.ok()) << old.status();
    EXPECT_TRUE((*old)->GetCertificate(Lower(after)).ok());
  }
  auto old_audit = VerifyAuditOffline(replaced);
  EXPECT_EQ(old_audit.exit_code, 0) << old_audit.output;

  // The restored database, read behind the CLI's back.
  {
    auto store = service::OpenSqliteStore(db);
    ASSERT_TRUE(store.ok()) << store.status();
    auto last = (*store)->LastAudit();
    ASSERT_TRUE(last.ok()) << last.status();
    EXPECT_EQ(last->event, "database.restored");
    EXPECT_TRUE(Contains(last->details, Sha256(backup))) << last->details;
    // Issued after the backup and never revoked: not in the restored database.
    EXPECT_TRUE(absl::IsNotFound((*store)->GetCertificate(Lower(after)).status()));
    // Revoked after the backup: revoked in it, with the reason given then.
    auto k = (*store)->GetCertificate(Lower(later_revoked));
    ASSERT_TRUE(k.ok()) << k.status();
    EXPECT_TRUE(k->revoked);
    EXPECT_EQ(k->revocation_reason, 1);  // keyCompromise
    auto c = (*store)->GetCertificate(Lower(after_revoked));
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_TRUE(c->revoked);
    // Serials are unique by constraint: a forced duplicate is refused.
    auto existing = (*store)->GetCertificate(Lower(kept));
    ASSERT_TRUE(existing.ok()) << existing.status();
    service::CertificateRecord dup = *existing;
    dup.request_id = 0;
    dup.sha1 = std::string(40, 'a');  // only the serial collides
    EXPECT_EQ((*store)->InsertCertificate(dup).code(), absl::StatusCode::kAlreadyExists);
  }
  auto audit = VerifyAuditOffline(db);
  EXPECT_EQ(audit.exit_code, 0) << audit.output;

  // The daemon starts on it and publishes a CRL numbered above every CRL
  // published before, listing both revocations.
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
  auto ok = RunCommand(StrCat("openssl verify -crl_check -CAfile ", daemon_->ca_cert_path(),
                              " -CRLfile ", tmp_.File("crl-after.crl"), " ", Pem("kept")));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_GT(PublishAndFetchCrl("crl-after-2"), after_restore);

  // The daemon's audit verification passes and the restore is in the log.
  auto verify = Kw("auditor", "audit verify");
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  auto read = Kw("auditor", "audit read");
  EXPECT_TRUE(Contains(read.output, "database.restored")) << read.output;

  // New issuance: a serial none of the earlier certificates had.
  const std::string fresh = Issue("fresh");
  EXPECT_FALSE(fresh.empty());
  for (const auto& s : {kept, later_revoked, after, after_revoked}) EXPECT_NE(fresh, s);

  // The same backup once more, without --crl, in text mode: the database
  // replaced now is the one the daemon just ran on; its revocations and its
  // CRL number carry over by themselves.
  const uint64_t before_second = PublishAndFetchCrl("crl-before-second");
  ASSERT_TRUE(daemon_->Stop().ok());
  auto again = Restore(backup);
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(Contains(again.output, "Database restored")) << again.output;
  EXPECT_TRUE(Contains(again.output, "Revocations re-applied")) << again.output;
  EXPECT_TRUE(Contains(again.output, Lower(later_revoked))) << again.output;
  EXPECT_TRUE(Contains(again.output, Lower(after_revoked))) << again.output;
  EXPECT_TRUE(Contains(again.output, std::to_string(before_second))) << again.output;
  ASSERT_TRUE(daemon_->Restart().ok());
  const uint64_t after_second = FetchCrl("crl-after-second");
  EXPECT_GT(after_second, before_second);
  auto text2 =
      RunCommand(StrCat("openssl crl -noout -text -in ", tmp_.File("crl-after-second.crl")));
  EXPECT_TRUE(Contains(text2.output, StrCat("Serial Number: ", later_revoked))) << text2.output;
  EXPECT_TRUE(Contains(text2.output, StrCat("Serial Number: ", after_revoked))) << text2.output;
}

// backup --with-config: one archive directory with the database copy, the
// configuration and a manifest whose hashes sha256sum confirms; no key, PIN
// or password in it. restore takes the archive, checks the hashes first and
// refuses one whose files do not match.
TEST_F(RestoreTest, ArchiveWithConfigurationIsWrittenCheckedAndRestored) {
  const std::string serial = Issue("archived");
  const std::string archive = tmp_.File("archive");
  auto b = RunCommand(StrCat("(", KEYWARDEN_CLI, " --json", Connection("backup"), " backup ",
                             archive, " --with-config ", daemon_->config_path(), " > ",
                             tmp_.File("backup.json"), ")"));
  ASSERT_EQ(b.exit_code, 0) << b.output << Slurp(tmp_.File("backup.json"));
  struct stat st {};
  ASSERT_EQ(stat(archive.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const char* f : {"ca.db", "keywarden.toml", "manifest.json"}) {
    ASSERT_EQ(stat(StrCat(archive, "/", f).c_str(), &st), 0) << f;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << f;
  }
  EXPECT_EQ(Listing(archive),
            (std::set<std::string>{".", "..", "ca.db", "keywarden.toml", "manifest.json"}));
  // The manifest's hashes, checked by sha256sum.
  const std::string manifest = StrCat(archive, "/manifest.json");
  auto check = RunCommand(StrCat(
      "cd ", archive,
      " && python3 -c \"import json; m=json.load(open('manifest.json')); "
      "print(''.join(f['sha256'] + '  ' + f['name'] + chr(10) for f in m['files']), end='')\" "
      "| sha256sum -c"));
  EXPECT_EQ(check.exit_code, 0) << check.output;
  EXPECT_TRUE(Contains(check.output, "ca.db: OK")) << check.output;
  EXPECT_TRUE(Contains(check.output, "keywarden.toml: OK")) << check.output;
  EXPECT_EQ(Slurp(StrCat(archive, "/keywarden.toml")), Slurp(daemon_->config_path()));
  const std::string text = Slurp(manifest);
  EXPECT_TRUE(Contains(text, "\"format\": \"keywarden-backup\"")) << text;
  EXPECT_TRUE(Contains(text, "\"schema_version\"")) << text;
  EXPECT_TRUE(Contains(text, "\"keywarden_version\"")) << text;
  EXPECT_TRUE(Contains(text, "pkcs11:token=keywarden-ca")) << text;  // a token URI, by name
  EXPECT_TRUE(Contains(text, "server.pem")) << text;                 // TLS material, by name
  // Never a key or a PIN: not the TLS key's name, not the PIN file's.
  EXPECT_FALSE(Contains(text, "server.key")) << text;
  EXPECT_FALSE(Contains(text, "pin")) << text;
  EXPECT_FALSE(Contains(Slurp(StrCat(archive, "/ca.db")), "PRIVATE KEY"));
  // The copy in it is a keywarden database whose audit chain verifies.
  auto verify = VerifyAuditOffline(StrCat(archive, "/ca.db"));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;
  // Refuses an existing OUT.
  auto again = Kw("backup", StrCat("backup ", archive, " --with-config ", daemon_->config_path()));
  EXPECT_EQ(again.exit_code, 3) << again.output;

  const std::string after = Issue("after-archive");
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db_sha = Sha256(daemon_->db_path());

  // A copy of the archive whose configuration was changed: refused.
  const std::string bad = tmp_.File("bad-archive");
  ASSERT_EQ(RunCommand(StrCat("cp -a ", archive, " ", bad, " && echo '# edited' >> ", bad,
                              "/keywarden.toml"))
                .exit_code,
            0);
  auto refused = Restore(bad);
  EXPECT_EQ(refused.exit_code, 1) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "keywarden.toml has SHA-256")) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "nothing was changed")) << refused.output;
  EXPECT_EQ(Sha256(daemon_->db_path()), db_sha);
  // A directory that is not an archive.
  auto not_archive = Restore(tmp_.path());
  EXPECT_EQ(not_archive.exit_code, 3) << not_archive.output;
  EXPECT_EQ(Sha256(daemon_->db_path()), db_sha);

  // The archive itself.
  auto r = Restore(archive);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "manifest checked")) << r.output;
  EXPECT_TRUE(Contains(r.output, "identical to")) << r.output;
  {
    auto store = service::OpenSqliteStore(daemon_->db_path());
    ASSERT_TRUE(store.ok()) << store.status();
    EXPECT_TRUE((*store)->GetCertificate(Lower(serial)).ok());
    EXPECT_TRUE(absl::IsNotFound((*store)->GetCertificate(Lower(after)).status()));
    auto last = (*store)->LastAudit();
    ASSERT_TRUE(last.ok());
    EXPECT_EQ(last->event, "database.restored");
    EXPECT_TRUE(Contains(last->details, archive)) << last->details;
  }
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Kw("auditor", "audit verify").exit_code, 0);
}

// The database is lost (garbage where it was): restore refuses to go on
// without its revocations unless told to; with --discard-current the last
// CRL is the only source: a revocation of a certificate in the backup is
// re-applied, one of a certificate issued after it is carried by serial,
// and both are on the next CRL, numbered above the given one.
TEST_F(RestoreTest, LostDatabaseWithTheLastCrlOnly) {
  const std::string in_backup = Issue("in-backup");
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  const std::string not_in_backup = Issue("not-in-backup");
  Revoke(in_backup);
  Revoke(not_in_backup);
  const uint64_t last = PublishAndFetchCrl("crl-last");
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db = daemon_->db_path();
  WriteFile(db, std::string(4096, '\x5a'));
  const std::string junk_sha = Sha256(db);

  auto refused = Restore(StrCat(backup, " --crl ", tmp_.File("crl-last.crl")));
  EXPECT_EQ(refused.exit_code, 3) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "--discard-current")) << refused.output;
  EXPECT_EQ(Sha256(db), junk_sha);

  auto r = Restore(StrCat(backup, " --crl ", tmp_.File("crl-last.crl"), " --discard-current"),
                   "restore");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Py("restore", "d['replaced_read']"), "False");
  EXPECT_EQ(Py("restore",
               "sorted((r['serial'].upper(), r['source'], r['action']) for r in "
               "d['revocations_reapplied'])"),
            Py("restore", StrCat("sorted([('", in_backup, "', 'CRL', 'revoked'), ('", not_in_backup,
                                 "', 'CRL', 'carried')])")));
  // The lost file is kept as it was.
  EXPECT_EQ(Sha256(Py("restore", "d['replaced']")), junk_sha);

  ASSERT_TRUE(daemon_->Restart().ok());
  const uint64_t next = FetchCrl("crl-next");
  EXPECT_GT(next, last);
  auto text = RunCommand(StrCat("openssl crl -noout -text -in ", tmp_.File("crl-next.crl")));
  EXPECT_TRUE(Contains(text.output, StrCat("Serial Number: ", in_backup))) << text.output;
  EXPECT_TRUE(Contains(text.output, StrCat("Serial Number: ", not_in_backup))) << text.output;
  auto v = RunCommand(StrCat("openssl verify -crl_check -CAfile ", daemon_->ca_cert_path(),
                             " -CRLfile ", tmp_.File("crl-next.crl"), " ", Pem("not-in-backup")));
  EXPECT_TRUE(Contains(v.output, "certificate revoked")) << v.output;
  // And it stays listed on later CRLs.
  EXPECT_GT(PublishAndFetchCrl("crl-later"), next);
  auto later = RunCommand(StrCat("openssl crl -noout -text -in ", tmp_.File("crl-later.crl")));
  EXPECT_TRUE(Contains(later.output, StrCat("Serial Number: ", not_in_backup))) << later.output;
}

// A new CA host: no state directory, no database. The restore makes the
// directory as keywardend would (0700) and the daemon starts on the copy.
TEST_F(RestoreTest, RestoreOnANewHostMakesTheStateDirectory) {
  const std::string serial = Issue("on-new-host");
  const std::string backup = tmp_.File("backup.db");
  ASSERT_EQ(Kw("backup", StrCat("backup ", backup)).exit_code, 0);
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string config = Slurp(daemon_->config_path());
  const std::string from = "path = \"ca.db\"";
  const size_t at = config.find(from);
  ASSERT_NE(at, std::string::npos) << config;
  WriteFile(daemon_->config_path(), config.substr(0, at) + "path = \"state/keywarden/ca.db\"" +
                                        config.substr(at + from.size()));
  auto r = Restore(backup, "restore");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(Py("restore", "d['replaced']"), "None");
  struct stat st {};
  ASSERT_EQ(stat(daemon_->dir().File("state/keywarden").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(stat(daemon_->dir().File("state/keywarden/ca.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_TRUE(daemon_->Restart().ok());
  auto find = Kw("officer", StrCat("officer find --serial ", serial));
  EXPECT_EQ(find.exit_code, 0) << find.output;
  EXPECT_TRUE(Contains(find.output, "CN=on-new-host")) << find.output;
  EXPECT_EQ(Kw("auditor", "audit verify").exit_code, 0);
}

// The reported bug: a copied-back database brought revoked KRAs back as
// valid. KRA 1 (in the backup) and KRA 3 (enrolled after it) are revoked
// after the backup; after the restore both are still refused as revoked,
// and KRA 2 is still valid.
TEST(RestoreKraTest, RevokedKrasStayRevoked) {
  TempDir tmp;
  DaemonHarness::Options options;
  options.extra_toml = kKraTemplateToml;
  auto started = DaemonHarness::Start(options);
  ASSERT_TRUE(started.ok()) << started.status();
  DaemonHarness& daemon = **started;
  auto kra1 = EnrollKraCard(daemon, SoftHsmFixture::kKraCard1);
  ASSERT_TRUE(kra1.ok()) << kra1.status();
  auto kra2 = EnrollKraCard(daemon, SoftHsmFixture::kKraCard2);
  ASSERT_TRUE(kra2.ok()) << kra2.status();
  auto kw = [&](const std::string& who, const std::string& args) {
    const ClientIdentity& id = daemon.client(who);
    return RunCommand(StrCat(KEYWARDEN_CLI, " --server ", daemon.target(), " --client-cert ",
                             id.cert_path, " --client-key ", id.key_path, " --server-ca ",
                             daemon.tls_ca_path(), " --server-name localhost ", args));
  };
  const std::string backup = tmp.File("backup.db");
  ASSERT_EQ(kw("backup", StrCat("backup ", backup)).exit_code, 0);
  auto kra3 = EnrollKraCard(daemon, SoftHsmFixture::kKraCard3);
  ASSERT_TRUE(kra3.ok()) << kra3.status();
  ASSERT_TRUE(UseKras(daemon,
                      {pki::Sha1Thumbprint(kra1->get()), pki::Sha1Thumbprint(kra2->get()),
                       pki::Sha1Thumbprint(kra3->get())},
                      1)
                  .ok());
  auto list = kw("admin", "kra list");
  ASSERT_TRUE(Contains(list.output, "3 of 3 valid")) << list.output;
  auto serial_of = [](X509* cert) {
    ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
    char* hex = BN_bn2hex(bn.get());
    std::string out = hex;
    OPENSSL_free(hex);
    return out;
  };
  for (X509* kra : {kra1->get(), kra3->get()}) {
    auto r = kw("officer", StrCat("officer revoke ", serial_of(kra), " --reason keyCompromise"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  list = kw("admin", "kra list");
  ASSERT_TRUE(Contains(list.output, "1 of 3 valid")) << list.output;

  ASSERT_TRUE(daemon.Stop().ok());
  auto r =
      RunCommand(StrCat(KEYWARDEN_CLI, " restore ", backup, " --config ", daemon.config_path()));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(daemon.Restart().ok());
  list = kw("admin", "--json kra list");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  const std::string file = tmp.File("kras.json");
  WriteFile(file, list.output);
  auto states = RunCommand(StrCat(
      "python3 -c \"import json,sys; d=json.load(open(sys.argv[1])); "
      "print(' '.join(a['state'] for a in sorted(d['agents'], key=lambda a: a['index'])))\" ",
      file));
  EXPECT_EQ(states.exit_code, 0) << states.output << list.output;
  EXPECT_EQ(Trim(states.output), "revoked valid revoked") << list.output;
}

// A CRL number floor set by a restore (or any stored number above the
// clock) is honoured; otherwise the number is the time in microseconds.
TEST(CrlNumberTest, DerivedFromTimeAndAboveEveryStoredNumber) {
  TempDir dir;
  auto store = service::OpenSqliteStore(dir.File("ca.db"));
  ASSERT_TRUE(store.ok()) << store.status();
  const int64_t now = 1'800'000'000'000'000;  // µs, a literal
  auto first = service::NextCrlNumber(**store, now);
  ASSERT_TRUE(first.ok()) << first.status();
  EXPECT_EQ(*first, now);
  // The clock did not move (or went back): still strictly increasing.
  EXPECT_EQ(service::NextCrlNumber(**store, now).value_or(-1), now + 1);
  EXPECT_EQ(service::NextCrlNumber(**store, now - 5'000'000).value_or(-1), now + 2);
  // A floor above the clock (a restore's --crl number).
  ASSERT_TRUE((*store)->PutSetting("crl.number", "1900000000000000").ok());
  EXPECT_EQ(service::NextCrlNumber(**store, now).value_or(-1), 1'900'000'000'000'001);
  // The stored current CRL's number counts too.
  ASSERT_TRUE(
      (*store)->PutSetting("crl.current", "{\"number\": 2000000000000000, \"der\": \"\"}").ok());
  EXPECT_EQ(service::NextCrlNumber(**store, now).value_or(-1), 2'000'000'000'000'001);
  // Time moves past every floor: the time it is.
  EXPECT_EQ(service::NextCrlNumber(**store, 2'100'000'000'000'000).value_or(-1),
            2'100'000'000'000'000);
  // Concurrent publishers at the same instant: every number differs.
  {
    std::vector<std::thread> threads;
    std::vector<int64_t> got(8 * 25, -1);
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 25; ++i) {
          got[t * 25 + i] = service::NextCrlNumber(**store, now).value_or(-1);
        }
      });
    }
    for (auto& t : threads) t.join();
    std::set<int64_t> distinct(got.begin(), got.end());
    EXPECT_EQ(distinct.size(), got.size());
    EXPECT_EQ(distinct.count(-1), 0u);
    EXPECT_EQ(*distinct.begin(), 2'100'000'000'000'001);
    EXPECT_EQ(*distinct.rbegin(), 2'100'000'000'000'000 + static_cast<int64_t>(got.size()));
  }
  // A damaged counter is an error, never a restart from 0.
  ASSERT_TRUE((*store)->PutSetting("crl.number", "12x").ok());
  EXPECT_FALSE(service::NextCrlNumber(**store, now).ok());
}

}  // namespace
}  // namespace keywarden::testing
