// keywardend and its signals, end to end on a real daemon: SIGHUP reloads
// (KRA files, the TLS server certificate, key and client CAs) without
// dropping connections; a broken replacement keeps the old certificate;
// SIGTERM and SIGINT stop with service.stopped.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <gtest/gtest.h>
#include <openssl/bn.h>
#include <openssl/pem.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"
#include "tests/service/soft_ca.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;
using nlohmann::json;

std::string Slurp(const std::string& path) {
  const auto bytes = ReadFile(path);
  return std::string(bytes.begin(), bytes.end());
}

ossl::UniquePtr<X509> ParsePem(const std::string& pem) {
  ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  return ossl::UniquePtr<X509>(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr));
}

std::string DerOf(const std::string& pem) {
  auto cert = ParsePem(pem);
  if (!cert) return {};
  unsigned char* der = nullptr;
  const int len = i2d_X509(cert.get(), &der);
  std::string out(reinterpret_cast<char*>(der), static_cast<size_t>(len > 0 ? len : 0));
  OPENSSL_free(der);
  return out;
}

std::string SerialOf(const std::string& pem) {
  auto cert = ParsePem(pem);
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
  char* hex = BN_bn2hex(bn.get());
  std::string out = hex;
  OPENSSL_free(hex);
  return out;
}

class SignalsTest : public ::testing::Test {
 protected:
  void SetUp() override { StartDaemon(DaemonHarness::Options()); }

