// Token faults and crashes, end to end: a real keywardend on real SoftHSM2
// tokens. The token is taken away under load (its directory renamed, as an
// operator or a failing disk would) and brought back; a crash is left in
// the database the way a kill -9 mid-processing leaves it.
#include <stdlib.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <functional>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "keywarden/v1/signing.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/private_key_blob.h"
#include "service/storage/store.h"
#include "tests/pg_test_util.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

// What one call under load answered.
enum class Outcome { kIssued, kUnavailable, kUnclear, kOther };

class TokenFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonHarness::Options options;
    options.extra_toml = kKraTemplateToml;
    options.before_launch = [](DaemonHarness& h) { return AddSigningKey(h); };
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  // A delegated signing key "rsa" on the CA token for the signer.
  static absl::Status AddSigningKey(DaemonHarness& h) {
    auto r = RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                               KEYWARDEN_CLI, " ceremony root --token pkcs11:token=keywarden-ca",
                               " --pin-source file:", h.tokens().PinFile("keywarden-ca"),
                               " --key-label sign-rsa --key-algorithm rsa2048",
                               " --subject 'CN=Delegated RSA,O=keywarden test' --out ",
                               h.dir().File("sign-rsa.pem")));
    if (r.exit_code != 0) return absl::InternalError("ceremony sign-rsa: " + r.output);
    std::ofstream f(h.config_path(), std::ios::app);
    f << "\n[[signing.keys]]\nalias = \"rsa\"\n"
      << "key = \"pkcs11:token=keywarden-ca;object=sign-rsa;type=private\"\n"
      << "algorithms = [\"rsa-pkcs1-sha256\"]\nprincipals = [\""
      << "CN=signer,O=keywarden test"
      << "\"]\n";
    return f.good() ? absl::OkStatus() : absl::InternalError("append to the configuration");
  }

  std::string MakeCsr(const std::string& subject) {
    const std::string key = tmp_.File("req.key"), csr = tmp_.File("req.der");
    auto r = RunCommand("openssl req -new -newkey rsa:2048 -nodes -subj '" + subject +
                        "' -keyout " + key + " -outform DER -out " + csr);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto der = ReadFile(csr);
    return std::string(der.begin(), der.end());
  }

  grpc::Status Submit(const std::string& request, const std::string& tmpl,
                      v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SubmitRequest in;
    in.set_request(request);
    in.set_template_name(tmpl);
    return stub->Submit(&ctx, in, out);
  }

  // Windows-format archival requests for the enrollee, each with its own
  // key (one key is certified to one owner once), encrypted to the
  // current exchange certificate.
  std::vector<std::string> ArchivalRequests(int n) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CertificateChain chain;
    grpc::Status st =
        stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain);
    EXPECT_TRUE(st.ok()) << st.error_message();
    const auto* p = reinterpret_cast<const unsigned char*>(chain.certificate().data());
    ossl::UniquePtr<X509> exchange(
        d2i_X509(nullptr, &p, static_cast<long>(chain.certificate().size())));
    EXPECT_NE(exchange, nullptr);
    std::vector<std::string> out;
    if (!exchange) return out;
    for (int i = 0; i < n; ++i) {
      ossl::UniquePtr<EVP_PKEY> key;
      const std::string csr = MakeRequestDer("enrollee", 2048, &key);
      auto blob = pki::SerializePrivateKeyBlob(key.get(), pki::kCalgRsaKeyx);
      EXPECT_TRUE(blob.ok()) << blob.status();
      if (!blob.ok()) return out;
      ArchivalPart part;
      part.encrypted_key = EncryptToExchange(
          std::string(reinterpret_cast<const char*>(blob->data()), blob->size()), exchange.get());
      part.hash = Sha1Of(part.encrypted_key);
      out.push_back(MakeCmcDer(csr, key.get(), &part));
    }
    return out;
  }

  // One archival submission while daemons are being killed: true when it
  // was issued (its id appended to `acknowledged`). Killed mid-call or the
  // database restarting gives UNAVAILABLE or a deadline (the CA's fault);
  // any other answer goes to `wrong`. Both lists are guarded by `mu`.
  static bool SubmitArchivalUnderKills(const std::shared_ptr<grpc::Channel>& channel,
                                       const std::string& request, int deadline_seconds,
                                       std::mutex& mu, std::vector<int64_t>& acknowledged,
                                       std::vector<std::string>& wrong) {
    auto stub = v1::Enrollment::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(deadline_seconds));
    v1::SubmitRequest in;
    in.set_request(request);
    in.set_template_name("ArchivalUser");
    v1::EnrollmentResult r;
    grpc::Status s = stub->Submit(&ctx, in, &r);
    const bool issued = s.ok() && r.disposition() == v1::DISPOSITION_ISSUED;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (issued) {
        acknowledged.push_back(r.request_id());
      } else if (s.error_code() != grpc::StatusCode::UNAVAILABLE &&
                 s.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED) {
        wrong.push_back(StrCat(static_cast<int>(s.error_code()), " ", s.error_message(),
                               " disposition ", static_cast<int>(r.disposition())));
      }
    }
    if (!s.ok()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return issued;
  }

  static Outcome Classify(const grpc::Status& s, bool issued, std::string* why) {
    if (s.ok() && issued) return Outcome::kIssued;
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
      if (s.error_message().find("HSM unavailable") != std::string::npos) {
        return Outcome::kUnavailable;
      }
      *why = s.error_message();
      return Outcome::kUnclear;
    }
    *why = StrCat(static_cast<int>(s.error_code()), " ", s.error_message());
    return Outcome::kOther;
  }

  // One value from the database, read with its own command-line client
  // (sqlite3 or psql).
  std::string Sql(const std::string& query) {
    auto r = RunCommand(daemon_->SqlCommand(query));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string out = r.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
  }

  std::string TokenDir() const { return daemon_->tokens().dir() + "/tokens"; }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

