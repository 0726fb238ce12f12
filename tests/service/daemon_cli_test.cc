// keywardend as an operator runs it: --version, --check-config (a report,
// non-zero naming what failed, nothing written), the state directory made
// 0700, and systemd's notification protocol (READY=1, WATCHDOG=1,
// STOPPING=1) on a NOTIFY_SOCKET the test makes. Real daemon, real SoftHSM2.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <regex>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/strings.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/soft_ca.h"

namespace keywarden::testing {
namespace {

std::string Slurp(const std::string& path) {
  const auto bytes = ReadFile(path);
  return std::string(bytes.begin(), bytes.end());
}

// The shell quoting of one argument.
std::string Q(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

CommandResult CheckConfig(const std::string& config, const std::string& env = "") {
  return RunCommand(env + " " + Q(KEYWARDEN_DAEMON) + " --config " + Q(config) +
                    " --check-config 2>&1");
}

// sha256sum and sqlite3, independent of the code under test.
std::string Sha256Of(const std::string& path) {
  return RunCommand("sha256sum " + Q(path) + " | cut -c1-64").output;
}
std::string AuditCount(const std::string& db) {
  return RunCommand("sqlite3 " + Q(db) + " 'SELECT count(*) FROM audit'").output;
}

void Rewrite(const std::string& path, const std::string& pattern, const std::string& with) {
  const std::string text = Slurp(path);
  const std::string changed = std::regex_replace(text, std::regex(pattern), with);
  ASSERT_NE(text, changed) << "pattern " << pattern << " not in " << path;
  WriteFile(path, changed);
}

std::unique_ptr<DaemonHarness> StartDaemon(const DaemonHarness::Options& options = {}) {
  auto d = DaemonHarness::Start(options);
  EXPECT_TRUE(d.ok()) << d.status();
  return d.ok() ? std::move(*d) : nullptr;
}

TEST(DaemonCliTest, VersionIsTheProjectVersion) {
  const auto r = RunCommand(Q(KEYWARDEN_DAEMON) + " --version 2>&1");
  EXPECT_EQ(r.exit_code, 0);
  EXPECT_EQ(r.output, std::string("keywardend ") + KEYWARDEN_PROJECT_VERSION + "\n");
  const auto help = RunCommand(Q(KEYWARDEN_DAEMON) + " --help 2>&1");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_TRUE(Contains(help.output, "--check-config")) << help.output;
  EXPECT_TRUE(Contains(help.output, "--version")) << help.output;
}

TEST(DaemonCliTest, CheckConfigReportsAUsableConfigurationAndWritesNothing) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->Stop().ok());
  const std::string db_hash = Sha256Of(daemon->db_path());
  const std::string audit = AuditCount(daemon->db_path());
  ASSERT_EQ(db_hash.size(), 65u);
  ASSERT_NE(audit, "0\n");

  const auto r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* line :
       {"ok    configuration: parsed", "ok    CA certificate ",
        "ok    CA token pkcs11:token=", "ok    CA signing key ", "matches the CA certificate",
        "ok    TLS server certificate, key and client CAs", "ok    client CAs and CRLs",
        "ok    database ", "audit log ok", "is usable (nothing was written)"}) {
    EXPECT_TRUE(Contains(r.output, line)) << "missing \"" << line << "\" in\n" << r.output;
  }
  EXPECT_FALSE(Contains(r.output, "FAIL")) << r.output;
  // Nothing written: the same bytes, the same audit records.
  EXPECT_EQ(Sha256Of(daemon->db_path()), db_hash);
  EXPECT_EQ(AuditCount(daemon->db_path()), audit);
  // And the daemon still starts on it.
  ASSERT_TRUE(daemon->Restart().ok());
}

