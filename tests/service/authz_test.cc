// Who may call what, checked against a real daemon: every RPC of the proto
// with every principal, role separation, and handshake refusals.
#include <map>
#include <set>

#include <google/protobuf/descriptor.h>
#include <grpcpp/generic/generic_stub.h>
#include <gtest/gtest.h>

#include "keywarden/v1/keywarden.grpc.pb.h"
#include "keywarden/v1/signing.grpc.pb.h"
#include "service/authz.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

// Every method of every keywarden.v1 service, as "/pkg.Service/Method".
std::vector<std::string> AllMethods() {
  std::vector<std::string> out;
  const auto* pool = google::protobuf::DescriptorPool::generated_pool();
  // Referencing a Signing message links signing.proto's descriptors into the pool.
  (void)v1::SignDigestRequest::descriptor();
  for (const char* service :
       {"Enrollment", "Officer", "Administration", "Audit", "Backup", "Signing"}) {
    const auto* s = pool->FindServiceByName(std::string("keywarden.v1.") + service);
    EXPECT_NE(s, nullptr) << service;
    for (int i = 0; s != nullptr && i < s->method_count(); ++i) {
      out.push_back("/" + s->full_name() + "/" + s->method(i)->name());
    }
  }
  return out;
}

// Calls `method` with an empty request message (valid for every request type).
grpc::Status CallEmpty(const std::shared_ptr<grpc::Channel>& channel, const std::string& method) {
  if (method == "/keywarden.v1.Backup/BackupDatabase") {  // server-streaming: read it all
    auto stub = v1::Backup::NewStub(channel);
    grpc::ClientContext ctx;
    auto reader = stub->BackupDatabase(&ctx, v1::BackupDatabaseRequest());
    v1::BackupChunk chunk;
    while (reader->Read(&chunk)) {
    }
    return reader->Finish();
  }
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  grpc::ByteBuffer request, response;
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  grpc::Status result;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status st) {
    std::lock_guard<std::mutex> lock(mu);
    result = st;
    done = true;
    cv.notify_one();
  });
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return done; });
  return result;
}

TEST(AuthzTableTest, EveryRpcInTheProtoHasExactlyOneRule) {
  std::set<std::string> in_proto;
  for (const auto& m : AllMethods()) {
    in_proto.insert(m);
    EXPECT_NE(service::FindMethod(m), nullptr) << m << " has no access rule";
  }
  for (const auto& rule : service::MethodTable()) {
    EXPECT_EQ(in_proto.count(rule.method), 1u) << rule.method << " is not in the proto";
  }
  EXPECT_EQ(in_proto.size(), service::MethodTable().size());
}

class AuthzTest : public ::testing::Test {
 protected:
  void Start(bool role_separation) {
    DaemonHarness::Options options;
    options.role_separation = role_separation;
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }
  std::unique_ptr<DaemonHarness> daemon_;
};

// Which principals the table lets through, by role.
bool Expected(const service::MethodPolicy& p, const std::string& who, bool separation) {
  static const std::map<std::string, std::vector<service::Role>> roles = {
      {"admin", {service::Role::kCaAdministrator}},
      {"officer", {service::Role::kCertificateManager}},
      {"auditor", {service::Role::kAuditor}},
      {"backup", {service::Role::kBackupOperator}},
      {"enrollee", {service::Role::kEnrollee}},
      {"signer", {service::Role::kSigner}},
      {"nobody", {}},
      {"admin-officer", {service::Role::kCaAdministrator, service::Role::kCertificateManager}},
  };
  const auto& held = roles.at(who);
  auto has = [&](service::Role r) { return std::find(held.begin(), held.end(), r) != held.end(); };
  if (service::IsAdministrative(p) && separation && held.size() > 1) return false;
  if (p.roles.empty()) return true;
  for (auto r : p.roles) {
    if (has(r)) return true;
  }
  return p.administrator_without_separation && !separation && has(service::Role::kCaAdministrator);
}

void CheckMatrix(DaemonHarness& daemon, bool separation) {
  const std::vector<std::string> principals = {"admin",    "officer", "auditor", "backup",
                                               "enrollee", "signer",  "nobody",  "admin-officer"};
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
  for (const auto& who : principals) channels[who] = daemon.Channel(who);
  int checked = 0;
  for (const auto& rule : service::MethodTable()) {
    for (const auto& who : principals) {
      grpc::Status st = CallEmpty(channels[who], rule.method);
      const bool allowed = st.error_code() != grpc::StatusCode::PERMISSION_DENIED;
      EXPECT_EQ(allowed, Expected(rule, who, separation))
          << rule.method << " as " << who << ": " << st.error_message();
      if (!allowed) {
        const uint32_t hr = DetailOf(st).hresult();
        const bool conflict =
            separation && who == "admin-officer" && service::IsAdministrative(rule);
        EXPECT_EQ(hr, conflict ? 0x80094008u : 0x80070005u) << rule.method << " as " << who;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(service::MethodTable().size() * principals.size()));
}

TEST_F(AuthzTest, EveryRpcWithEveryRoleWithoutRoleSeparation) {
  Start(false);
  CheckMatrix(*daemon_, false);
}

TEST_F(AuthzTest, EveryRpcWithEveryRoleWithRoleSeparation) {
  Start(true);
  CheckMatrix(*daemon_, true);
  // The refusals are audited as role-separation events.
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::ReadAuditRequest in;
  in.set_limit(10000);
  v1::ReadAuditResponse out;
  ASSERT_TRUE(audit->ReadAudit(&ctx, in, &out).ok());
  int separation = 0, denied = 0;
  for (const auto& r : out.records()) {
    if (r.event() == "authz.role_separation") {
      ++separation;
      EXPECT_EQ(r.principal(), "CN=boss,O=keywarden test");
    }
    if (r.event() == "authz.denied") ++denied;
  }
  const auto administrative =
      std::count_if(service::MethodTable().begin(), service::MethodTable().end(),
                    [](const service::MethodPolicy& p) { return service::IsAdministrative(p); });
  EXPECT_EQ(separation, administrative);  // each administrative RPC, once
  EXPECT_GT(denied, 0);
}

TEST_F(AuthzTest, NoClientCertificateOrAnUntrustedOneFailsTheHandshake) {
  Start(false);
  for (const std::string who : {"anonymous", "untrusted"}) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::CertificateChain out;
    auto st = stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << who << ": " << st.error_message();
  }
  // Plaintext is refused too.
  auto plain = v1::Enrollment::NewStub(
      grpc::CreateChannel(daemon_->target(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  v1::CertificateChain out;
  EXPECT_EQ(plain->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &out).error_code(),
            grpc::StatusCode::UNAVAILABLE);
  // And the daemon still serves properly authenticated clients.
  auto ok = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext okctx;
  EXPECT_TRUE(ok->GetCaCertificate(&okctx, v1::GetCaCertificateRequest(), &out).ok());
}

TEST_F(AuthzTest, HealthServiceAnswersServing) {
  Start(false);
  grpc::GenericStub stub(daemon_->Channel("nobody"));
  auto st = CallEmpty(daemon_->Channel("nobody"), "/grpc.health.v1.Health/Check");
  EXPECT_TRUE(st.ok()) << st.error_message();
}

}  // namespace
}  // namespace keywarden::testing