// Every operation that needs the CA token, each from its own client, while
// the token directory is taken away for 1.5 s and brought back: enrolment
// (PKCS#10, CA signature), key archival (exchange-key decryption, a fresh
// key on the token, CA signature) and delegated signing.
TEST_F(TokenFaultTest, TokenTakenAwayUnderLoadIsUnavailableNeverDeniedAndBackWithoutRestart) {
  auto kra = EnrollKraCard(*daemon_, "kra-card-1");
  ASSERT_TRUE(kra.ok()) << kra.status();
  ASSERT_TRUE(UseKras(*daemon_, {pki::Sha1Thumbprint(kra->get())}, 1).ok());
  const std::string csr = MakeCsr("/CN=load/O=keywarden test");
  const std::vector<std::string> archival = ArchivalRequests(40);
  ASSERT_EQ(archival.size(), 40u);
  const std::string digest(32, '\x5a');

  struct Kind {
    const char* name = "";
    std::function<Outcome(size_t* next, std::string* why)> call;
    int ok = 0, ok_after_restore = 0, unavailable = 0;
    std::vector<std::string> unexpected, unclear;
  };
  std::vector<Kind> kinds;
  auto add = [&kinds](const char* name, std::function<Outcome(size_t*, std::string*)> call) {
    Kind k;
    k.name = name;
    k.call = std::move(call);
    kinds.push_back(std::move(k));
  };
  add("enrolment", [&](size_t*, std::string* why) {
    v1::EnrollmentResult r;
    grpc::Status s = Submit(csr, "User", &r);
    return Classify(s, r.disposition() == v1::DISPOSITION_ISSUED, why);
  });
  add("archival", [&](size_t* next, std::string* why) {
    if (*next >= archival.size()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      return Outcome::kUnavailable;  // none left: idle, counts nothing
    }
    v1::EnrollmentResult r;
    grpc::Status s = Submit(archival[*next], "ArchivalUser", &r);
    const Outcome o = Classify(s, r.disposition() == v1::DISPOSITION_ISSUED, why);
    if (o == Outcome::kIssued) ++*next;  // a refused one is sent again
    return o;
  });
  add("signing", [&](size_t*, std::string* why) {
    auto stub = v1::Signing::NewStub(daemon_->Channel("signer"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SignDigestRequest in;
    in.set_alias("rsa");
    in.set_algorithm(v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256);
    in.set_digest(digest);
    v1::SignResponse out;
    grpc::Status s = stub->SignDigest(&ctx, in, &out);
    return Classify(s, !out.signature().empty(), why);
  });

  // Each kind works before the outage.
  for (Kind& k : kinds) {
    size_t next = 0;
    std::string why;
    ASSERT_EQ(k.call(&next, &why), Outcome::kIssued) << k.name << ": " << why;
  }
  ASSERT_EQ(HealthOf(daemon_->Channel("nobody")), 1);
  const pid_t pid = daemon_->pid();

  std::atomic<bool> stop{false};
  std::atomic<bool> restored{false};
  std::mutex mu;
  std::vector<std::thread> clients;
  std::vector<size_t> next(kinds.size(), 0);
  next[1] = 1;  // the first archival request was used above
  for (size_t i = 0; i < kinds.size(); ++i) {
    clients.emplace_back([&, i] {
      Kind& k = kinds[i];
      while (!stop.load()) {
        const size_t before = next[i];
        std::string why;
        const Outcome o = k.call(&next[i], &why);
        const bool after = restored.load();
        std::lock_guard<std::mutex> lock(mu);
        switch (o) {
          case Outcome::kIssued:
            ++k.ok;
            if (after) ++k.ok_after_restore;
            break;
          case Outcome::kUnavailable:
            if (i != 1 || before < archival.size()) ++k.unavailable;
            break;
          case Outcome::kUnclear:
            k.unclear.push_back(why);
            break;
          case Outcome::kOther:
            k.unexpected.push_back(why);
            break;
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::string away = TokenDir() + ".away";
  ASSERT_EQ(std::rename(TokenDir().c_str(), away.c_str()), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  // Down: health says so while the token is away.
  int health_down = -1;
  for (int i = 0; i < 40 && health_down != 2; ++i) {
    health_down = HealthOf(daemon_->Channel("nobody"));
    if (health_down != 2) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health_down, 2) << "health while the token is away";
  ASSERT_EQ(std::rename(away.c_str(), TokenDir().c_str()), 0);
  restored = true;
  // Service resumes without a restart, for every kind.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    bool all = true;
    {
      std::lock_guard<std::mutex> lock(mu);
      for (const Kind& k : kinds) all = all && k.ok_after_restore >= 3;
    }
    if (all || std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(daemon_->pid(), pid);
  EXPECT_EQ(kill(pid, 0), 0) << "keywardend is not running";

  int unavailable = 0;
  for (const Kind& k : kinds) {
    std::fprintf(stderr, "%s: ok %d (after restore %d), unavailable %d\n", k.name, k.ok,
                 k.ok_after_restore, k.unavailable);
    EXPECT_GE(k.ok_after_restore, 3) << k.name << ": no service after the token came back";
    EXPECT_TRUE(k.unexpected.empty())
        << k.name << ": " << k.unexpected.size()
        << " unexpected answers, first: " << (k.unexpected.empty() ? "" : k.unexpected[0]);
    EXPECT_TRUE(k.unclear.empty())
        << k.name << ": " << k.unclear.size()
        << " unclear, first: " << (k.unclear.empty() ? "" : k.unclear[0]);
    unavailable += k.unavailable;
  }
  EXPECT_GT(unavailable, 0) << "nothing failed while the token was away";
  int health_up = -1;
  for (int i = 0; i < 100 && health_up != 1; ++i) {
    health_up = HealthOf(daemon_->Channel("nobody"));
    if (health_up != 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health_up, 1) << "health after recovery";

  // Nothing denied for it; what hit the fault is failed with the CA's reason.
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE disposition = 31"), "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM audit WHERE event = 'request.denied'"), "0");
  const std::string failed_unclear =
      Sql("SELECT count(*) FROM requests WHERE disposition = 30 AND "
          "disposition_message NOT LIKE '%HSM unavailable%'");
  EXPECT_EQ(failed_unclear, "0") << Sql(
      "SELECT disposition_message FROM requests WHERE disposition = 30 LIMIT 3");
  // Every archival issued has its key archived; none is issued without.
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE template_name = 'ArchivalUser' AND "
                "disposition = 20 AND archived_key IS NULL"),
            "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE template_name = 'ArchivalUser' AND "
                "disposition = 20"),
            std::to_string(next[1]));
  // Outage then recovery, in that order, in the audit log.
  const std::string down = Sql("SELECT min(seq) FROM audit WHERE event = 'hsm.unavailable'");
  const std::string up = Sql("SELECT max(seq) FROM audit WHERE event = 'hsm.recovered'");
  ASSERT_FALSE(down.empty()) << "no hsm.unavailable record";
  ASSERT_FALSE(up.empty()) << "no hsm.recovered record";
  EXPECT_LT(std::stoll(down), std::stoll(up));
  std::fprintf(stderr, "%s\n", Sql("SELECT details FROM audit WHERE event LIKE 'hsm.%'").c_str());
}

// keywardend on the fault module (tests/hsm/fault_module.cc): SoftHSM2
// underneath, with the token failing at exactly the call a plan names.
class TokenStepFaultTest : public TokenFaultTest {
 protected:
  void SetUp() override {
    plan_ = plan_dir_.File("plan");
    WritePlan("");
    setenv("KEYWARDEN_FAULT_PLAN", plan_.c_str(), 1);  // keywardend inherits it
    setenv("KEYWARDEN_FAULT_TARGET", SoftHsmFixture::module_path().c_str(), 1);
    DaemonHarness::Options options;
    options.extra_toml = kKraTemplateToml;
    options.module = KEYWARDEN_FAULT_MODULE;
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }
  void TearDown() override {
    daemon_.reset();
    unsetenv("KEYWARDEN_FAULT_PLAN");
    unsetenv("KEYWARDEN_FAULT_TARGET");
  }

  // Replaces the plan atomically (the module reads it at every call).
  void WritePlan(const std::string& text) {
    const std::string tmp = plan_ + ".tmp";
    {
      std::ofstream f(tmp, std::ios::trunc);
      f << text;
    }
    ASSERT_EQ(std::rename(tmp.c_str(), plan_.c_str()), 0);
  }
  // The faults injected since the last call, one line each.
  std::vector<std::string> TakeFired() {
    std::vector<std::string> out;
    std::ifstream f(plan_ + ".fired");
    for (std::string line; std::getline(f, line);) out.push_back(line);
    std::remove((plan_ + ".fired").c_str());
    return out;
  }

  TempDir plan_dir_;
  std::string plan_;
};

// The token fails (CKR_DEVICE_ERROR) at one exact step of an archival, one
// step per request: the exchange key's decryption, the fresh key the archive
// is encrypted under, the certificate's signature and the CMC response's
// signature. Each time the client hears UNAVAILABLE ("HSM unavailable"), the
// request is failed with the CA's reason, nothing is issued or archived for
// it -- and the very same request goes through once the token is back (had
// the issuance been committed before the response was signed, it would be
// refused as a replay of an archived key).
TEST_F(TokenStepFaultTest, ArchivalFailingAtEachTokenStepIsTheCasFaultAndCanBeSentAgain) {
  auto kra = EnrollKraCard(*daemon_, "kra-card-1");
  ASSERT_TRUE(kra.ok()) << kra.status();
  ASSERT_TRUE(UseKras(*daemon_, {pki::Sha1Thumbprint(kra->get())}, 1).ok());
  struct Step {
    const char* function;
    int n;
    const char* what;
  };
  const std::vector<Step> steps = {
      {"C_DecryptInit", 1, "the exchange key decrypts the archived key"},
      {"C_Decrypt", 1, "the exchange key decrypts the archived key (C_Decrypt)"},
      {"C_GenerateKey", 1, "the fresh key the archive is encrypted under"},
      {"C_SignInit", 1, "the certificate's signature"},
      {"C_SignInit", 2, "the CMC response's signature"},
      {"C_Sign", 2, "the CMC response's signature (C_Sign)"},
  };
  const std::vector<std::string> requests = ArchivalRequests(static_cast<int>(steps.size()));
  ASSERT_EQ(requests.size(), steps.size());
  (void)TakeFired();
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& step = steps[i];
    SCOPED_TRACE(StrCat(step.function, " #", step.n, ": ", step.what));
    // Quiet before the plan is armed: the archival self-test run at start
    // and after each earlier step's recovery is over (it uses the token too).
    ASSERT_TRUE(daemon_->WaitForLog("archival self-test passed", static_cast<int>(i) + 1).ok());
    const std::string last_before = Sql("SELECT coalesce(max(id), 0) FROM requests");
    WritePlan(StrCat(step.function, " ", step.n, " 0x30\n"));  // CKR_DEVICE_ERROR
    v1::EnrollmentResult r;
    grpc::Status s = Submit(requests[i], "ArchivalUser", &r);
    WritePlan("");
    const std::vector<std::string> fired = TakeFired();
    ASSERT_EQ(fired.size(), 1u) << "the fault was not injected once";
    EXPECT_EQ(fired[0], StrCat(step.function, " ", step.n, " 0x30"));
    EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
    EXPECT_NE(s.error_message().find("HSM unavailable"), std::string::npos) << s.error_message();
    const std::string id = Sql("SELECT max(id) FROM requests");
    ASSERT_EQ(std::stoll(id), std::stoll(last_before) + 1) << "one row for the request";
    EXPECT_EQ(Sql("SELECT disposition FROM requests WHERE id = " + id), "30");
    EXPECT_NE(
        Sql("SELECT disposition_message FROM requests WHERE id = " + id).find("HSM unavailable"),
        std::string::npos);
    EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE id = " + id +
                  " AND (archived_key IS NOT NULL OR serial IS NOT NULL)"),
              "0");
    EXPECT_EQ(Sql("SELECT count(*) FROM certificates WHERE request_id = " + id), "0");

    // The same bytes again, once the token is back (it recovers by itself).
    grpc::Status again;
    v1::EnrollmentResult issued;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    do {
      issued.Clear();
      again = Submit(requests[i], "ArchivalUser", &issued);
      if (again.error_code() != grpc::StatusCode::UNAVAILABLE) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    } while (std::chrono::steady_clock::now() < deadline);
    ASSERT_TRUE(again.ok()) << again.error_message();
    EXPECT_EQ(issued.disposition(), v1::DISPOSITION_ISSUED) << issued.message();
    EXPECT_FALSE(issued.cmc_response().empty());
    EXPECT_EQ(Sql(StrCat("SELECT count(*) FROM requests WHERE id = ", issued.request_id(),
                         " AND disposition = 20 AND archived_key IS NOT NULL")),
              "1");
    EXPECT_TRUE(TakeFired().empty());
  }
  // Nothing was ever denied: every refusal was the CA's.
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE disposition = 31"), "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM audit WHERE event = 'request.denied'"), "0");
}

// A request a crash left between states (inserted, marked in process, never
// resolved) is failed "interrupted" at start and audited; one taken under
// submission for a Certificate Manager stays pending.
TEST_F(TokenFaultTest, RequestsInterruptedByACrashAreFailedAtStartPendingOnesStay) {
  const std::string csr = MakeCsr("/CN=pend/O=keywarden test");
  // A request legitimately waiting for a Certificate Manager.
  v1::EnrollmentResult pending;
  auto st = Submit(csr, "PendingUser", &pending);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(pending.disposition(), v1::DISPOSITION_PENDING);
  // kill -9, then leave a second request the way a kill between its
  // insertion and the end of its processing leaves it (the moment itself
  // cannot be hit reliably from outside).
  (void)daemon_->Stop(SIGKILL);
  const std::string id = std::to_string(pending.request_id());
  Sql(
      StrCat("INSERT INTO requests (requester, template_name, format, raw, subject, disposition, "
             "disposition_message, status_code, submitted_at, resolved_at, resolved_by) SELECT "
             "requester, template_name, format, raw, subject, 9, 'In process', 0, submitted_at, 0, "
             "'' FROM requests WHERE id = ",
             id));
  const std::string crashed = Sql("SELECT max(id) FROM requests");
  ASSERT_NE(crashed, id);
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Sql("SELECT disposition FROM requests WHERE id = " + crashed), "30");
  EXPECT_NE(
      Sql("SELECT disposition_message FROM requests WHERE id = " + crashed).find("interrupted"),
      std::string::npos);
  EXPECT_EQ(Sql("SELECT disposition FROM requests WHERE id = " + id), "9");
  EXPECT_EQ(Sql("SELECT disposition_message FROM requests WHERE id = " + id),
            "Taken Under Submission");
  EXPECT_EQ(Sql(StrCat("SELECT count(*) FROM audit WHERE event = 'request.interrupted' AND "
                       "json_extract(details, '$.request_id') = ",
                       crashed)),
            "1");
  EXPECT_EQ(Sql("SELECT count(*) FROM audit WHERE event = 'request.interrupted'"), "1");
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE disposition = 31"), "0");
}

// kill -9 at random moments under archival load from four clients (so that
// SQLite commits their units of work in groups, and kills land in a group's
// commit), then a restart each time. Afterwards every archival acknowledged to a client is
// stored with its archived key, no archival certificate is without its key,
// no request is left "In process", and the audit chain verifies.
TEST_F(TokenFaultTest, KillsUnderArchivalLoadLoseNothingAcknowledged) {
  auto kra = EnrollKraCard(*daemon_, "kra-card-1");
  ASSERT_TRUE(kra.ok()) << kra.status();
  ASSERT_TRUE(UseKras(*daemon_, {pki::Sha1Thumbprint(kra->get())}, 1).ok());
  constexpr int kKills = 8;
  const std::vector<std::string> requests = ArchivalRequests(kKills * 12);
  ASSERT_EQ(requests.size(), static_cast<size_t>(kKills * 12));

  std::shared_mutex restarting;  // held exclusively while the daemon is killed and restarted
  std::atomic<size_t> next{0};
  std::atomic<bool> stop{false};
  std::mutex mu;
  std::vector<int64_t> acknowledged;
  std::vector<std::string> wrong;
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        const size_t i = next.fetch_add(1);
        if (i >= requests.size()) break;
        std::shared_ptr<grpc::Channel> channel;
        {
          std::shared_lock<std::shared_mutex> lock(restarting);
          channel = daemon_->Channel("enrollee");
        }
        SubmitArchivalUnderKills(channel, requests[i], 20, mu, acknowledged, wrong);
      }
    });
  }
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> pause(150, 900);
  for (int k = 0; k < kKills; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause(rng)));
    std::unique_lock<std::shared_mutex> lock(restarting);
    (void)daemon_->Stop(SIGKILL);
    auto st = daemon_->Restart();
    ASSERT_TRUE(st.ok()) << "restart after kill " << k + 1 << ": " << st;
  }
  stop = true;
  for (auto& t : clients) t.join();

  EXPECT_TRUE(wrong.empty()) << wrong.size()
                             << " wrong answers, first: " << (wrong.empty() ? "" : wrong[0]);
  EXPECT_GT(acknowledged.size(), 0u);
  for (const int64_t id : acknowledged) {
    EXPECT_EQ(Sql(StrCat("SELECT count(*) FROM requests r JOIN certificates c ON c.request_id = "
                         "r.id WHERE r.id = ",
                         id, " AND r.disposition = 20 AND length(r.archived_key) > 0")),
              "1")
        << "acknowledged request " << id;
  }
  EXPECT_EQ(Sql("SELECT count(*) FROM certificates c JOIN requests r ON c.request_id = r.id "
                "WHERE r.template_name = 'ArchivalUser' AND r.archived_key IS NULL"),
            "0");
  EXPECT_EQ(Sql(StrCat("SELECT count(*) FROM requests WHERE disposition = 9 AND "
                       "disposition_message = '",
                       service::kRequestInProcess, "'")),
            "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE disposition = 31"), "0");
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse verdict;
  grpc::Status st = audit->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &verdict);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(verdict.ok()) << verdict.problem();
  std::fprintf(stderr, "%d kills: %zu archivals acknowledged of %zu sent; %s interrupted\n", kKills,
               acknowledged.size(), std::min(next.load(), requests.size()),
               Sql("SELECT count(*) FROM audit WHERE event = 'request.interrupted'").c_str());
}