TEST(DaemonCliTest, CheckConfigNamesWhatFailed) {
  DaemonHarness::Options options;
  // A KRA file that is not there: the daemon starts (archival is refused),
  // --check-config says so.
  options.extra_toml = "\n[kra]\ncertificates = [\"kra/missing.pem\"]\ncount = 1\n";
  auto daemon = StartDaemon(options);
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->Stop().ok());
  const std::string config = daemon->config_path();
  const std::string pristine = Slurp(config);

  auto r = CheckConfig(config);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "FAIL  KRA 1 ")) << r.output;
  EXPECT_TRUE(Contains(r.output, "missing.pem")) << r.output;
  EXPECT_TRUE(Contains(r.output, "FAIL  key recovery agents: 0 valid, [kra] count is 1"))
      << r.output;
  EXPECT_TRUE(Contains(r.output, "ok    CA token")) << r.output;
  EXPECT_TRUE(Contains(r.output, "has 2 problem(s)")) << r.output;

  // The wrong PIN: the token login fails, and is named.
  WriteFile(config, std::regex_replace(pristine, std::regex("\n\\[kra\\][^]*"), "\n"));
  Rewrite(config, "pin_source = \"[^\"]*\"", "pin_source = \"env:KW_TEST_WRONG_PIN\"");
  r = CheckConfig(config, "KW_TEST_WRONG_PIN=99999999");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "FAIL  CA token pkcs11:token=keywarden-ca")) << r.output;
  EXPECT_TRUE(Contains(r.output, "has 1 problem(s)")) << r.output;
  // An unset PIN variable is named too.
  r = CheckConfig(config, "env -u KW_TEST_WRONG_PIN");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "KW_TEST_WRONG_PIN")) << r.output;

  // A TLS key that is not there.
  WriteFile(config, std::regex_replace(pristine, std::regex("\n\\[kra\\][^]*"), "\n"));
  Rewrite(config, "tls_key = \"tls/server.key\"", "tls_key = \"tls/gone.key\"");
  r = CheckConfig(config);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "FAIL  TLS server certificate")) << r.output;
  EXPECT_TRUE(Contains(r.output, "gone.key")) << r.output;

  // A damaged database: named, and not repaired or replaced.
  WriteFile(config, std::regex_replace(pristine, std::regex("\n\\[kra\\][^]*"), "\n"));
  WriteFile(daemon->db_path(), std::string(8192, 'x'));
  const std::string damaged = Sha256Of(daemon->db_path());
  r = CheckConfig(config);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "FAIL  database " + daemon->db_path())) << r.output;
  EXPECT_EQ(Sha256Of(daemon->db_path()), damaged);

  // Not a configuration at all.
  WriteFile(config, "[ca\n");
  r = CheckConfig(config);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "FAIL  configuration: ")) << r.output;
}

TEST(DaemonCliTest, CheckConfigValidatesEveryKra) {
  TempDir tmp;
  SoftCa kra_ca = SoftCa::Make("KRA Issuing CA");
  WriteFile(tmp.File("kra-ca.pem"), ToPem(kra_ca.cert.get()));
  std::vector<SoftCa::Issued> kras;
  for (int i = 0; i < 2; ++i) {
    kras.push_back(kra_ca.Issue(StrCat("kra", i)));
    WriteFile(tmp.File(StrCat("kra", i, ".pem")), ToPem(kras.back().cert.get()));
  }
  WriteFile(tmp.File("kra-ca.crl"), kra_ca.Crl());
  DaemonHarness::Options options;
  options.extra_toml =
      StrCat("\n[kra]\ncertificates = [\"", tmp.File("kra0.pem"), "\", \"", tmp.File("kra1.pem"),
             "\"]\ncount = 1\ntrust = [\"", tmp.File("kra-ca.pem"), "\"]\ncrls = [\"",
             tmp.File("kra-ca.crl"), "\"]\n");
  auto daemon = StartDaemon(options);
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->Stop().ok());
  // The thumbprints as openssl computes them.
  std::vector<std::string> sha1;
  for (int i = 0; i < 2; ++i) {
    std::string fp =
        RunCommand("openssl x509 -noout -fingerprint -sha1 -in " +
                   Q(tmp.File(StrCat("kra", i, ".pem"))) + " | sed 's/.*=//; s/://g' | tr A-F a-f")
            .output;
    ASSERT_EQ(fp.size(), 41u) << fp;
    sha1.push_back(fp.substr(0, 40));
  }

  auto r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(Contains(r.output, StrCat("ok    KRA ", i + 1, " ",
                                          tmp.File(StrCat("kra", i, ".pem")), ": valid (")))
        << r.output;
    EXPECT_TRUE(Contains(r.output, "sha1 " + sha1[i])) << r.output;
  }

  // The KRA CA revokes kra0: that KRA is named, the other still valid.
  kra_ca.revoked.push_back(kras[0].cert.get());
  WriteFile(tmp.File("kra-ca.crl"), kra_ca.Crl());
  r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, StrCat("FAIL  KRA 1 ", tmp.File("kra0.pem"), ": revoked")))
      << r.output;
  EXPECT_TRUE(Contains(r.output, StrCat("ok    KRA 2 ", tmp.File("kra1.pem")))) << r.output;
  EXPECT_TRUE(Contains(r.output, "has 1 problem(s)")) << r.output;
}

