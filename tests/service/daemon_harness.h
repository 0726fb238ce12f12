// A real keywardend on a random loopback port, with fresh SoftHSM2 tokens,
// a CA made by the real `keywarden ceremony root`, an SQLite database, and a
// software TLS PKI that issues the server certificate and one client
// certificate per principal. Tests talk to it exactly as clients would.
#pragma once

#include <chrono>
#include <csignal>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <sys/types.h>

#include "absl/status/statusor.h"
#include "hsm/ossl.h"
#include "hsm/strings.h"
#include "softhsm-fixtures/fixture.h"
#include "tests/pg_test_util.h"
#include "tests/test_util.h"

namespace keywarden::testing {

// Template ClientAuth: EC client certificates (P-256 and up) for enrollees.
inline constexpr char kEcClientAuthTemplateToml[] = R"(
[[template]]
name = "ClientAuth"
extended_key_usage = ["clientAuth"]
key_types = ["ec"]
min_key_bits = 256
enrollees = ["enrollee"]
)";

// Configuration for tests of clients whose TLS certificate this CA issues
// (Options::trust_own_ca; add client "root" with the root admin's subject):
// "CN=root admin" (TLS CA) administers and enrols; "CN=officer2" (issued by
// this CA, so client_ca has ca.pem too) is a Certificate Manager; template
// ClientAuth issues EC client certificates to enrollees.
inline const std::string kOwnCaClientsToml = R"(
[[role]]
principal = "CN=root admin,O=keywarden test"
issuer = "tls/tls-ca.pem"
roles = ["ca-administrator", "enrollee"]

[[role]]
principal = "CN=officer2,O=keywarden test"
issuer = "ca.pem"
roles = ["certificate-manager"]
)" + std::string(kEcClientAuthTemplateToml);

struct ClientIdentity {
  std::string principal;  // RFC 4514 subject, as the daemon sees it
  std::string cert_path;  // PEM
  std::string key_path;   // PEM
};

class DaemonHarness {
 public:
  struct Options {
    bool role_separation = false;
    std::string exchange_validity = "7d";
    std::string exchange_overlap = "1d";
    std::string crl_validity = "7d";
    std::string extra_toml;  // appended to the configuration
    std::string ca_subject = "CN=keywarden Test CA,O=keywarden test";
    std::string extra_flags;  // lines added to [flags] (e.g. "enable_foreign = true")
    // The TLS client CA's CRL ([server] client_crls): current (default), or
    // none at all; and whether that CA is in client_crl_optional.
    bool tls_crl = true;
    bool tls_crl_optional = false;
    // Also trust client certificates issued by the CA under test (client_ca
    // gets "ca.pem"; roles for them name issuer = "ca.pem" in extra_toml).
    bool trust_own_ca = false;
    // More TLS clients from the trusted TLS CA (name -> subject), with no
    // role unless extra_toml binds one (issuer = "tls/tls-ca.pem").
    std::map<std::string, std::string> extra_clients;
    // Runs after the tokens, the CA and the configuration are made and
    // before keywardend starts (e.g. to make more keys on the tokens).
    std::function<absl::Status(DaemonHarness&)> before_launch;
    // Runs in the test process right after keywardend was started (at every
    // launch), before the harness waits for it to serve (pid() is set).
    std::function<void(const DaemonHarness&)> while_starting;
    // The CA database: "" = as KEYWARDEN_TEST_BACKEND says (PostgreSQL when
    // it is "postgresql", SQLite otherwise), or "sqlite" / "postgresql".
    std::string backend;
    // The SoftHSM2 tokens made for this daemon: StandardTokens() when empty
    // (SoftHsmFixture::FiveKraCards() for the threshold 3-of-5 tests).
    std::vector<FixtureToken> tokens;
    // keywardend's PKCS#11 module ([hsm] module): SoftHSM2 when empty (the
    // CLI runs the harness makes always use SoftHSM2 itself).
    std::string module;
    // The CPUs keywardend (and its replicas) may run on, set as its affinity
    // before it starts (as taskset would); empty: those of this process.
    std::vector<int> cpus;
  };

  // Principals with a client certificate from the trusted TLS CA:
  //   admin, officer, auditor, backup, enrollee, signer  -- one role each
  //   signer2         -- another signer
  //   admin-officer   -- ca-administrator + certificate-manager
  //   enrollee2       -- another enrollee
  //   nobody          -- trusted certificate, no role
  // and "untrusted": a certificate from a CA the daemon does not trust.
  static absl::StatusOr<std::unique_ptr<DaemonHarness>> Start(const Options& options);
  static absl::StatusOr<std::unique_ptr<DaemonHarness>> Start() { return Start(Options()); }
  ~DaemonHarness();

  // Puts `who`'s TLS client certificate on the TLS CA's CRL (written
  // atomically; the daemon notices the change by itself).
  absl::Status RevokeTlsClient(const std::string& who, int reason);
  // Rewrites the TLS CA's CRL with these validity bounds (seconds from now).
  absl::Status WriteTlsCrl(long this_update_offset, long next_update_offset);
  std::string tls_crl_path() const { return dir_.File("tls/tls-ca.crl"); }
  // A client identity made by a test (e.g. a certificate this CA issued).
  void AddClient(const std::string& who, ClientIdentity id) { clients_[who] = std::move(id); }