  void StartDaemon(const DaemonHarness::Options& options) {
    daemon_.reset();
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  // A channel of its own (no subchannel shared with other channels), so a
  // new channel means a new TLS connection.
  std::shared_ptr<grpc::Channel> NewChannel(const std::string& who) {
    grpc::SslCredentialsOptions tls;
    tls.pem_root_certs = Slurp(daemon_->tls_ca_path());
    tls.pem_cert_chain = Slurp(daemon_->client(who).cert_path);
    tls.pem_private_key = Slurp(daemon_->client(who).key_path);
    grpc::ChannelArguments args;
    args.SetSslTargetNameOverride("localhost");
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    return grpc::CreateCustomChannel(daemon_->target(), grpc::SslCredentials(tls), args);
  }

  // One call on `channel`; returns the server certificate (PEM) of the
  // connection it went over, as the client saw it in the handshake.
  std::string ServerCertificateSeenOn(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::Enrollment::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CertificateChain out;
    auto st = stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    if (!st.ok()) return {};
    auto auth = ctx.auth_context();
    auto pems = auth->FindPropertyValues("x509_pem_cert");
    EXPECT_EQ(pems.size(), 1u);
    if (pems.empty()) return {};
    return std::string(pems.front().data(), pems.front().size());
  }

  // The audit records of one event, read by the auditor over the API.
  std::vector<v1::AuditRecord> AuditRecords(const std::string& event) {
    auto audit = v1::Audit::NewStub(NewChannel("auditor"));
    grpc::ClientContext ctx;
    v1::ReadAuditResponse records;
    auto st = audit->ReadAudit(&ctx, v1::ReadAuditRequest(), &records);
    EXPECT_TRUE(st.ok()) << st.error_message();
    std::vector<v1::AuditRecord> out;
    for (const auto& r : records.records()) {
      if (r.event() == event) out.push_back(r);
    }
    return out;
  }

  bool DaemonRunning() {
    int status = 0;
    return daemon_->pid() > 0 && waitpid(daemon_->pid(), &status, WNOHANG) == 0;
  }

  // Replaces the configured server certificate and key the way an operator
  // should: written beside, then renamed over the old files.
  void Replace(const std::string& cert_pem, const std::string& key_pem) {
    WriteFile(daemon_->server_cert_path() + ".new", cert_pem);
    WriteFile(daemon_->server_key_path() + ".new", key_pem);
    ASSERT_EQ(std::rename((daemon_->server_cert_path() + ".new").c_str(),
                          daemon_->server_cert_path().c_str()),
              0);
    ASSERT_EQ(std::rename((daemon_->server_key_path() + ".new").c_str(),
                          daemon_->server_key_path().c_str()),
              0);
  }

  // The server certificate as `openssl s_client` sees it on a new connection.
  CommandResult OpensslServerCertificate() {
    const auto& id = daemon_->client("enrollee");
    return RunCommand("openssl s_client -connect " + daemon_->target() + " -servername localhost" +
                      " -alpn h2 -CAfile " + daemon_->tls_ca_path() + " -verify_return_error" +
                      " -cert " + id.cert_path + " -key " + id.key_path +
                      " </dev/null 2>/dev/null | openssl x509 -noout -subject -serial");
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(SignalsTest, SighupReloadsKeepsServingAndSaysWhatItReloaded) {
  auto open_channel = NewChannel("enrollee");
  ASSERT_FALSE(ServerCertificateSeenOn(open_channel).empty());

  for (int round = 1; round <= 2; ++round) {
    ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
    ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", round).ok());
    EXPECT_TRUE(DaemonRunning()) << Slurp(daemon_->log_path());
    // The open connection and new ones are served.
    EXPECT_FALSE(ServerCertificateSeenOn(open_channel).empty()) << "round " << round;
    EXPECT_FALSE(ServerCertificateSeenOn(NewChannel("enrollee")).empty()) << "round " << round;
  }

  const auto records = AuditRecords("service.reloaded");
  ASSERT_EQ(records.size(), 2u);
  for (const auto& r : records) {
    EXPECT_EQ(r.principal(), "system (SIGHUP)");
    const json details = json::parse(r.details());
    EXPECT_EQ(details.at("signal"), "SIGHUP");
    EXPECT_TRUE(details.at("failed").empty()) << r.details();
    // The harness configures no KRA, one client CA file holding one
    // certificate and its CRL (empty), and a server certificate for
    // CN=localhost.
    const auto& reloaded = details.at("reloaded");
    ASSERT_EQ(reloaded.size(), 5u) << r.details();
    EXPECT_EQ(reloaded[0], "KRA certificates and CRLs (0 of 0 valid)");
    EXPECT_EQ(reloaded[1], "client CAs for roles and revocation: 1 certificate(s) from 1 file(s)");
    EXPECT_TRUE(reloaded[2].get<std::string>().starts_with("client CRL " + daemon_->tls_crl_path() +
                                                           ": CN=keywarden test TLS CA, 0 revoked"))
        << r.details();
    EXPECT_TRUE(
        reloaded[3].get<std::string>().starts_with("TLS server certificate CN=localhost (serial "))
        << r.details();
    EXPECT_EQ(reloaded[4], "client CAs (1 certificate from 1 file)");
  }
  EXPECT_EQ(AuditRecords("kra.reload_requested").size(), 2u);
  EXPECT_TRUE(AuditRecords("service.stopped").empty());  // SIGHUP did not stop it
}

TEST_F(SignalsTest, SighupServesANewServerCertificateToNewConnectionsOnly) {
  const std::string old_pem = Slurp(daemon_->server_cert_path());
  auto open_channel = NewChannel("officer");
  ASSERT_EQ(DerOf(ServerCertificateSeenOn(open_channel)), DerOf(old_pem));

  // A new pair from the same TLS CA, with a subject of its own.
  const std::string cert = tmp_.File("new.pem"), key = tmp_.File("new.key");
  ASSERT_TRUE(daemon_->IssueServerCertificate("CN=localhost,O=reloaded", cert, key).ok());
  const std::string new_pem = Slurp(cert);
  ASSERT_NE(DerOf(new_pem), DerOf(old_pem));
  Replace(new_pem, Slurp(key));

  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 1).ok());

  // A new connection gets the new certificate: through gRPC ...
  EXPECT_EQ(DerOf(ServerCertificateSeenOn(NewChannel("enrollee"))), DerOf(new_pem));
  // ... and through openssl s_client.
  const auto seen = OpensslServerCertificate();
  EXPECT_EQ(seen.exit_code, 0) << seen.output;
  EXPECT_NE(seen.output.find("O = reloaded"), std::string::npos) << seen.output;
  EXPECT_NE(seen.output.find("serial=" + SerialOf(new_pem)), std::string::npos) << seen.output;
  // The connection opened before keeps working, over the same connection
  // (a reconnect would have shown the new certificate).
  EXPECT_EQ(DerOf(ServerCertificateSeenOn(open_channel)), DerOf(old_pem));

  const auto records = AuditRecords("service.reloaded");
  ASSERT_EQ(records.size(), 1u);
  const json details = json::parse(records[0].details());
  EXPECT_TRUE(details.at("failed").empty()) << records[0].details();
  EXPECT_NE(records[0].details().find("TLS server certificate CN=localhost,O=reloaded (serial " +
                                      SerialOf(new_pem) + ","),
            std::string::npos)
      << records[0].details();
}

TEST_F(SignalsTest, ABrokenReplacementKeepsTheOldCertificateAndSaysSo) {
  const std::string old_pem = Slurp(daemon_->server_cert_path());
  const std::string old_key = Slurp(daemon_->server_key_path());
  auto open_channel = NewChannel("enrollee");
  ASSERT_EQ(DerOf(ServerCertificateSeenOn(open_channel)), DerOf(old_pem));
  const std::string cert = tmp_.File("other.pem"), key = tmp_.File("other.key");
  ASSERT_TRUE(daemon_->IssueServerCertificate("CN=localhost,O=other", cert, key).ok());
  const std::string other_pem = Slurp(cert), other_key = Slurp(key);

  struct Case {
    const char* name;
    std::string cert_pem, key_pem;
    std::string why;  // expected in the reason
  };
  const std::vector<Case> cases = {
      {"a new certificate with the old key", other_pem, old_key,
       "TLS key " + daemon_->server_key_path() + " does not match the certificate in " +
           daemon_->server_cert_path()},
      {"garbage certificate", "this is not a certificate\n", old_key,
       "TLS certificate: " + daemon_->server_cert_path() + ": no PEM certificate in it"},
      {"garbage key", other_pem, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
       "TLS key " + daemon_->server_key_path() + ": not an unencrypted PEM private key"},
      {"empty key", other_pem, "",
       "TLS key " + daemon_->server_key_path() + ": not an unencrypted PEM private key"},
  };
  int failures = 0;
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    Replace(c.cert_pem, c.key_pem);
    ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
    ++failures;
    ASSERT_TRUE(daemon_->WaitForLog(" -- FAILED: TLS server certificate", failures).ok());
    EXPECT_TRUE(DaemonRunning());
    // New connections still get the old certificate; the open one works.
    EXPECT_EQ(DerOf(ServerCertificateSeenOn(NewChannel("enrollee"))), DerOf(old_pem));
    EXPECT_EQ(DerOf(ServerCertificateSeenOn(open_channel)), DerOf(old_pem));

    const auto records = AuditRecords("service.reloaded");
    ASSERT_EQ(records.size(), static_cast<size_t>(failures));
    const json details = json::parse(records.back().details());
    ASSERT_EQ(details.at("failed").size(), 1u) << records.back().details();
    const std::string failed = details.at("failed")[0];
    EXPECT_NE(failed.find("TLS server certificate and client CAs not reloaded: " + c.why),
              std::string::npos)
        << failed;
    EXPECT_NE(failed.find("still serving TLS server certificate CN=localhost (serial " +
                          SerialOf(old_pem)),
              std::string::npos)
        << failed;
    // The KRA part (and the door's client CAs and CRLs) was still reloaded.
    ASSERT_EQ(details.at("reloaded").size(), 3u) << records.back().details();
    EXPECT_EQ(details.at("reloaded")[0], "KRA certificates and CRLs (0 of 0 valid)");
  }
  // Neither key ever reaches the log.
  const std::string log = Slurp(daemon_->log_path());
  EXPECT_EQ(log.find("PRIVATE KEY"), std::string::npos);
  for (const std::string& k : {old_key, other_key}) {
    const std::string body = k.substr(k.find('\n') + 1, 40);
    ASSERT_EQ(body.size(), 40u);
    EXPECT_EQ(log.find(body), std::string::npos);
  }

