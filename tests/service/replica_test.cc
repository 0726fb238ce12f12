// Several keywardend replicas of one CA: two real daemons on one SQLite
// database and one SoftHSM2 token directory (BEGIN IMMEDIATE and the busy
// timeout serialize them; the same tests are meant to run on PostgreSQL).
// Exchange-key renewal and CRL publication run under store leases; the
// CLI fails over between --server targets. Figures are checked with the
// openssl command line, pkcs11-tool and the database itself.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <ctime>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "softhsm-fixtures/fixture.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/soft_ca.h"
#include "tests/service/store_peek.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

// A loopback port nothing listens on (bound, then closed).
int DeadPort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return 1;
  socklen_t len = sizeof addr;
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class ReplicaTest : public ::testing::Test {
 protected:
  void Start(DaemonHarness::Options options = {}) {
    kra_ca_ = SoftCa::Make("KRA Issuing CA");
    kra_ = kra_ca_.Issue("kra");
    WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca_.cert.get()));
    WriteFile(tmp_.File("kra-ca.crl"), kra_ca_.Crl());
    WriteFile(tmp_.File("kra.pem"), ToPem(kra_.cert.get()));
    WriteFile(tmp_.File("kra.key"), PrivateKeyPem(kra_.key.get()));
    options.extra_toml +=
        StrCat("\n[kra]\ncertificates = [\"", tmp_.File("kra.pem"), "\"]\ncount = 1\ntrust = [\"",
               tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n");
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    auto n = daemon_->StartReplica();
    ASSERT_TRUE(n.ok()) << n.status();
    ASSERT_EQ(*n, 1);
    a_ = daemon_->target();
    b_ = daemon_->replica_target(1);
  }

  CommandResult Kw(const std::string& who, const std::string& servers,
                   const std::string& args) const {
    const ClientIdentity& id = daemon_->client(who);
    return RunCommand(StrCat(KEYWARDEN_CLI, " --server ", servers, " --client-cert ", id.cert_path,
                             " --client-key ", id.key_path, " --server-ca ", daemon_->tls_ca_path(),
                             " --server-name localhost ", args, " 2>&1"));
  }

  // officer2 (kOwnCaClientsToml): a key made with openssl, a ClientAuth
  // certificate from this CA through A for root, and a client of the harness.
  void EnrolOfficer2() {
    const std::string key = daemon_->dir().File("tls/officer2.key");
    const std::string csr = tmp_.File("officer2.csr");
    auto r =
        RunCommand(StrCat("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                          "-subj '/O=keywarden test/CN=officer2' -keyout ",
                          key, " -out ", csr));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const std::string cert = daemon_->dir().File("tls/officer2.pem");
    r = Kw("root", a_, StrCat("submit ", csr, " --template ClientAuth --out ", cert));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    daemon_->AddClient("officer2", {"CN=officer2,O=keywarden test", cert, key});
  }

  // The serial (openssl's hex) of the exchange certificate `servers` hands out.
  std::string XchgSerial(const std::string& servers) {
    const std::string out = tmp_.File(StrCat("xchg-", counter_++, ".pem"));
    auto r = Kw("enrollee", servers, StrCat("ca xchg --out ", out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return SerialOf(out);
  }

  static std::string SerialOf(const std::string& pem) {
    auto r = RunCommand(StrCat("openssl x509 -noout -serial -in ", pem));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return Trim(r.output);
  }

  // openssl's crlNumber of a PEM CRL, as a number.
  static int64_t CrlNumber(const std::string& pem) {
    auto r = RunCommand(StrCat("openssl crl -noout -crlnumber -in ", pem));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    const size_t eq = r.output.find('=');
    if (eq == std::string::npos) return -1;
    return std::stoll(Trim(r.output.substr(eq + 1)), nullptr, 16);
  }

  int64_t CrlNumberFrom(const std::string& servers) {
    const std::string out = tmp_.File(StrCat("crl-", counter_++, ".pem"));
    auto r = Kw("enrollee", servers, StrCat("ca crl --out ", out));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return CrlNumber(out);
  }

  // Exchange private keys on the CA token, counted by pkcs11-tool.
  int ExchangeKeysOnToken() {
    auto r = RunCommand(StrCat("pkcs11-tool --module ", SoftHsmFixture::module_path(),
                               " --token-label keywarden-ca --login --pin \"$(cat ",
                               daemon_->tokens().PinFile("keywarden-ca"),
                               ")\" --list-objects --type privkey 2>&1"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    int n = 0;
    for (size_t at = r.output.find("keywarden-xchg-"); at != std::string::npos;
         at = r.output.find("keywarden-xchg-", at + 1)) {
      ++n;
    }
    return n;
  }

  // `keywarden audit verify` through the daemon(s): exit 0 and "intact".
  void ExpectAuditIntact(const std::string& servers) {
    auto r = Kw("auditor", servers, "audit verify");
    EXPECT_EQ(r.exit_code, 0) << r.output;
  }

  // Every archived key in the database opens with the KRA key (openssl
  // cms -decrypt) to the key of the certificate issued for it; returns
  // how many archives there are.
  size_t CheckArchivesOpenWithTheKra() {
    auto store = OpenHarnessStore(*daemon_);
    if (!store) return 0;
    auto issued = store->ListRequests(service::Disposition::kIssued, 1000);
    EXPECT_TRUE(issued.ok());
    if (!issued.ok()) return 0;
    size_t archives = 0;
    for (const auto& row : *issued) {
      if (!row.archived_key) continue;
      ++archives;
      const std::string env = tmp_.File("env.der"), plain = tmp_.File("plain.der");
      WriteFile(env, row.archived_key->envelope);
      auto dec = RunCommand(StrCat("openssl cms -decrypt -binary -inform DER -in ", env, " -recip ",
                                   tmp_.File("kra.pem"), " -inkey ", tmp_.File("kra.key"), " -out ",
                                   plain, " 2>&1"));
      EXPECT_EQ(dec.exit_code, 0) << "request " << row.id << ": " << dec.output;
      service::CertificateQuery q;
      q.request_id = row.id;
      auto certs = store->FindCertificates(q);
      EXPECT_TRUE(certs.ok() && certs->size() == 1) << "request " << row.id;
      if (!certs.ok() || certs->size() != 1) continue;
      WriteFile(tmp_.File("issued.der"), certs->front().der);
      auto from_key = RunCommand(StrCat("openssl pkey -inform DER -in ", plain, " -pubout"));
      auto from_cert = RunCommand(
          StrCat("openssl x509 -inform DER -in ", tmp_.File("issued.der"), " -noout -pubkey"));
      EXPECT_EQ(from_key.exit_code, 0) << from_key.output;
      EXPECT_EQ(from_key.output, from_cert.output) << "request " << row.id;
    }
    return archives;
  }

  TempDir tmp_;
  SoftCa kra_ca_;
  SoftCa::Issued kra_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::string a_, b_;
  int counter_ = 0;
};

TEST_F(ReplicaTest, BothServeConcurrentArchivalsAndTakeUpEachOthersExchangeRenewal) {
  ASSERT_NO_FATAL_FAILURE(Start());
  // The second replica found the exchange certificate the first made.
  const std::string first = XchgSerial(a_);
  EXPECT_EQ(XchgSerial(b_), first);
  EXPECT_EQ(ExchangeKeysOnToken(), 1);

  // Concurrent archival load through both replicas.
  constexpr int kPerReplica = 4;
  std::vector<std::thread> threads;
  std::vector<CommandResult> results(2 * kPerReplica);
  for (int i = 0; i < 2 * kPerReplica; ++i) {
    threads.emplace_back([&, i] {
      results[static_cast<size_t>(i)] =
          Kw(i % 2 == 0 ? "enrollee" : "enrollee2", i < kPerReplica ? a_ : b_,
             StrCat("request --template ArchivalUser --key-out ", tmp_.File(StrCat("k", i, ".pem")),
                    " --cert-out ", tmp_.File(StrCat("c", i, ".pem"))));
    });
  }
  for (auto& t : threads) t.join();
  std::set<std::string> serials;
  for (int i = 0; i < 2 * kPerReplica; ++i) {
    ASSERT_EQ(results[static_cast<size_t>(i)].exit_code, 0)
        << results[static_cast<size_t>(i)].output;
    const std::string cert = tmp_.File(StrCat("c", i, ".pem"));
    auto verify = RunCommand(StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ", cert));
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
    serials.insert(SerialOf(cert));
  }
  EXPECT_EQ(serials.size(), static_cast<size_t>(2 * kPerReplica));  // no serial twice
  EXPECT_EQ(CheckArchivesOpenWithTheKra(), static_cast<size_t>(2 * kPerReplica));

  // A forced renewal on A; a request built through A (so encrypted to the
  // new certificate) is submitted through B, which has not looked yet.
  const std::string renewed = tmp_.File("renewed.pem");
  auto r = Kw("admin", a_, StrCat("ca renew-xchg --out ", renewed));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string second = SerialOf(renewed);
  EXPECT_NE(second, first);
  EXPECT_EQ(XchgSerial(a_), second);
  const std::string req = tmp_.File("late.der");
  r = Kw(
      "enrollee", a_,
      StrCat("request --template ArchivalUser --out ", req, " --key-out ", tmp_.File("late.key")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  r = Kw("enrollee", b_,
         StrCat("submit ", req, " --template ArchivalUser --out ", tmp_.File("late.pem")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(RunCommand(StrCat("openssl x509 -noout -pubkey -in ", tmp_.File("late.pem"))).output,
            RunCommand(StrCat("openssl pkey -pubout -in ", tmp_.File("late.key"))).output);
  // B's `ca xchg` now hands out the new certificate too.
  EXPECT_EQ(XchgSerial(b_), second);
  EXPECT_EQ(ExchangeKeysOnToken(), 2);
  EXPECT_EQ(HarnessAuditEvents(*daemon_, "exchange.renewed").size(), 2u);
  EXPECT_EQ(CheckArchivesOpenWithTheKra(), static_cast<size_t>(2 * kPerReplica + 1));

  ExpectAuditIntact(a_);
  ExpectAuditIntact(b_);
}

// The exchange certificate falls due on both replicas at once (90 s
// validity, 60 s overlap: due 30 s after it was made) while clients ask
// both for it: exactly one new key is made, and both hand it out.
TEST_F(ReplicaTest, TwoReplicasRacingToRenewMakeExactlyOneExchangeKey) {
  DaemonHarness::Options options;
  options.exchange_validity = "90s";
  options.exchange_overlap = "60s";
  ASSERT_NO_FATAL_FAILURE(Start(options));
  ASSERT_EQ(HarnessAuditEvents(*daemon_, "exchange.renewed").size(), 1u);
  const std::string first = XchgSerial(a_);
  EXPECT_EQ(XchgSerial(b_), first);

  std::atomic<bool> stop{false};
  std::atomic<int> failures{0};
  std::vector<std::thread> askers;
  for (int i = 0; i < 4; ++i) {
    askers.emplace_back([&, i] {
      const ClientIdentity& id = daemon_->client("enrollee");
      const std::string cmd =
          StrCat(KEYWARDEN_CLI, " --server ", i % 2 == 0 ? a_ : b_, " --client-cert ", id.cert_path,
                 " --client-key ", id.key_path, " --server-ca ", daemon_->tls_ca_path(),
                 " --server-name localhost ca xchg > /dev/null 2>&1");
      while (!stop) {
        if (RunCommand(cmd).exit_code != 0) ++failures;
      }
    });
  }
  // Wait (at most 60 s) for the renewal.
  size_t renewed = 1;
  for (int i = 0; i < 600 && renewed < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    renewed = HarnessAuditEvents(*daemon_, "exchange.renewed").size();
  }
  // Keep both asking a little longer: a second renewal would show now.
  std::this_thread::sleep_for(std::chrono::seconds(3));
  stop = true;
  for (auto& t : askers) t.join();
  EXPECT_EQ(failures.load(), 0);

  const auto events = HarnessAuditEvents(*daemon_, "exchange.renewed");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(ExchangeKeysOnToken(), 2);
  const std::string second = XchgSerial(a_);
  EXPECT_NE(second, first);
  EXPECT_EQ(XchgSerial(b_), second);
  ExpectAuditIntact(b_);
}

TEST_F(ReplicaTest, CrlNumbersIncreaseAcrossReplicasAndEachServesTheNewest) {
  ASSERT_NO_FATAL_FAILURE(Start());
  // Publications through both at once, three each.
  std::vector<std::thread> threads;
  std::vector<CommandResult> results(6);
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      results[static_cast<size_t>(i)] =
          Kw("admin", i % 2 == 0 ? a_ : b_,
             StrCat("ca publish-crl --out ", tmp_.File(StrCat("p", i, ".crl"))));
    });
  }
  for (auto& t : threads) t.join();
  std::set<int64_t> numbers;
  for (int i = 0; i < 6; ++i) {
    ASSERT_EQ(results[static_cast<size_t>(i)].exit_code, 0)
        << results[static_cast<size_t>(i)].output;
    const std::string crl = tmp_.File(StrCat("p", i, ".crl"));
    auto verify = RunCommand(
        StrCat("openssl crl -noout -in ", crl, " -CAfile ", daemon_->ca_cert_path(), " 2>&1"));
    EXPECT_TRUE(Contains(verify.output, "verify OK")) << verify.output;
    numbers.insert(CrlNumber(crl));
  }
  EXPECT_EQ(numbers.size(), 6u);  // no number published twice

  // In the order they were published (the audit chain's order), the
  // numbers strictly increase, whichever replica published.
  const auto published = HarnessAuditEvents(*daemon_, "crl.published");
  // One when the first replica started (the second took that one over
  // from the store instead of publishing its own), six above.
  ASSERT_EQ(published.size(), 7u);
  int64_t last = 0;
  for (const auto& e : published) {
    const size_t at = e.details.find("\"number\":");
    ASSERT_NE(at, std::string::npos) << e.details;
    const int64_t n = std::stoll(e.details.substr(at + 9));
    EXPECT_GT(n, last) << e.details;
    last = n;
  }
  EXPECT_EQ(*numbers.rbegin(), last);

  // Both replicas serve the newest (B notices A's within a second).
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  EXPECT_EQ(CrlNumberFrom(a_), last);
  EXPECT_EQ(CrlNumberFrom(b_), last);

  // A revocation through A is on the CRL B serves.
  auto r = Kw("enrollee", a_,
              StrCat("request --template ArchivalUser --key-out ", tmp_.File("v.key"),
                     " --cert-out ", tmp_.File("v.pem")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string serial = SerialOf(tmp_.File("v.pem")).substr(7);  // "serial=" off
  r = Kw("officer", a_, StrCat("officer revoke ", serial, " --reason 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  const std::string from_b = tmp_.File("from-b.crl");
  r = Kw("enrollee", b_, StrCat("ca crl --out ", from_b));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_GT(CrlNumber(from_b), last);
  auto text = RunCommand(StrCat("openssl crl -noout -text -in ", from_b));
  EXPECT_TRUE(Contains(text.output, serial)) << text.output;
  ExpectAuditIntact(StrCat(a_, ",", b_));
}

// A client certificate this CA issued, revoked through A, is refused at
// B's door within a second (B takes the revocation over from the store).
TEST_F(ReplicaTest, AClientRevokedThroughOneReplicaIsRefusedByTheOther) {
  DaemonHarness::Options options;
  options.trust_own_ca = true;
  options.extra_clients.emplace("root", "CN=root admin,O=keywarden test");
  options.extra_toml = kOwnCaClientsToml;
  ASSERT_NO_FATAL_FAILURE(Start(options));
  ASSERT_NO_FATAL_FAILURE(EnrolOfficer2());
  const std::string cert = daemon_->dir().File("tls/officer2.pem");
  auto r = Kw("officer2", b_, "officer list");
  ASSERT_EQ(r.exit_code, 0) << r.output;

  const std::string serial = SerialOf(cert).substr(7);
  r = Kw("officer", a_, StrCat("officer revoke ", serial, " --reason 1"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  r = Kw("officer2", b_, "officer list");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "revoked")) << r.output;
  // B recorded the refusal in the one audit chain.
  const auto refused = HarnessAuditEvents(*daemon_, "authz.revoked");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_TRUE(Contains(refused[0].details, AsciiLower(serial))) << refused[0].details;
  ExpectAuditIntact(a_);
}

TEST_F(ReplicaTest, CliFailsOverToTheFirstServerThatAnswers) {
  ASSERT_NO_FATAL_FAILURE(Start());
  const std::string dead1 = StrCat("127.0.0.1:", DeadPort());
  const std::string dead2 = StrCat("127.0.0.1:", DeadPort());

  // dead,live: the answer, and nothing about the dead one.
  auto r = Kw("enrollee", StrCat(dead1, ",", a_), StrCat("ca xchg --out ", tmp_.File("x.pem")));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  for (const char* alarming :
       {"cannot reach", "error", "Error", "failed", "unavailable", dead1.c_str()}) {
    EXPECT_FALSE(Contains(r.output, alarming)) << alarming << " in: " << r.output;
  }
  // A submission too: it never reached the dead one.
  r = Kw("enrollee2", StrCat(dead1, ",", b_),
         StrCat("request --template ArchivalUser --key-out ", tmp_.File("f.key"), " --cert-out ",
                tmp_.File("f.pem")));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto verify = RunCommand(
      StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ", tmp_.File("f.pem")));
  EXPECT_EQ(verify.exit_code, 0) << verify.output;

  // A replica that stops: the other answers.
  ASSERT_TRUE(daemon_->StopReplica(1).ok());
  r = Kw("enrollee", StrCat(b_, ",", a_), StrCat("ca crl --out ", tmp_.File("after.crl")));
  EXPECT_EQ(r.exit_code, 0) << r.output;

  // None answers: the failure names each.
  r = Kw("enrollee", StrCat(dead1, ",", dead2), "ca xchg");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, dead1)) << r.output;
  EXPECT_TRUE(Contains(r.output, dead2)) << r.output;
  EXPECT_TRUE(Contains(r.output, "no keywardend answered")) << r.output;

  // A CA-side answer is not a reason to move on: an Enrollee asking for
  // the CA status is refused by the first (live) server, not passed on.
  r = Kw("enrollee", StrCat(a_, ",", dead1), "ca status");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_FALSE(Contains(r.output, dead1)) << r.output;

  // Bad lists are refused before anything is sent.
  r = Kw("enrollee", StrCat(a_, ",,", dead1), "ca xchg");
  EXPECT_EQ(r.exit_code, 2) << r.output;
  EXPECT_TRUE(Contains(r.output, "empty address")) << r.output;
  r = Kw("enrollee", StrCat(a_, ",localhost"), "ca xchg");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "--server localhost: expected HOST:PORT")) << r.output;
  ExpectAuditIntact(StrCat(b_, ",", a_));
}

// A replica starting up must not fail a request another replica is
// processing right now: only requests in process for longer than any
// request takes (10 minutes) are failed as interrupted.
TEST_F(ReplicaTest, AStartingReplicaFailsOnlyRequestsInProcessForLong) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto store = OpenHarnessStore(*daemon_);
  ASSERT_TRUE(store);
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  auto insert = [&](int64_t submitted_at) {
    service::RequestRecord r;
    r.requester = daemon_->client("enrollee").principal;
    r.template_name = "User";
    r.format = "pkcs10";
    r.raw = {0x30, 0x00};
    r.disposition = service::Disposition::kPending;
    r.disposition_message = service::kRequestInProcess;
    r.submitted_at = submitted_at;
    auto id = store->InsertRequest(r);
    EXPECT_TRUE(id.ok()) << id.status();
    return id.value_or(0);
  };
  const int64_t young = insert(now - 5);    // as if replica A were processing it
  const int64_t stale = insert(now - 700);  // left by a replica killed long ago
  auto n = daemon_->StartReplica();
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(Trim(RunCommand(daemon_->SqlCommand(
                                StrCat("SELECT disposition FROM requests WHERE id = ", young)))
                     .output),
            "9");
  EXPECT_EQ(Trim(RunCommand(daemon_->SqlCommand(
                                StrCat("SELECT disposition FROM requests WHERE id = ", stale)))
                     .output),
            "30");
}

// Every replica serves the newest CRL at the publication URLs (read from
// the shared database), and a certificateHold released through one replica
// lets the client in at the other's door and leaves the CRL both serve.
TEST_F(ReplicaTest, BothServeTheNewestCrlAndAHoldReleasedThroughOneIsLiftedAtTheOther) {
  DaemonHarness::Options options;
  options.trust_own_ca = true;
  options.extra_clients.emplace("root", "CN=root admin,O=keywarden test");
  // Port 0: each replica on this host listens where it can (the log says
  // where); in production each replica is a host of its own behind the URL.
  options.extra_toml = R"(
[publication]
listen = "127.0.0.1:0"
crl_urls = ["http://pki.example.com/pki/ca.crl"]
ca_issuers_urls = ["http://pki.example.com/pki/ca.crt"]
)" + std::string(kOwnCaClientsToml);
  ASSERT_NO_FATAL_FAILURE(Start(options));
  auto listener = [](const std::string& log_path) {
    const std::string log = Trim(RunCommand("cat " + log_path).output);
    const size_t at = log.find("publication");
    const size_t url = log.find("http://127.0.0.1:", at == std::string::npos ? 0 : at);
    if (at == std::string::npos || url == std::string::npos) return std::string();
    size_t end = url + 17;
    while (end < log.size() && std::isdigit(static_cast<unsigned char>(log[end])) != 0) ++end;
    return log.substr(url, end - url);
  };
  const std::string http_a = listener(daemon_->log_path());
  const std::string http_b = listener(daemon_->replica_log_path(1));
  ASSERT_FALSE(http_a.empty());
  ASSERT_FALSE(http_b.empty());
  ASSERT_NE(http_a, http_b);
  // The CRL each one serves, as openssl reads it (PEM written by openssl).
  auto served = [&](const std::string& base) {
    const std::string der = tmp_.File(StrCat("served-", counter_++, ".crl"));
    auto r = RunCommand(StrCat("curl -sf -m 10 -o ", der, " ", base, "/pki/ca.crl"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return RunCommand(StrCat("openssl crl -inform DER -noout -text -in ", der)).output;
  };

  // officer2: a client certificate from this CA, let in at B.
  ASSERT_NO_FATAL_FAILURE(EnrolOfficer2());
  const std::string cert = daemon_->dir().File("tls/officer2.pem");
  auto r = Kw("officer2", b_, "officer list");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string serial = SerialOf(cert).substr(7);

  // Held through A: refused at B, listed by both.
  r = Kw("officer", a_, StrCat("officer revoke ", serial, " --reason certificateHold"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  r = Kw("officer2", b_, "officer list");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(served(http_a), "Serial Number: " + serial));
  EXPECT_TRUE(Contains(served(http_b), "Serial Number: " + serial));

  // Released through A: let in at B again, listed by neither.
  r = Kw("officer", a_, StrCat("officer unrevoke ", serial));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  r = Kw("officer2", b_, "officer list");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  const std::string from_a = served(http_a), from_b = served(http_b);
  EXPECT_FALSE(Contains(from_a, serial)) << from_a;
  EXPECT_FALSE(Contains(from_b, serial)) << from_b;
  EXPECT_TRUE(Contains(from_b, "No Revoked Certificates")) << from_b;
  ExpectAuditIntact(StrCat(a_, ",", b_));
}

}  // namespace
}  // namespace keywarden::testing