// deploy/keywardend.service sets MemoryDenyWriteExecute=yes. The kernel's
// PR_SET_MDWE (Linux 6.3+) refuses the same mappings (writable and
// executable, or made executable later): the token login, the signing key
// through the PKCS#11 provider, TLS and the database all work under it.
TEST(DaemonCliTest, CheckConfigWorksWithMemoryDenyWriteExecute) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->Stop().ok());
  const std::string mdwe =
      "python3 -c 'import ctypes,os,sys; libc=ctypes.CDLL(None, use_errno=True); "
      "sys.exit(3) if libc.prctl(65, 1, 0, 0, 0) != 0 else os.execv(sys.argv[1], sys.argv[1:])' ";
  const auto probe = RunCommand(mdwe + "/bin/true");
  if (probe.exit_code == 3) GTEST_SKIP() << "PR_SET_MDWE not supported by this kernel";
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  // The refusal is real: a W+X mapping fails under it.
  const auto refused = RunCommand(
      "python3 -c 'import ctypes,mmap,sys; libc=ctypes.CDLL(None, use_errno=True); "
      "libc.prctl(65, 1, 0, 0, 0); "
      "mmap.mmap(-1, 4096, prot=mmap.PROT_READ|mmap.PROT_WRITE|mmap.PROT_EXEC)' 2>&1");
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  const auto r = RunCommand(mdwe + Q(KEYWARDEN_DAEMON) + " --config " + Q(daemon->config_path()) +
                            " --check-config 2>&1");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "matches the CA certificate")) << r.output;
}

TEST(DaemonCliTest, StateDirectoryIsCreatedOwnerOnly) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->Stop().ok());
  Rewrite(daemon->config_path(), "path = \"ca.db\"", "path = \"var/lib/keywarden/ca.db\"");
  const std::string state = daemon->dir().File("var/lib/keywarden");

  // --check-config says it will be made, and makes nothing.
  auto r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "does not exist yet")) << r.output;
  EXPECT_TRUE(Contains(r.output, "will be created with mode 0700")) << r.output;
  EXPECT_FALSE(FileExists(daemon->dir().File("var"))) << r.output;

  // Under a umask that would leave the owner without write or search
  // permission, the directory still ends up exactly 0700.
  const mode_t old = umask(0277);
  const auto started = daemon->Restart();
  umask(old);
  ASSERT_TRUE(started.ok()) << started;
  struct stat info {};
  ASSERT_EQ(stat(state.c_str(), &info), 0);
  EXPECT_TRUE(S_ISDIR(info.st_mode));
  EXPECT_EQ(info.st_mode & 07777, 0700u);
  EXPECT_TRUE(FileExists(state + "/ca.db"));
  ASSERT_TRUE(daemon->Stop().ok());
  r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "ok    database " + state + "/ca.db: intact")) << r.output;
}

// A fresh (or restored) database on a token that already holds exchange
// keys: the daemon must not pick a label the token has. Labels the old
// scheme ("keywarden-xchg-<second>-<count>") would choose for the next
// half minute are taken first, so this fails on that scheme every time.
TEST(DaemonCliTest, AFreshDatabaseOnAUsedTokenMakesAnExchangeKeyWithAFreeLabel) {
  auto daemon = StartDaemon();
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->Stop().ok());
  {
    auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
    ASSERT_TRUE(uri.ok());
    hsm::OpenOptions open;
    open.default_module = SoftHsmFixture::module_path();
    open.pin = hsm::PinSource::File(daemon->tokens().PinFile(SoftHsmFixture::kCaToken));
    auto token = hsm::OpenToken(*uri, open);
    ASSERT_TRUE(token.ok()) << token.status();
    const int64_t now = static_cast<int64_t>(std::time(nullptr));
    for (int64_t t = now - 2; t < now + 30; ++t) {
      hsm::KeySpec spec;
      spec.algorithm = hsm::KeyAlgorithm::kEcP256;
      spec.label = StrCat("keywarden-xchg-", t, "-1");
      ASSERT_TRUE(hsm::GenerateKeyPair(*token, spec).ok()) << spec.label;
    }
  }
  Rewrite(daemon->config_path(), "path = \"ca.db\"", "path = \"fresh.db\"");
  const auto started = daemon->Restart();
  ASSERT_TRUE(started.ok()) << started;
  const auto audit = RunCommand("sqlite3 " + Q(daemon->dir().File("fresh.db")) +
                                " \"SELECT details FROM audit WHERE event = 'exchange.renewed'\"");
  EXPECT_TRUE(std::regex_search(audit.output, std::regex("keywarden-xchg-[0-9]+-[0-9a-f]{16}")))
      << audit.output;
  ASSERT_TRUE(daemon->Stop().ok());
}