  // Fixed files are taken at the next SIGHUP.
  Replace(other_pem, other_key);
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", failures + 1).ok());
  EXPECT_EQ(DerOf(ServerCertificateSeenOn(NewChannel("enrollee"))), DerOf(other_pem));
}

TEST_F(SignalsTest, SighupReloadsTheKraCrls) {
  // Two KRAs from another CA, trusted with its CRL file ([kra] crls).
  SoftCa kra_ca = SoftCa::Make("KRA Issuing CA");
  WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca.cert.get()));
  std::vector<SoftCa::Issued> kras;
  for (int i = 0; i < 2; ++i) {
    kras.push_back(kra_ca.Issue(StrCat("kra", i)));
    WriteFile(tmp_.File(StrCat("kra", i, ".pem")), ToPem(kras.back().cert.get()));
  }
  WriteFile(tmp_.File("kra-ca.crl"), kra_ca.Crl());
  DaemonHarness::Options options;
  options.extra_toml =
      StrCat("\n[kra]\ncertificates = [\"", tmp_.File("kra0.pem"), "\", \"", tmp_.File("kra1.pem"),
             "\"]\ncount = 1\ntrust = [\"", tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"",
             tmp_.File("kra-ca.crl"), "\"]\n");
  StartDaemon(options);

  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 1).ok());
  // The KRA CA revokes kra0 and publishes a new CRL file.
  kra_ca.revoked.push_back(kras[0].cert.get());
  WriteFile(tmp_.File("kra-ca.crl.new"), kra_ca.Crl());
  ASSERT_EQ(std::rename(tmp_.File("kra-ca.crl.new").c_str(), tmp_.File("kra-ca.crl").c_str()), 0);
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 2).ok());

  const auto records = AuditRecords("service.reloaded");
  ASSERT_EQ(records.size(), 2u);
  EXPECT_EQ(json::parse(records[0].details()).at("reloaded")[0],
            "KRA certificates and CRLs (2 of 2 valid)");
  EXPECT_EQ(json::parse(records[1].details()).at("reloaded")[0],
            "KRA certificates and CRLs (1 of 2 valid)");
}

