#include "tests/service/daemon_harness.h"

#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <grpcpp/security/credentials.h>
#include <openssl/pem.h>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "tests/service/tls_pki.h"

#ifndef KEYWARDEN_DAEMON
#error "KEYWARDEN_DAEMON must be the path of keywardend"
#endif
#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of keywarden"
#endif

namespace keywarden::testing {
namespace {

using Issued = TlsIssued;

std::string KeyPem(EVP_PKEY* key) {
  return PrivateKeyPem(key);
}

absl::Status Write(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary);
  f << data;
  return f.good() ? absl::OkStatus() : absl::InternalError("write " + path);
}

std::string Slurp(const std::string& path) {
  const auto bytes = ReadFile(path);
  return std::string(bytes.begin(), bytes.end());
}

// In the forked child before exec: the CPUs it may run on (none: unchanged).
bool PinTo(const std::vector<int>& cpus) {
  if (cpus.empty()) return true;
  cpu_set_t set;
  CPU_ZERO(&set);
  for (int cpu : cpus) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return false;
    CPU_SET(cpu, &set);
  }
  return sched_setaffinity(0, sizeof set, &set) == 0;
}

}  // namespace

absl::StatusOr<std::unique_ptr<DaemonHarness>> DaemonHarness::Start(const Options& options) {
  std::unique_ptr<DaemonHarness> h(new DaemonHarness());
  std::string backend = options.backend;
  if (backend.empty()) {
    const char* env = std::getenv("KEYWARDEN_TEST_BACKEND");
    backend = env != nullptr && std::string(env) == "postgresql" ? "postgresql" : "sqlite";
  }
  if (backend != "sqlite" && backend != "postgresql") {
    return absl::InvalidArgumentError("DaemonHarness: backend \"" + backend +
                                      "\" is neither \"sqlite\" nor \"postgresql\"");
  }
  if (backend == "postgresql") {
    if (TestPgConninfo().empty()) {
      return absl::FailedPreconditionError(
          "a PostgreSQL CA database needs a test cluster in KEYWARDEN_TEST_PG "
          "(deploy/test.sh starts one)");
    }
    auto pg = PgTestDatabase::Create();
    if (!pg.ok()) return pg.status();
    h->pg_ = std::make_unique<PgTestDatabase>(*std::move(pg));
  }
  auto tokens = SoftHsmFixture::Create(options.tokens.empty() ? SoftHsmFixture::StandardTokens()
                                                              : options.tokens);
  if (!tokens.ok()) return tokens.status();
  h->tokens_ = std::move(*tokens);
  const std::string module = SoftHsmFixture::module_path();
  const std::string pin_file = h->tokens_->PinFile(SoftHsmFixture::kCaToken);

  // The CA, made the way an operator makes it.
  auto ceremony = RunCommand(
      StrCat("KEYWARDEN_PKCS11_MODULE=", module, " ", KEYWARDEN_CLI,
             " ceremony root --token pkcs11:token=keywarden-ca --pin-source file:", pin_file,
             " --key-label ca-signing --key-algorithm rsa2048 --subject '", options.ca_subject, "'",
             " --out ", h->ca_cert_path()));
  if (ceremony.exit_code != 0) return absl::InternalError("ceremony failed: " + ceremony.output);

  // TLS PKI: one CA for the server and trusted clients, another nobody trusts.
  mkdir(h->dir_.File("tls").c_str(), 0700);
  Issued tls_ca = MakeTlsCertificate("CN=keywarden test TLS CA", nullptr, true);
  Issued server = MakeTlsCertificate("CN=localhost", &tls_ca, false, "DNS:localhost,IP:127.0.0.1",
                                     "serverAuth");
  Issued rogue_ca = MakeTlsCertificate("CN=rogue CA", nullptr, true);
  if (auto st = Write(h->tls_ca_path(), ToPem(tls_ca.cert.get())); !st.ok()) return st;
  if (auto st = Write(h->dir_.File("tls/tls-ca.key"), KeyPem(tls_ca.key.get())); !st.ok())
    return st;
  if (auto st = Write(h->untrusted_ca_path(), ToPem(rogue_ca.cert.get())); !st.ok()) return st;
  if (auto st = Write(h->server_cert_path(), ToPem(server.cert.get())); !st.ok()) return st;
  if (auto st = Write(h->server_key_path(), KeyPem(server.key.get())); !st.ok()) return st;
  std::map<std::string, std::string> who = {
      {"admin", "CN=admin,O=keywarden test"},     {"officer", "CN=officer,O=keywarden test"},
      {"auditor", "CN=auditor,O=keywarden test"}, {"backup", "CN=backup,O=keywarden test"},
      {"enrollee", "CN=alice,O=keywarden test"},  {"enrollee2", "CN=bob,O=keywarden test"},
      {"signer", "CN=signer,O=keywarden test"},   {"admin-officer", "CN=boss,O=keywarden test"},
      {"nobody", "CN=nobody,O=keywarden test"},   {"untrusted", "CN=admin,O=keywarden test"},
      {"signer2", "CN=signer2,O=keywarden test"},
  };
  who.insert(options.extra_clients.begin(), options.extra_clients.end());
  for (const auto& [name, subject] : who) {
    Issued c = MakeTlsCertificate(subject, name == "untrusted" ? &rogue_ca : &tls_ca, false,
                                  nullptr, "clientAuth");
    ClientIdentity id{subject, h->dir_.File("tls/" + name + ".pem"),
                      h->dir_.File("tls/" + name + ".key")};
    if (auto st = Write(id.cert_path, ToPem(c.cert.get())); !st.ok()) return st;
    if (auto st = Write(id.key_path, KeyPem(c.key.get())); !st.ok()) return st;
    h->clients_[name] = id;
  }
  h->tls_ca_key_ = std::move(tls_ca.key);
  h->tls_ca_cert_ = std::move(tls_ca.cert);
  if (options.tls_crl) {
    if (auto st = h->WriteTlsCrl(-60, 7 * 24 * 3600); !st.ok()) return st;
  }

  std::string toml = StrCat(
      "[ca]\nname = \"keywarden Test CA\"\ncertificate = \"ca.pem\"\n\n", "[hsm]\nmodule = \"",
      options.module.empty() ? module : options.module,
      "\"\ntoken = \"pkcs11:token=keywarden-ca\"\n", "pin_source = \"file:", pin_file, "\"\n",
      "signing_key = "
      "\"pkcs11:token=keywarden-ca;object=ca-signing;type=private\"\nmax_sessions = 8\n\n",
      "[exchange]\nvalidity = \"", options.exchange_validity, "\"\noverlap = \"",
      options.exchange_overlap, "\"\nkey_algorithm = \"rsa2048\"\n\n",
      h->pg_ ? StrCat("[database]\nbackend = \"postgresql\"\nconnection = \"", h->pg_->conninfo(),
                      "\"\npool_size = 8\n",
                      std::getenv("KEYWARDEN_TEST_IN_PROCESS_TIMEOUT") != nullptr
                          ? StrCat("in_process_timeout = \"",
                                   std::getenv("KEYWARDEN_TEST_IN_PROCESS_TIMEOUT"), "\"\n")
                          : std::string(),
                      "\n")
             : std::string("[database]\nbackend = \"sqlite\"\npath = \"ca.db\"\n\n"),
      "[server]\nlisten = \"127.0.0.1:0\"\ntls_certificate = \"tls/server.pem\"\n",
      "tls_key = \"tls/server.key\"\nclient_ca = [\"tls/tls-ca.pem\"",
      options.trust_own_ca ? ", \"ca.pem\"" : "", "]\n",
      options.tls_crl ? "client_crls = [\"tls/tls-ca.crl\"]\n" : "",
      options.tls_crl_optional ? "client_crl_optional = [\"tls/tls-ca.pem\"]\n" : "", "\n",
      "[crl]\nvalidity = \"", options.crl_validity, "\"\n\n",
      "[flags]\nrole_separation = ", options.role_separation ? "true" : "false", "\n",
      options.extra_flags, "\n\n");
  const std::vector<std::pair<std::string, std::string>> roles = {
      {"admin", "ca-administrator"}, {"officer", "certificate-manager"},
      {"auditor", "auditor"},        {"backup", "backup-operator"},
      {"enrollee", "enrollee"},      {"enrollee2", "enrollee"},
      {"signer", "signer"},          {"admin-officer", "ca-administrator\", \"certificate-manager"},
      {"signer2", "signer"},
  };
  for (const auto& [name, role] : roles) {
    toml += StrCat("[[role]]\nprincipal = \"", who.at(name),
                   "\"\nissuer = \"tls/tls-ca.pem\"\nroles = [\"", role, "\"]\n\n");
  }
  toml += R"([[template]]
name = "User"
oid = "1.3.6.1.4.1.311.21.8.1.1"
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["clientAuth", "emailProtection"]
validity = "365d"
key_types = ["rsa", "ec"]
enrollees = ["enrollee"]

[[template]]
name = "WebServer"
key_usage = ["digitalSignature", "keyEncipherment"]
extended_key_usage = ["serverAuth"]
validity = "90d"
min_key_bits = 3072

[[template]]
name = "PendingUser"
extended_key_usage = ["clientAuth"]
pend = true
key_types = ["rsa", "ec"]
enrollees = ["enrollee"]

[[template]]
name = "ArchivalUser"
key_usage = ["keyEncipherment"]
extended_key_usage = ["emailProtection"]
archival = "required"
subject = "principal"
)";
  toml += options.extra_toml;
  if (auto st = Write(h->config_path(), toml); !st.ok()) return st;
  if (options.before_launch) {
    if (auto st = options.before_launch(*h); !st.ok()) return st;
  }
  h->while_starting_ = options.while_starting;
  h->cpus_ = options.cpus;
  if (auto st = h->Launch(); !st.ok()) return st;
  return h;
}

