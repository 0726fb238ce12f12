// Who may call what, checked against a real daemon: every RPC of the proto
// with every principal, role separation, and handshake refusals.
#include <map>
#include <set>
#include <sstream>

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
  return CallRaw(channel, method, "");
}

// The access table of docs/API.md, read from the document itself: the
// expected answers come from what operators are told, not from the table
// in service/authz.cc that the daemon uses.
struct DocumentedRule {
  std::set<std::string> roles;  // "any" for any authenticated principal
  bool administrator_without_separation = false;
  bool administrative = false;
};

std::map<std::string, DocumentedRule> DocumentedTable() {
  std::map<std::string, DocumentedRule> out;
  const std::vector<uint8_t> bytes = ReadFile(KEYWARDEN_API_DOC);
  std::istringstream in(std::string(bytes.begin(), bytes.end()));
  const std::map<std::string, std::string> names = {
      {"CA Administrator", "ca-administrator"},
      {"Certificate Manager", "certificate-manager"},
      {"Backup Operator", "backup-operator"},
      {"Auditor", "auditor"},
      {"Enrollee", "enrollee"},
      {"Signer", "signer"},
  };
  auto trim = [](std::string t) {
    t.erase(0, t.find_first_not_of(' '));
    t.erase(t.find_last_not_of(' ') + 1);
    return t;
  };
  for (std::string line; std::getline(in, line);) {
    // "| Service/Method | roles | yes/no |"
    std::vector<std::string> cells;
    std::istringstream row(line);
    for (std::string cell; std::getline(row, cell, '|');) cells.push_back(trim(cell));
    if (cells.size() != 4 || cells[1].find('/') == std::string::npos ||
        cells[1].find(' ') != std::string::npos) {
      continue;
    }
    DocumentedRule rule;
    rule.administrative = cells[3].rfind("yes", 0) == 0;
    std::string roles = cells[2];
    const std::string admin = "(CA Administrator without role separation)";
    if (auto at = roles.find(admin); at != std::string::npos) {
      rule.administrator_without_separation = true;
      roles.erase(at, admin.size());
    }
    if (auto at = roles.find(", and"); at != std::string::npos) roles.resize(at);
    while (roles.find('(') != std::string::npos) {
      roles.erase(roles.find('('), roles.find(')') - roles.find('(') + 1);
    }
    std::istringstream list(roles);
    for (std::string name; std::getline(list, name, ',');) {
      name = trim(name);
      if (name == "any authenticated principal") {
        rule.roles.insert("any");
      } else {
        EXPECT_EQ(names.count(name), 1u)
            << "docs/API.md names an unknown role \"" << name << "\" for " << cells[1];
        if (names.count(name) != 0) rule.roles.insert(names.at(name));
      }
    }
    out["/keywarden.v1." + cells[1]] = rule;
  }
  return out;
}