// Two replicas on one PostgreSQL database and one token, under archival
// load through both: one replica is killed with SIGKILL at random moments
// (20 times) and restarted, and PostgreSQL itself is restarted once, while
// both serve. Afterwards every archival acknowledged to a client is stored
// with its certificate and its archived key, which the KRA recovers with its
// card; no serial twice, no certificate without its key, no request stuck in
// process, nothing blamed on the clients, and the one audit chain verifies.
// The database is a private cluster of the test's own (it is restarted),
// not the shared one.
class ReplicaFailureTest : public TokenFaultTest {
 protected:
  void SetUp() override {
    if (TestPgConninfo().empty() && !TestPgRequired()) {
      GTEST_SKIP() << "no PostgreSQL (deploy/test.sh starts one)";
    }
    // The cluster runs as an unprivileged user, who must reach its directory.
    ASSERT_EQ(chmod(pg_.path().c_str(), 0711), 0);
    cluster_ = pg_.File("cluster");
    auto started = RunCommand(Cluster("start"));
    ASSERT_EQ(started.exit_code, 0) << started.output;
    std::string conninfo = started.output;
    while (!conninfo.empty() && conninfo.back() == '\n') conninfo.pop_back();
    ASSERT_EQ(setenv("KEYWARDEN_TEST_PG", conninfo.c_str(), 1), 0);
    ASSERT_EQ(setenv("KEYWARDEN_TEST_BACKEND", "postgresql", 1), 0);
    // Requests a killed replica left in process are failed by the other
    // after 5 s (the default is 10 minutes); no request here takes that long.
    ASSERT_EQ(setenv("KEYWARDEN_TEST_IN_PROCESS_TIMEOUT", "5s", 1), 0);
    TokenFaultTest::SetUp();
  }
  void TearDown() override {
    daemon_.reset();
    if (!cluster_.empty()) RunCommand(Cluster("stop"));
  }
  std::string Cluster(const std::string& verb) const {
    return StrCat("KEYWARDEN_PG_PORT=54339 ", KEYWARDEN_SOURCE_DIR, "/deploy/pg-cluster.sh ", verb,
                  " ", cluster_, " </dev/null 2>&1");
  }