absl::Status DaemonHarness::WriteTlsCrl(long this_update_offset, long next_update_offset) {
  ossl::UniquePtr<X509_CRL> crl(X509_CRL_new());
  X509_CRL_set_version(crl.get(), 1);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(tls_ca_cert_.get()));
  ossl::UniquePtr<ASN1_TIME> last(X509_gmtime_adj(nullptr, this_update_offset));
  ossl::UniquePtr<ASN1_TIME> next(X509_gmtime_adj(nullptr, next_update_offset));
  X509_CRL_set1_lastUpdate(crl.get(), last.get());
  X509_CRL_set1_nextUpdate(crl.get(), next.get());
  for (const auto& [serial, reason] : tls_revoked_) {
    X509_REVOKED* r = X509_REVOKED_new();
    ossl::UniquePtr<BIGNUM> bn;
    BIGNUM* raw = nullptr;
    BN_hex2bn(&raw, serial.c_str());
    bn.reset(raw);
    ASN1_INTEGER* sn = BN_to_ASN1_INTEGER(bn.get(), nullptr);
    X509_REVOKED_set_serialNumber(r, sn);
    ASN1_INTEGER_free(sn);
    ossl::UniquePtr<ASN1_TIME> when(X509_gmtime_adj(nullptr, -30));
    X509_REVOKED_set_revocationDate(r, when.get());
    ASN1_ENUMERATED* e = ASN1_ENUMERATED_new();
    ASN1_ENUMERATED_set(e, reason);
    X509_REVOKED_add1_ext_i2d(r, NID_crl_reason, e, 0, 0);
    ASN1_ENUMERATED_free(e);
    X509_CRL_add0_revoked(crl.get(), r);
  }
  X509_CRL_sort(crl.get());
  if (X509_CRL_sign(crl.get(), tls_ca_key_.get(), EVP_sha256()) <= 0) {
    return absl::InternalError("cannot sign the TLS CA's CRL");
  }
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  PEM_write_bio_X509_CRL(bio.get(), crl.get());
  char* data = nullptr;
  const long len = BIO_get_mem_data(bio.get(), &data);
  const std::string tmp = tls_crl_path() + ".new";
  if (auto st = Write(tmp, std::string(data, static_cast<size_t>(len))); !st.ok()) return st;
  if (std::rename(tmp.c_str(), tls_crl_path().c_str()) != 0) {
    return absl::InternalError("rename " + tmp);
  }
  return absl::OkStatus();
}