TEST(AuthzTableTest, EveryRpcInTheProtoHasExactlyOneRuleInTheCodeAndInTheDocs) {
  const auto documented = DocumentedTable();
  std::set<std::string> in_proto;
  for (const auto& m : AllMethods()) {
    in_proto.insert(m);
    EXPECT_NE(service::FindMethod(m), nullptr) << m << " has no access rule";
    EXPECT_EQ(documented.count(m), 1u) << m << " is not in docs/API.md's table";
  }
  for (const auto& rule : service::MethodTable()) {
    EXPECT_EQ(in_proto.count(rule.method), 1u) << rule.method << " is not in the proto";
  }
  for (const auto& [method, rule] : documented) {
    EXPECT_EQ(in_proto.count(method), 1u) << method << " (docs/API.md) is not in the proto";
  }
  EXPECT_EQ(in_proto.size(), service::MethodTable().size());
  EXPECT_EQ(in_proto.size(), documented.size());
  // The one rule this project must never lose, stated outright.
  EXPECT_EQ(documented.at("/keywarden.v1.Officer/GetArchivedKey").roles,
            std::set<std::string>{"certificate-manager"});
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

// Which principals the documented table lets through. The harness's
// principals and their roles (tests/service/daemon_harness.cc) are restated
// here.
bool Expected(const DocumentedRule& rule, const std::string& who, bool separation) {
  static const std::map<std::string, std::set<std::string>> roles = {
      {"admin", {"ca-administrator"}},
      {"officer", {"certificate-manager"}},
      {"auditor", {"auditor"}},
      {"backup", {"backup-operator"}},
      {"enrollee", {"enrollee"}},
      {"signer", {"signer"}},
      {"nobody", {}},
      {"admin-officer", {"ca-administrator", "certificate-manager"}},
  };
  const auto& held = roles.at(who);
  if (rule.administrative && separation && held.size() > 1) return false;  // both are CIMC roles
  if (rule.roles.count("any") != 0) return true;
  for (const auto& r : rule.roles) {
    if (held.count(r) != 0) return true;
  }
  return rule.administrator_without_separation && !separation &&
         held.count("ca-administrator") != 0;
}

void CheckMatrix(DaemonHarness& daemon, bool separation) {
  const auto documented = DocumentedTable();
  const std::vector<std::string> principals = {"admin",    "officer", "auditor", "backup",
                                               "enrollee", "signer",  "nobody",  "admin-officer"};
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels;
  for (const auto& who : principals) channels[who] = daemon.Channel(who);
  int checked = 0;
  for (const auto& [method, rule] : documented) {
    for (const auto& who : principals) {
      grpc::Status st = CallEmpty(channels[who], method);
      const bool allowed = st.error_code() != grpc::StatusCode::PERMISSION_DENIED &&
                           st.error_code() != grpc::StatusCode::UNAUTHENTICATED;
      EXPECT_EQ(allowed, Expected(rule, who, separation))
          << method << " as " << who << ": " << st.error_message();
      if (!allowed) {
        const uint32_t hr = DetailOf(st).hresult();
        const bool conflict = separation && who == "admin-officer" && rule.administrative;
        EXPECT_EQ(hr, conflict ? 0x80094008u : 0x80070005u) << method << " as " << who;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int>(documented.size() * principals.size()));
  EXPECT_GE(documented.size(), 26u);
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
  const auto documented = DocumentedTable();
  const auto administrative =
      std::count_if(documented.begin(), documented.end(),
                    [](const auto& entry) { return entry.second.administrative; });
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

namespace keywarden::testing {
namespace {

// The names a subjectAltName would carry, checked against the directory:
// another account's UPN or e-mail (in any case) and a configured principal
// are refused unless a CA Administrator asks; one's own and unknown names pass.
TEST(AltNamesAuthzTest, AnotherAccountsNamesNeedACaAdministrator) {
  using service::Role;
  service::Config config;
  config.accounts.push_back(
      {"CN=alice,O=x", "alice@corp.example", "CORP\\alice", "alice@example.com"});
  config.accounts.push_back({"CN=bob,O=x", "bob@corp.example", "", ""});
  config.roles.push_back({"CN=officer,O=x", "ca.pem", "", {Role::kCertificateManager}});
  const std::vector<Role> enrollee = {Role::kEnrollee};
  auto check = [&](std::vector<std::string> upns, std::vector<std::string> emails,
                   const std::string& who, const std::vector<Role>& roles) {
    return service::CheckAltNamesNoPrincipal(config, upns, emails, who, roles);
  };
  EXPECT_TRUE(check({"alice@corp.example"}, {"alice@example.com"}, "CN=alice,O=x", enrollee).ok());
  EXPECT_TRUE(check({"carol@corp.example"}, {"carol@example.com"}, "CN=bob,O=x", enrollee).ok());
  for (const auto& [upns, emails] :
       std::vector<std::pair<std::vector<std::string>, std::vector<std::string>>>{
           {{"alice@corp.example"}, {}},
           {{"ALICE@corp.example"}, {}},
           {{}, {"Alice@Example.com"}},
           {{}, {"alice@corp.example"}},  // a UPN given as an e-mail name
           {{"bob@corp.example", "alice@corp.example"}, {}},
           {{"CN=officer,O=x"}, {}},  // a configured principal
       }) {
    absl::Status st = check(upns, emails, "CN=bob,O=x", enrollee);
    EXPECT_FALSE(st.ok()) << ::testing::PrintToString(upns) << ::testing::PrintToString(emails);
    EXPECT_EQ(st.code(), absl::StatusCode::kPermissionDenied) << st;
    EXPECT_NE(st.message().find("0x80070005"), std::string::npos) << st;
  }
  EXPECT_TRUE(check({"alice@corp.example"}, {}, "CN=admin,O=x", {Role::kCaAdministrator}).ok());
  absl::Status st = check({"alice@corp.example"}, {}, "CN=bob,O=x", enrollee);
  EXPECT_NE(st.message().find("the UPN of the account of \"CN=alice,O=x\""), std::string::npos)
      << st;
}

}  // namespace
}  // namespace keywarden::testing