  TempDir pg_;
  std::string cluster_;
};

TEST_F(ReplicaFailureTest, KillsOfOneReplicaAndADatabaseRestartLoseNothingAcknowledged) {
  ASSERT_TRUE(daemon_->postgres());
  auto kra = EnrollKraCard(*daemon_, "kra-card-1");
  ASSERT_TRUE(kra.ok()) << kra.status();
  ASSERT_TRUE(UseKras(*daemon_, {pki::Sha1Thumbprint(kra->get())}, 1).ok());
  auto replica = daemon_->StartReplica();
  ASSERT_TRUE(replica.ok()) << replica.status();
  constexpr int kKills = 20;
  const std::vector<std::string> requests = ArchivalRequests(kKills * 7);
  ASSERT_EQ(requests.size(), static_cast<size_t>(kKills * 7));

  std::shared_mutex restarting;  // held exclusively while replica B is replaced
  std::string b_target = daemon_->replica_target(*replica);
  std::atomic<size_t> next{0};
  std::mutex mu;
  std::vector<int64_t> acknowledged;
  std::vector<std::string> wrong;
  std::atomic<int> through_a{0}, through_b{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < 4; ++c) {
    clients.emplace_back([&, c] {
      const bool to_b = c % 2 == 1;
      while (true) {
        const size_t i = next.fetch_add(1);
        if (i >= requests.size()) break;
        std::shared_ptr<grpc::Channel> channel;
        {
          std::shared_lock<std::shared_mutex> lock(restarting);
          channel = to_b ? daemon_->Channel("enrollee", b_target) : daemon_->Channel("enrollee");
        }
        if (SubmitArchivalUnderKills(channel, requests[i], 30, mu, acknowledged, wrong)) {
          (to_b ? through_b : through_a)++;
        }
      }
    });
  }
  std::mt19937 rng(std::random_device{}());
  std::uniform_int_distribution<int> pause(100, 700);
  int current = *replica;
  for (int k = 0; k < kKills; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause(rng)));
    if (k == kKills / 2) {
      // PostgreSQL goes away under both replicas and comes back.
      auto stop = RunCommand(Cluster("stop"));
      ASSERT_EQ(stop.exit_code, 0) << stop.output;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      auto start = RunCommand(Cluster("start"));
      ASSERT_EQ(start.exit_code, 0) << start.output;
    }
    std::unique_lock<std::shared_mutex> lock(restarting);
    (void)daemon_->StopReplica(current, SIGKILL);
    auto again = daemon_->StartReplica();
    ASSERT_TRUE(again.ok()) << "restart after kill " << k + 1 << ": " << again.status();
    current = *again;
    b_target = daemon_->replica_target(current);
  }
  for (auto& t : clients) t.join();

  EXPECT_TRUE(wrong.empty()) << wrong.size()
                             << " wrong answers, first: " << (wrong.empty() ? "" : wrong[0]);
  EXPECT_GT(through_a.load(), 0);
  EXPECT_GT(through_b.load(), 0);
  std::set<int64_t> distinct(acknowledged.begin(), acknowledged.end());
  EXPECT_EQ(distinct.size(), acknowledged.size());
  for (const int64_t id : acknowledged) {
    EXPECT_EQ(Sql(StrCat("SELECT count(*) FROM requests r JOIN certificates c ON c.request_id = "
                         "r.id WHERE r.id = ",
                         id, " AND r.disposition = 20 AND length(r.archived_key) > 0")),
              "1")
        << "acknowledged request " << id;
  }
  EXPECT_EQ(Sql("SELECT count(*) - count(DISTINCT serial) FROM certificates"), "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM certificates c JOIN requests r ON c.request_id = r.id "
                "WHERE r.template_name = 'ArchivalUser' AND r.archived_key IS NULL"),
            "0");
  // Requests a kill left in process are failed as interrupted by the
  // replicas' sweep once they are older than in_process_timeout (5 s here,
  // swept every 2 s): none stays stuck.
  const std::string stuck_sql =
      StrCat("SELECT count(*) FROM requests WHERE disposition = 9 AND disposition_message = '",
             service::kRequestInProcess, "'");
  const std::string stuck_after_kills = Sql(stuck_sql);
  for (int i = 0; i < 40 && Sql(stuck_sql) != "0"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  EXPECT_EQ(Sql(stuck_sql), "0");
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE disposition = 31"), "0");

  // The KRA recovers every acknowledged archive with its card.
  size_t recovered = 0;
  for (const int64_t id : acknowledged) {
    const std::string serial = Sql(StrCat("SELECT serial FROM requests WHERE id = ", id));
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::GetArchivedKeyRequest in;
    in.set_search(serial);
    in.set_blob(true);
    v1::GetArchivedKeyResponse out;
    grpc::Status st = stub->GetArchivedKey(&ctx, in, &out);
    ASSERT_TRUE(st.ok()) << serial << ": " << st.error_message();
    const std::string blob = tmp_.File(StrCat("r", id, ".rec"));
    WriteFile(blob, std::vector<uint8_t>(out.recovery_blob().begin(), out.recovery_blob().end()));
    auto r = RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                               KEYWARDEN_CLI, " recoverkey --card pkcs11:token=kra-card-1",
                               " --pin-source file:", daemon_->tokens().PinFile("kra-card-1"),
                               " --ca-cert ", daemon_->ca_cert_path(), " ", blob, " ",
                               tmp_.File(StrCat("r", id, ".pfx")), " -p pw 2>&1"));
    EXPECT_EQ(r.exit_code, 0) << serial << ": " << r.output;
    if (r.exit_code == 0) ++recovered;
  }
  EXPECT_EQ(recovered, acknowledged.size());

  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse verdict;
  grpc::Status st = audit->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &verdict);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(verdict.ok()) << verdict.problem();
  std::fprintf(stderr,
               "2 replicas, %d kills of one, 1 PostgreSQL restart: %zu archivals acknowledged "
               "(%d through A, %d through B) of %zu sent, all %zu recovered with the KRA card; "
               "%s left in process by the kills, %s failed as interrupted\n",
               kKills, acknowledged.size(), through_a.load(), through_b.load(), requests.size(),
               recovered, stuck_after_kills.c_str(),
               Sql("SELECT count(*) FROM audit WHERE event = 'request.interrupted'").c_str());
}