  // Sends `sig` (SIGTERM or SIGINT) and waits; OK only for exit status 0.
  absl::Status Stop(int sig = SIGTERM);
  absl::Status Restart();  // Stop + start on a new port with the same state
  // Arguments added to keywardend's command line from the next launch on
  // (e.g. {"--accept-broken-audit"}).
  void set_daemon_args(std::vector<std::string> args) { daemon_args_ = std::move(args); }
  // Sends `sig` to the running keywardend (e.g. SIGHUP).
  absl::Status Signal(int sig) const;
  // Waits until the daemon's log (stdout and stderr) holds `text` at least
  // `count` times; the error shows the log.
  absl::Status WaitForLog(const std::string& text, int count,
                          std::chrono::seconds timeout = std::chrono::seconds(30)) const;
  // A new TLS server certificate (SANs localhost and 127.0.0.1, serverAuth)
  // and key from the trusted TLS CA, written as PEM to the given paths.
  absl::Status IssueServerCertificate(const std::string& subject, const std::string& cert_path,
                                      const std::string& key_path) const;

  // Another keywardend on the same configuration, database and token (a
  // replica of the same CA), on a port of its own, logging to
  // replica_log_path(n). Returns n (1, 2, ...). Stopped (SIGTERM) by the
  // destructor before the first one.
  absl::StatusOr<int> StartReplica();
  std::string replica_target(int n) const {
    return "127.0.0.1:" + std::to_string(replicas_.at(static_cast<size_t>(n - 1)).port);
  }
  std::string replica_log_path(int n) const { return dir_.File(StrCat("replica-", n, ".log")); }
  pid_t replica_pid(int n) const { return replicas_.at(static_cast<size_t>(n - 1)).pid; }
  // Sends `sig` and waits; OK only for exit status 0.
  absl::Status StopReplica(int n, int sig = SIGTERM);

  std::string target() const { return "127.0.0.1:" + std::to_string(port_); }
  const ClientIdentity& client(const std::string& who) const { return clients_.at(who); }
  std::shared_ptr<grpc::Channel> Channel(const std::string& who) const;
  // The keywarden CLI's options to reach this daemon as `who` (mutual TLS),
  // with a space before and after.
  std::string CliConnection(const std::string& who) const {
    const ClientIdentity& id = client(who);
    return StrCat(" --server ", target(), " --client-cert ", id.cert_path, " --client-key ",
                  id.key_path, " --server-ca ", tls_ca_path(), " --server-name localhost ");
  }
  // The same to another server (a replica's replica_target(n)).
  std::shared_ptr<grpc::Channel> Channel(const std::string& who, const std::string& to) const;
  // Paths: the client TLS trust anchor (for the server cert) and the CA cert.
  std::string tls_ca_path() const { return dir_.File("tls/tls-ca.pem"); }
  // The CA of the "untrusted" client (not configured as a client CA).
  std::string untrusted_ca_path() const { return dir_.File("tls/rogue-ca.pem"); }
  // The server's TLS certificate and key as configured ([server]).
  std::string server_cert_path() const { return dir_.File("tls/server.pem"); }
  std::string server_key_path() const { return dir_.File("tls/server.key"); }
  std::string ca_cert_path() const { return dir_.File("ca.pem"); }
  std::string config_path() const { return dir_.File("keywarden.toml"); }
  std::string db_path() const { return dir_.File("ca.db"); }
  // KEYWARDEN_TEST_BACKEND=postgresql: the daemon's database is a fresh
  // PostgreSQL database on the test cluster instead of db_path().
  bool postgres() const { return pg_ != nullptr; }
  std::string pg_conninfo() const { return pg_ ? pg_->conninfo() : std::string(); }
  // A shell command that runs `sql` on the daemon's database with the
  // backend's own command-line client (sqlite3 or psql), printing rows with
  // columns separated by '|'.
  std::string SqlCommand(const std::string& sql) const;
  std::string log_path() const { return dir_.File("daemon.log"); }
  // Written by keywardend (--port-file) once it serves.
  std::string port_file_path() const { return dir_.File("port"); }
  const TempDir& dir() const { return dir_; }
  SoftHsmFixture& tokens() { return *tokens_; }
  pid_t pid() const { return pid_; }

 private:
  DaemonHarness() = default;
  absl::Status Launch();

  TempDir dir_;
  std::unique_ptr<PgTestDatabase> pg_;  // dropped after the daemon stopped
  std::unique_ptr<SoftHsmFixture> tokens_;
  std::map<std::string, ClientIdentity> clients_;
  ossl::UniquePtr<EVP_PKEY> tls_ca_key_;
  ossl::UniquePtr<X509> tls_ca_cert_;
  std::vector<std::pair<std::string, int>> tls_revoked_;  // serial (hex), reason
  std::function<void(const DaemonHarness&)> while_starting_;
  std::vector<int> cpus_;
  std::vector<std::string> daemon_args_;
  pid_t pid_ = -1;
  int port_ = 0;
  struct Replica {
    pid_t pid = -1;
    int port = 0;
  };
  std::vector<Replica> replicas_;
};

}  // namespace keywarden::testing