TEST_F(SignalsTest, SighupReloadsTheClientCas) {
  // The call a client makes once its certificate passed the handshake:
  // UNAVAILABLE without an HRESULT when the handshake refused it;
  // UNAVAILABLE with CRYPT_E_REVOCATION_OFFLINE when the handshake let it in
  // and the door refused it because its CA has no CRL here.
  constexpr grpc::StatusCode kPastTheHandshake = grpc::StatusCode::FAILED_PRECONDITION;
  auto handshake = [&](const std::string& who) {
    auto stub = v1::Enrollment::NewStub(NewChannel(who));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::CertificateChain out;
    grpc::Status st = stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &out);
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE && DetailOf(st).hresult() == 0x80092013u) {
      return kPastTheHandshake;
    }
    return st.error_code();
  };
  ASSERT_EQ(handshake("untrusted"), grpc::StatusCode::UNAVAILABLE);
  const std::string client_ca = Slurp(daemon_->tls_ca_path());  // the configured client_ca file

  // The operator adds the other CA to the client CA file.
  WriteFile(daemon_->tls_ca_path() + ".new", client_ca + Slurp(daemon_->untrusted_ca_path()));
  ASSERT_EQ(std::rename((daemon_->tls_ca_path() + ".new").c_str(), daemon_->tls_ca_path().c_str()),
            0);
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 1).ok());
  EXPECT_NE(Slurp(daemon_->log_path()).find("client CAs (2 certificates from 1 file)"),
            std::string::npos)
      << Slurp(daemon_->log_path());
  // Its clients pass the handshake now, and the door refuses them until a
  // CRL of that CA is configured (revocation is never skipped silently).
  EXPECT_EQ(handshake("untrusted"), kPastTheHandshake);

  // And removes it again: new connections from its clients are refused.
  WriteFile(daemon_->tls_ca_path() + ".new", client_ca);
  ASSERT_EQ(std::rename((daemon_->tls_ca_path() + ".new").c_str(), daemon_->tls_ca_path().c_str()),
            0);
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 2).ok());
  EXPECT_EQ(handshake("untrusted"), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(handshake("enrollee"), grpc::StatusCode::OK);
}

// True once the main thread of `pid` blocks `sig` (/proc/PID/status SigBlk).
bool Blocks(pid_t pid, int sig) {
  const std::string status = Slurp("/proc/" + std::to_string(pid) + "/status");
  const size_t at = status.find("\nSigBlk:\t");
  if (at == std::string::npos) return false;
  const unsigned long long mask = std::stoull(status.substr(at + 9, 16), nullptr, 16);
  return (mask >> (sig - 1)) & 1;
}