// The database's disk fills up under enrolment load: a CA-side fault. Every
// answer is an issued certificate or UNAVAILABLE naming the database (never
// a code that blames the client: RESOURCE_EXHAUSTED, PERMISSION_DENIED,
// INVALID_ARGUMENT), nothing is recorded as denied, what was acknowledged
// is stored, the audit chain still verifies, and the CA issues again once
// space is freed, without a restart. The database sits on its own small
// tmpfs (mounting needs root, as CI runs; elsewhere the test is skipped).
class DatabaseFaultTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (daemon_) (void)daemon_->Stop();
    if (mounted_) RunCommand("umount -l " + fs_);
  }

  TempDir tmp_;
  std::string fs_;
  bool mounted_ = false;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(DatabaseFaultTest, DiskFullIsUnavailableNeverTheClientsFaultAndServiceResumes) {
  fs_ = tmp_.File("dbfs");
  RunCommand("mkdir -p " + fs_);
  auto mount = RunCommand("mount -t tmpfs -o size=8m keywarden-test " + fs_);
  if (mount.exit_code != 0) GTEST_SKIP() << "cannot mount a tmpfs here: " << mount.output;
  mounted_ = true;
  DaemonHarness::Options options;
  const std::string fs = fs_;
  options.before_launch = [fs](DaemonHarness& h) -> absl::Status {
    auto r = RunCommand(StrCat("sed -i 's|^path = \"ca.db\"$|path = \"", fs, "/ca.db\"|' ",
                               h.config_path(), " && grep -q '", fs, "/ca.db' ", h.config_path(),
                               " && if [ -e ", h.db_path(), " ]; then mv ", h.db_path(), "* ", fs,
                               "/; fi"));
    return r.exit_code == 0 ? absl::OkStatus() : absl::InternalError(r.output);
  };
  auto d = DaemonHarness::Start(options);
  ASSERT_TRUE(d.ok()) << d.status();
  daemon_ = std::move(*d);
  const std::string db = fs_ + "/ca.db";
  auto sql = [&db](const std::string& query) {
    auto r = RunCommand(StrCat("sqlite3 -cmd '.timeout 10000' ", db, " \"", query, "\""));
    std::string out = r.output;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out;
  };

  const std::string key = tmp_.File("req.key"), csr_file = tmp_.File("req.der");
  ASSERT_EQ(RunCommand("openssl req -new -newkey rsa:2048 -nodes -subj '/CN=disk/O=keywarden "
                       "test' -keyout " +
                       key + " -outform DER -out " + csr_file)
                .exit_code,
            0);
  const std::vector<uint8_t> der = ReadFile(csr_file);
  const std::string csr(der.begin(), der.end());
  auto submit = [&](v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SubmitRequest in;
    in.set_request(csr);
    in.set_template_name("User");
    return stub->Submit(&ctx, in, out);
  };
  std::set<int64_t> acknowledged;  // requests the client got a certificate for
  int unavailable = 0;
  std::vector<std::string> wrong;
  auto one = [&] {
    v1::EnrollmentResult r;
    grpc::Status s = submit(&r);
    if (s.ok() && r.disposition() == v1::DISPOSITION_ISSUED) {
      acknowledged.insert(r.request_id());
      return true;
    }
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE &&
        s.error_message().find("database") != std::string::npos) {
      ++unavailable;
    } else {
      wrong.push_back(StrCat(static_cast<int>(s.error_code()), " ", s.error_message(),
                             " disposition ", static_cast<int>(r.disposition())));
    }
    return false;
  };
  ASSERT_TRUE(one()) << (wrong.empty() ? "" : wrong[0]);
  const pid_t pid = daemon_->pid();

  // Fill the disk (dd stops at ENOSPC).
  RunCommand(StrCat("dd if=/dev/zero of=", fs_, "/filler bs=4k 2>/dev/null"));
  for (int i = 0; i < 40; ++i) one();
  EXPECT_GT(unavailable, 0) << "nothing failed on a full disk";
  EXPECT_TRUE(wrong.empty()) << wrong.size() << " answers blame the client or are unclear, first: "
                             << (wrong.empty() ? "" : wrong[0]);

  // Space again: the CA issues without a restart.
  ASSERT_EQ(RunCommand("rm -f " + fs_ + "/filler").exit_code, 0);
  wrong.clear();
  bool resumed = false;
  for (int i = 0; i < 20 && !resumed; ++i) {
    resumed = one();
    if (!resumed) std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
  EXPECT_TRUE(resumed) << "no issuance after space was freed: "
                       << (wrong.empty() ? "" : wrong.back());
  EXPECT_EQ(daemon_->pid(), pid);
  EXPECT_EQ(kill(pid, 0), 0) << "keywardend is not running";

  // Every acknowledged certificate is stored; nothing was denied.
  for (const int64_t id : acknowledged) {
    EXPECT_EQ(sql(StrCat("SELECT count(*) FROM certificates WHERE request_id = ", id)), "1") << id;
  }
  EXPECT_EQ(sql("SELECT count(*) FROM requests WHERE disposition = 31"), "0");
  EXPECT_EQ(sql("SELECT count(*) FROM audit WHERE event = 'request.denied'"), "0");
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse verdict;
  grpc::Status st = audit->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &verdict);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(verdict.ok()) << verdict.problem();
  std::fprintf(stderr, "issued %zu, unavailable %d\n", acknowledged.size(), unavailable);
}

}  // namespace
}  // namespace keywarden::testing
