// Token faults and crashes, end to end: a real keywardend on real SoftHSM2
// tokens. The token is taken away under load (its directory renamed, as an
// operator or a failing disk would) and brought back; a crash is left in
// the database the way a kill -9 mid-processing leaves it.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "tests/service/daemon_harness.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

// grpc.health.v1.Health/Check for the whole server: 1 SERVING, 2 NOT_SERVING,
// -1 when the call itself failed.
int HealthStatus(const std::shared_ptr<grpc::Channel>& channel) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  grpc::Slice empty("");
  grpc::ByteBuffer request(&empty, 1), response;
  grpc::Status result;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status st) {
                   std::lock_guard<std::mutex> lock(mu);
                   result = st;
                   done = true;
                   cv.notify_one();
                 });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  if (!result.ok()) return -1;
  std::vector<grpc::Slice> slices;
  if (!response.Dump(&slices).ok()) return -1;
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse { ServingStatus status = 1; }: 08 <status>
  if (bytes.size() != 2 || bytes[0] != 0x08) return -1;
  return bytes[1];
}

class TokenFaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto d = DaemonHarness::Start();
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::string MakeCsr(const std::string& subject) {
    const std::string key = tmp_.File("req.key"), csr = tmp_.File("req.der");
    auto r = RunCommand("openssl req -new -newkey rsa:2048 -nodes -subj '" + subject +
                        "' -keyout " + key + " -outform DER -out " + csr);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto der = ReadFile(csr);
    return std::string(der.begin(), der.end());
  }

  grpc::Status Submit(const std::string& csr, const std::string& tmpl, v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SubmitRequest in;
    in.set_request(csr);
    in.set_template_name(tmpl);
    return stub->Submit(&ctx, in, out);
  }

  // One value from the database, read with the sqlite3 command line.
  std::string Sql(const std::string& query) {
    auto r = RunCommand(
        StrCat("sqlite3 -cmd '.timeout 10000' ", daemon_->db_path(), " \"", query, "\""));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string out = r.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    return out;
  }

  std::string TokenDir() const { return daemon_->tokens().dir() + "/tokens"; }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(TokenFaultTest, TokenTakenAwayUnderLoadIsUnavailableNeverDeniedAndBackWithoutRestart) {
  const std::string csr = MakeCsr("/CN=load/O=keywarden test");
  v1::EnrollmentResult first;
  auto st = Submit(csr, "User", &first);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(first.disposition(), v1::DISPOSITION_ISSUED);
  ASSERT_EQ(HealthStatus(daemon_->Channel("nobody")), 1);
  const pid_t pid = daemon_->pid();

  std::atomic<bool> stop{false};
  std::atomic<bool> restored{false};
  std::mutex mu;
  int ok = 0, ok_after_restore = 0, unavailable = 0;
  std::vector<std::string> unexpected;  // any other answer
  std::vector<std::string> unclear;     // UNAVAILABLE without "HSM unavailable"
  std::vector<std::thread> clients;
  for (int i = 0; i < 3; ++i) {
    clients.emplace_back([&] {
      while (!stop.load()) {
        v1::EnrollmentResult r;
        grpc::Status s = Submit(csr, "User", &r);
        const bool after = restored.load();
        std::lock_guard<std::mutex> lock(mu);
        if (s.ok() && r.disposition() == v1::DISPOSITION_ISSUED) {
          ++ok;
          if (after) ++ok_after_restore;
        } else if (s.error_code() == grpc::StatusCode::UNAVAILABLE) {
          ++unavailable;
          if (s.error_message().find("HSM unavailable") == std::string::npos)
            unclear.push_back(s.error_message());
        } else {
          unexpected.push_back(StrCat(static_cast<int>(s.error_code()), " ", s.error_message(),
                                      " disposition ", static_cast<int>(r.disposition())));
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
    health_down = HealthStatus(daemon_->Channel("nobody"));
    if (health_down != 2) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health_down, 2) << "health while the token is away";
  ASSERT_EQ(std::rename(away.c_str(), TokenDir().c_str()), 0);
  restored = true;
  // Service resumes without a restart.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (ok_after_restore >= 5) break;
    }
    if (std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  stop = true;
  for (auto& t : clients) t.join();
  EXPECT_EQ(daemon_->pid(), pid);
  EXPECT_EQ(kill(pid, 0), 0) << "keywardend is not running";

  EXPECT_GE(ok_after_restore, 5) << "no service after the token came back";
  EXPECT_GT(unavailable, 0) << "nothing failed while the token was away";
  EXPECT_TRUE(unexpected.empty()) << unexpected.size() << " unexpected answers, first: "
                                  << (unexpected.empty() ? "" : unexpected[0]);
  EXPECT_TRUE(unclear.empty()) << unclear.size()
                               << " unclear, first: " << (unclear.empty() ? "" : unclear[0]);
  int health_up = -1;
  for (int i = 0; i < 100 && health_up != 1; ++i) {
    health_up = HealthStatus(daemon_->Channel("nobody"));
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
  // Outage then recovery, in that order, in the audit log.
  const std::string down = Sql("SELECT min(seq) FROM audit WHERE event = 'hsm.unavailable'");
  const std::string up = Sql("SELECT max(seq) FROM audit WHERE event = 'hsm.recovered'");
  ASSERT_FALSE(down.empty()) << "no hsm.unavailable record";
  ASSERT_FALSE(up.empty()) << "no hsm.recovered record";
  EXPECT_LT(std::stoll(down), std::stoll(up));
  std::fprintf(stderr, "ok %d (after restore %d), unavailable %d\n", ok, ok_after_restore,
               unavailable);
  std::fprintf(stderr, "%s\n", Sql("SELECT details FROM audit WHERE event LIKE 'hsm.%'").c_str());
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

}  // namespace
}  // namespace keywarden::testing