// --check-config on PostgreSQL: connects with the configured password
// source, checks the schema, the append-only triggers and the audit chain;
// on an empty database it says keywardend will create the schema, and
// creates nothing (psql counts the tables).
TEST(DaemonCliTest, CheckConfigOnPostgresqlChecksTheDatabaseAndCreatesNothing) {
  if (TestPgConninfo().empty()) {
    if (TestPgRequired()) FAIL() << "KEYWARDEN_REQUIRE_PG=1 but KEYWARDEN_TEST_PG is not set";
    GTEST_SKIP() << "no PostgreSQL test cluster (KEYWARDEN_TEST_PG)";
  }
  ASSERT_EQ(setenv("KEYWARDEN_TEST_BACKEND", "postgresql", 1), 0);
  auto daemon = StartDaemon();
  ASSERT_EQ(unsetenv("KEYWARDEN_TEST_BACKEND"), 0);
  ASSERT_NE(daemon, nullptr);
  ASSERT_TRUE(daemon->postgres());
  ASSERT_TRUE(daemon->Stop().ok());
  auto r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "ok    database (PostgreSQL): intact")) << r.output;

  auto empty = PgTestDatabase::Create();
  ASSERT_TRUE(empty.ok()) << empty.status();
  Rewrite(daemon->config_path(), "connection = \"[^\"]*\"",
          "connection = \"" + empty->conninfo() + "\"");
  r = CheckConfig(daemon->config_path());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "has no keywarden schema yet")) << r.output;
  auto tables =
      empty->Query("SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'");
  ASSERT_TRUE(tables.ok()) << tables.status();
  EXPECT_EQ((*tables)[0][0], "0");

  // A password in the connection string is refused, naming the key to use.
  Rewrite(daemon->config_path(), "connection = \"", "connection = \"password=secret ");
  r = CheckConfig(daemon->config_path());
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_FALSE(Contains(r.output, "secret")) << r.output;
}

// A NOTIFY_SOCKET of our own, as systemd's would be.
class NotifySocket {
 public:
  explicit NotifySocket(const std::string& path) : path_(path) {
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    ok_ = fd_ >= 0 && path.size() < sizeof addr.sun_path &&
          bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  }
  ~NotifySocket() {
    if (fd_ >= 0) close(fd_);
  }
  bool ok() const { return ok_; }
  // Reads datagrams until one holds `text` (each is kept in messages()).
  bool WaitFor(const std::string& text, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) return false;
      pollfd p{fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[4096];
      const ssize_t n = recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) continue;
      messages_.emplace_back(buf, static_cast<size_t>(n));
      if (Contains(messages_.back(), text)) return true;
    }
  }
  const std::vector<std::string>& messages() const { return messages_; }
  std::string All() const {
    std::string all;
    for (const auto& m : messages_) all += "[" + m + "]\n";
    return all;
  }

 private:
  std::string path_;
  int fd_ = -1;
  bool ok_ = false;
  std::vector<std::string> messages_;
};

TEST(DaemonCliTest, TellsSystemdReadyWatchdogAndStopping) {
  TempDir dir;
  NotifySocket notify(dir.File("notify"));
  ASSERT_TRUE(notify.ok());
  // The daemon inherits these (the harness forks and execs it); 400 ms:
  // pings expected every 200 ms.
  setenv("NOTIFY_SOCKET", dir.File("notify").c_str(), 1);
  setenv("WATCHDOG_USEC", "400000", 1);
  auto daemon = StartDaemon();
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  ASSERT_NE(daemon, nullptr);

  ASSERT_TRUE(notify.WaitFor("READY=1", std::chrono::seconds(10))) << notify.All();
  const std::string& ready = notify.messages().back();
  EXPECT_TRUE(Contains(ready, "MAINPID=" + std::to_string(daemon->pid()))) << ready;
  EXPECT_TRUE(Contains(ready, "STATUS=serving on 127.0.0.1:")) << ready;
  // READY=1 comes once it serves: the port file is already written.
  EXPECT_FALSE(Slurp(daemon->port_file_path()).empty());

  // Watchdog pings keep coming: three within 2 s (one per 200 ms expected).
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(notify.WaitFor("WATCHDOG=1", std::chrono::seconds(2))) << notify.All();
  }
  ASSERT_TRUE(daemon->Signal(SIGTERM).ok());
  ASSERT_TRUE(notify.WaitFor("STOPPING=1", std::chrono::seconds(30))) << notify.All();
  EXPECT_TRUE(Contains(notify.messages().back(), "SIGTERM")) << notify.All();
  ASSERT_TRUE(daemon->Stop().ok());
}

}  // namespace
}  // namespace keywarden::testing