TEST_F(SignalsTest, ASighupDuringStartUpIsHandledOnceTheDaemonServes) {
  bool sent = false, was_serving = true;
  DaemonHarness::Options options;
  options.while_starting = [&](const DaemonHarness& starting) {
    // As soon as keywardend's main has blocked SIGHUP (before that, the
    // default action would end any program), while it still opens the token
    // and the CA.
    for (int i = 0; i < 50000 && !Blocks(starting.pid(), SIGHUP); ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    if (!Blocks(starting.pid(), SIGHUP)) return;
    was_serving = !Slurp(starting.port_file_path()).empty();
    sent = kill(starting.pid(), SIGHUP) == 0;
  };
  StartDaemon(options);
  ASSERT_TRUE(sent);
  EXPECT_FALSE(was_serving);
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 1).ok());
  EXPECT_TRUE(DaemonRunning());
  EXPECT_EQ(AuditRecords("service.reloaded").size(), 1u);
  EXPECT_FALSE(ServerCertificateSeenOn(NewChannel("enrollee")).empty());
}

TEST_F(SignalsTest, SigtermAndSigintStopCleanlyWithServiceStopped) {
  // The last audit record after each stop, read from the database file.
  auto last_record = [&] {
    return RunCommand("sqlite3 " + daemon_->db_path() +
                      " \"SELECT principal || '|' || event || '|' || details FROM audit"
                      " ORDER BY seq DESC LIMIT 1\"");
  };
  ASSERT_TRUE(daemon_->Stop(SIGINT).ok());  // exit status 0
  auto r = last_record();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "system|service.stopped|{\"signal\":\"SIGINT\"}\n");
  EXPECT_TRUE(daemon_->WaitForLog("keywardend: SIGINT received, stopping", 1).ok());

  ASSERT_TRUE(daemon_->Restart().ok());
  ASSERT_FALSE(ServerCertificateSeenOn(NewChannel("enrollee")).empty());
  ASSERT_TRUE(daemon_->Stop(SIGTERM).ok());
  r = last_record();
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "system|service.stopped|{\"signal\":\"SIGTERM\"}\n");
  EXPECT_TRUE(daemon_->WaitForLog("keywardend: SIGTERM received, stopping", 1).ok());
}

TEST_F(SignalsTest, AStopSignalAfterAReloadStillStopsCleanly) {
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->Signal(SIGTERM).ok());
  ASSERT_TRUE(daemon_->Stop(SIGTERM).ok());  // exit status 0
  auto r = RunCommand("sqlite3 " + daemon_->db_path() +
                      " \"SELECT event FROM audit WHERE event IN ('service.reloaded',"
                      " 'service.stopped') ORDER BY seq\"");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "service.reloaded\nservice.stopped\n");
}

// SIGTERM with clients connected (an idle connection, and a backup stream
// the client stopped reading) stops promptly: the figure is printed; the
// bound asserted is generous (a loaded machine), the aim is < 2 s.
TEST_F(SignalsTest, SigtermWithClientsConnectedStopsPromptly) {
  DaemonHarness::Options options;
  options.extra_toml = "\n[metrics]\nlisten = \"127.0.0.1:0\"\n";
  ASSERT_NO_FATAL_FAILURE(StartDaemon(options));
  // An idle connection: one call made, the channel kept.
  auto idle = NewChannel("enrollee");
  ASSERT_FALSE(ServerCertificateSeenOn(idle).empty());
  // A server stream the client does not read to its end.
  auto backup_channel = NewChannel("backup");
  auto stub = v1::Backup::NewStub(backup_channel);
  grpc::ClientContext ctx;
  auto reader = stub->BackupDatabase(&ctx, v1::BackupDatabaseRequest());
  v1::BackupChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  const auto start = std::chrono::steady_clock::now();
  ASSERT_TRUE(daemon_->Stop(SIGTERM).ok());  // exit status 0
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("SIGTERM to exit: %.3f s\n", seconds);
  EXPECT_LT(seconds, 10.0);
  EXPECT_TRUE(daemon_->WaitForLog("keywardend: stopped", 1).ok());
  ctx.TryCancel();
  auto r = RunCommand("sqlite3 " + daemon_->db_path() +
                      " \"SELECT event FROM audit ORDER BY seq DESC LIMIT 1\"");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "service.stopped\n");
}

}  // namespace
}  // namespace keywarden::testing