absl::Status DaemonHarness::RevokeTlsClient(const std::string& who, int reason) {
  auto certs = pki::ReadPemCertificates(clients_.at(who).cert_path);
  if (!certs.ok()) return certs.status();
  const ASN1_INTEGER* sn = X509_get0_serialNumber(certs->front().get());
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(sn, nullptr));
  char* hex = BN_bn2hex(bn.get());
  tls_revoked_.emplace_back(hex, reason);
  OPENSSL_free(hex);
  return WriteTlsCrl(-60, 7 * 24 * 3600);
}

absl::Status DaemonHarness::Launch() {
  const std::string port_file = port_file_path();
  unlink(port_file.c_str());
  pid_ = fork();
  if (pid_ < 0) return absl::InternalError("fork failed");
  if (pid_ == 0) {
    FILE* log = std::freopen(log_path().c_str(), "a", stdout);
    if (log == nullptr || dup2(fileno(stdout), STDERR_FILENO) < 0) _exit(127);
    const std::string config = config_path();
    std::vector<char*> argv{const_cast<char*>(KEYWARDEN_DAEMON), const_cast<char*>("--config"),
                            const_cast<char*>(config.c_str()), const_cast<char*>("--port-file"),
                            const_cast<char*>(port_file.c_str())};
    for (const std::string& a : daemon_args_) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!PinTo(cpus_)) _exit(126);
    execv(KEYWARDEN_DAEMON, argv.data());
    _exit(127);
  }
  if (while_starting_) while_starting_(*this);
  // Wait for the port file (the daemon writes it once it serves).
  for (int i = 0; i < 600; ++i) {
    std::string text = Slurp(port_file);
    if (!text.empty() && text.back() == '\n') {
      port_ = std::stoi(text);
      return absl::OkStatus();
    }
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return absl::InternalError("keywardend exited at start:\n" + Slurp(log_path()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError("keywardend did not start in 30 s:\n" + Slurp(log_path()));
}

absl::Status DaemonHarness::Signal(int sig) const {
  if (pid_ <= 0) return absl::FailedPreconditionError("keywardend is not running");
  if (kill(pid_, sig) != 0) return absl::InternalError("kill failed");
  return absl::OkStatus();
}

absl::Status DaemonHarness::WaitForLog(const std::string& text, int count,
                                       std::chrono::seconds timeout) const {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    const std::string log = Slurp(log_path());
    int seen = 0;
    for (size_t at = log.find(text); at != std::string::npos; at = log.find(text, at + 1)) ++seen;
    if (seen >= count) return absl::OkStatus();
    if (std::chrono::steady_clock::now() > deadline) {
      return absl::DeadlineExceededError(
          StrCat("\"", text, "\" seen ", seen, " of ", count, " times in the log:\n", log));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

absl::Status DaemonHarness::IssueServerCertificate(const std::string& subject,
                                                   const std::string& cert_path,
                                                   const std::string& key_path) const {
  Issued ca;
  {
    const std::string pem = Slurp(tls_ca_path());
    ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    ca.cert.reset(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
  }
  {
    const std::string pem = Slurp(dir_.File("tls/tls-ca.key"));
    ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    ca.key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
  }
  if (!ca.cert || !ca.key) return absl::InternalError("cannot read the test TLS CA");
  Issued server =
      MakeTlsCertificate(subject, &ca, false, "DNS:localhost,IP:127.0.0.1", "serverAuth");
  if (auto st = Write(cert_path, ToPem(server.cert.get())); !st.ok()) return st;
  return Write(key_path, KeyPem(server.key.get()));
}

absl::Status DaemonHarness::Stop(int sig) {
  if (pid_ <= 0) return absl::OkStatus();
  kill(pid_, sig);
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) && WEXITSTATUS(status) == 0
                 ? absl::OkStatus()
                 : absl::InternalError("keywardend did not exit cleanly:\n" + Slurp(log_path()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return absl::DeadlineExceededError(StrCat("keywardend ignored signal ", sig, " for 10 s"));
}

absl::Status DaemonHarness::Restart() {
  if (auto st = Stop(); !st.ok()) return st;
  return Launch();
}

absl::StatusOr<int> DaemonHarness::StartReplica() {
  const int n = static_cast<int>(replicas_.size()) + 1;
  const std::string port_file = dir_.File(StrCat("replica-", n, ".port"));
  const std::string log = replica_log_path(n);
  unlink(port_file.c_str());
  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    FILE* out = std::freopen(log.c_str(), "a", stdout);
    if (out == nullptr || dup2(fileno(stdout), STDERR_FILENO) < 0) _exit(127);
    const std::string config = config_path();
    std::vector<char*> argv{const_cast<char*>(KEYWARDEN_DAEMON), const_cast<char*>("--config"),
                            const_cast<char*>(config.c_str()), const_cast<char*>("--port-file"),
                            const_cast<char*>(port_file.c_str())};
    for (const std::string& a : daemon_args_) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!PinTo(cpus_)) _exit(126);
    execv(KEYWARDEN_DAEMON, argv.data());
    _exit(127);
  }
  replicas_.push_back({pid, 0});
  for (int i = 0; i < 1200; ++i) {
    std::string text = Slurp(port_file);
    if (!text.empty() && text.back() == '\n') {
      replicas_.back().port = std::stoi(text);
      return n;
    }
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      replicas_.back().pid = -1;
      return absl::InternalError(StrCat("replica ", n, " exited at start:\n", Slurp(log)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError(
      StrCat("replica ", n, " did not start in 60 s:\n", Slurp(log)));
}

absl::Status DaemonHarness::StopReplica(int n, int sig) {
  Replica& r = replicas_.at(static_cast<size_t>(n - 1));
  if (r.pid <= 0) return absl::OkStatus();
  kill(r.pid, sig);
  int status = 0;
  for (int i = 0; i < 200; ++i) {
    if (waitpid(r.pid, &status, WNOHANG) == r.pid) {
      r.pid = -1;
      return WIFEXITED(status) && WEXITSTATUS(status) == 0
                 ? absl::OkStatus()
                 : absl::InternalError(StrCat("replica ", n, " did not exit cleanly:\n",
                                              Slurp(replica_log_path(n))));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(r.pid, SIGKILL);
  waitpid(r.pid, &status, 0);
  r.pid = -1;
  return absl::DeadlineExceededError(StrCat("replica ", n, " ignored signal ", sig, " for 10 s"));
}

DaemonHarness::~DaemonHarness() {
  for (size_t i = 0; i < replicas_.size(); ++i) (void)StopReplica(static_cast<int>(i + 1));
  (void)Stop();
}

std::shared_ptr<grpc::Channel> DaemonHarness::Channel(const std::string& who) const {
  return Channel(who, target());
}

std::shared_ptr<grpc::Channel> DaemonHarness::Channel(const std::string& who,
                                                      const std::string& to) const {
  grpc::SslCredentialsOptions tls;
  tls.pem_root_certs = Slurp(tls_ca_path());
  if (who != "anonymous") {
    const ClientIdentity& id = clients_.at(who);
    tls.pem_cert_chain = Slurp(id.cert_path);
    tls.pem_private_key = Slurp(id.key_path);
  }
  grpc::ChannelArguments args;
  args.SetSslTargetNameOverride("localhost");
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 200);
  return grpc::CreateCustomChannel(to, grpc::SslCredentials(tls), args);
}

std::string DaemonHarness::SqlCommand(const std::string& sql) const {
  auto quote = [](const std::string& v) {
    std::string out = "'";
    for (char c : v) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
  };
  if (pg_)
    return StrCat("psql -X -q -At -v ON_ERROR_STOP=1 ", quote(pg_->conninfo()), " -c ", quote(sql));
  return StrCat("sqlite3 -cmd '.timeout 10000' ", quote(db_path()), " ", quote(sql));
}

}  // namespace keywarden::testing
