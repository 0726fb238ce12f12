// Trust at the door, tried the way an outsider would (ARCHITECTURE.md §10):
// an enrollee tries to become a Certificate Manager through enrolment, a
// certificate with an officer's subject from another issuer, a revoked
// officer, a client revoked on its CA's CRL, a client CA without a current
// CRL, pinned certificates, and who may enrol for which template.
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include <gtest/gtest.h>
#include <openssl/x509.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

constexpr char kOfficer2[] = "CN=officer2,O=keywarden test";
constexpr char kRootAdmin[] = "CN=root admin,O=keywarden test";

// Principals and templates these tests add to the harness's own.
const std::string kTrustToml = std::string(kOwnCaClientsToml) + R"(
[[template]]
name = "Restricted"
extended_key_usage = ["emailProtection"]
key_types = ["ec"]
min_key_bits = 256
subject = "principal"
enrollees = ["CN=bob,O=keywarden test"]

[[template]]
name = "KeyRecoveryAgent"
key_usage = ["keyEncipherment"]
extended_key_usage = ["1.3.6.1.4.1.311.21.6"]
enrollees = ["CN=bob,O=keywarden test"]
)";

class TrustTest : public ::testing::Test {
 protected:
  void Start(DaemonHarness::Options options = {}) {
    options.trust_own_ca = true;
    options.extra_clients.emplace("root", kRootAdmin);
    options.extra_toml += kTrustToml;
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  grpc::Status Submit(const std::string& who, const std::string& csr, const std::string& tmpl,
                      v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(csr);
    in.set_template_name(tmpl);
    return stub->Submit(&ctx, in, out);
  }

  // `who` asks this CA for a client certificate for `subject`; on success it
  // becomes a client named `as` of the harness.
  grpc::Status Enrol(const std::string& who, const std::string& subject, const std::string& as,
                     v1::EnrollmentResult* out) {
    ossl::UniquePtr<EVP_PKEY> key;
    grpc::Status st = Submit(who, MakeEcRequestDer(subject, &key), "ClientAuth", out);
    if (!st.ok() || out->disposition() != v1::DISPOSITION_ISSUED) return st;
    const unsigned char* p = reinterpret_cast<const unsigned char*>(out->certificate().data());
    ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(out->certificate().size())));
    ClientIdentity id{subject, daemon_->dir().File("tls/" + as + ".pem"),
                      daemon_->dir().File("tls/" + as + ".key")};
    WriteFile(id.cert_path, ToPem(cert.get()));
    WriteFile(id.key_path, PrivateKeyPem(key.get()));
    daemon_->AddClient(as, id);
    return st;
  }

  grpc::Status ListRequests(const std::shared_ptr<grpc::Channel>& channel) {
    auto stub = v1::Officer::NewStub(channel);
    grpc::ClientContext ctx;
    v1::ListRequestsResponse out;
    return stub->ListRequests(&ctx, v1::ListRequestsRequest(), &out);
  }

  grpc::Status GetCaCertificate(const std::string& who) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::CertificateChain out;
    return stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &out);
  }

  std::vector<v1::AuditRecord> Audit(const std::string& event) {
    return AuditRecordsViaRpc(daemon_->Channel("auditor"), event);
  }

  grpc::Status Revoke(const std::string& serial, int reason) {
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::RevokeRequest in;
    in.set_serial(serial);
    in.set_reason(reason);
    v1::CertificateInfo out;
    return stub->Revoke(&ctx, in, &out);
  }

  std::unique_ptr<DaemonHarness> daemon_;
};

std::string SerialOf(const v1::EnrollmentResult& r) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(r.certificate().data());
  ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(r.certificate().size())));
  ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
  char* hex = BN_bn2hex(bn.get());
  std::string out = AsciiLower(hex);
  OPENSSL_free(hex);
  return out;
}

TEST_F(TrustTest, AnEnrolleeCannotEnrolACertificateNamingAConfiguredPrincipal) {
  ASSERT_NO_FATAL_FAILURE(Start());
  // The escalation of the report: an officer's subject, from this CA (whose
  // certificates the daemon accepts as client certificates).
  for (const std::string subject : {kOfficer2, "CN=officer,O=keywarden test", kRootAdmin}) {
    v1::EnrollmentResult out;
    grpc::Status st = Enrol("enrollee", subject, "stolen", &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << subject;
    EXPECT_EQ(HResultOf(st), 0x80070005u) << subject;
    EXPECT_TRUE(Contains(st.error_message(), "the certificate would name \"" + subject + "\""))
        << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), "only a CA Administrator")) << st.error_message();
    EXPECT_TRUE(out.certificate().empty());
  }
  auto refused = Audit("request.names_principal");
  ASSERT_EQ(refused.size(), 3u);
  EXPECT_EQ(refused[0].principal(), "policy");
  EXPECT_TRUE(Contains(refused[0].details(), "CN=alice,O=keywarden test"));
  // Nothing was issued for any of them.
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::FindCertificatesRequest find;
  find.set_subject_contains("officer");
  v1::FindCertificatesResponse found;
  ASSERT_TRUE(officer->FindCertificates(&ctx, find, &found).ok());
  EXPECT_EQ(found.certificates_size(), 0);
}

TEST_F(TrustTest, ThePrincipalItselfMayEnrolItsOwnSubjectWhenItGainsNothing) {
  ASSERT_NO_FATAL_FAILURE(Start());
  v1::EnrollmentResult out;
  grpc::Status st = Enrol("enrollee", "CN=alice,O=keywarden test", "alice-again", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.disposition(), v1::DISPOSITION_ISSUED) << out.message();
  // But not a subject bound to more roles than the requester holds: bob is
  // an enrollee too, alice may not have "his" certificate.
  v1::EnrollmentResult bob;
  st = Enrol("enrollee", "CN=bob,O=keywarden test", "bob-again", &bob);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
}

TEST_F(TrustTest, ACertificateWithAnOfficersSubjectFromAnotherIssuerGetsNoRole) {
  ASSERT_NO_FATAL_FAILURE(Start());
  // A CA Administrator may have this CA issue a certificate with the
  // officer's subject; the officer's role is bound to the TLS CA, though.
  v1::EnrollmentResult out;
  grpc::Status st = Enrol("root", "CN=officer,O=keywarden test", "fake-officer", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(out.disposition(), v1::DISPOSITION_ISSUED) << out.message();

  EXPECT_TRUE(GetCaCertificate("fake-officer").ok());   // authenticated...
  st = ListRequests(daemon_->Channel("fake-officer"));  // ...with no role
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x80070005u);
  // The real officer still is one.
  EXPECT_TRUE(ListRequests(daemon_->Channel("officer")).ok());
}

TEST_F(TrustTest, ARevokedOfficerIsRefusedOnItsNextCallWithoutARestart) {
  ASSERT_NO_FATAL_FAILURE(Start());
  v1::EnrollmentResult out;
  grpc::Status st = Enrol("root", kOfficer2, "officer2", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(out.disposition(), v1::DISPOSITION_ISSUED) << out.message();
  auto channel = daemon_->Channel("officer2");
  ASSERT_TRUE(ListRequests(channel).ok());

  ASSERT_TRUE(Revoke(SerialOf(out), 1).ok());
  // The same connection, the very next call.
  st = ListRequests(channel);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x800b010cu);
  EXPECT_TRUE(Contains(st.error_message(), "revoked by CN=keywarden Test CA,O=keywarden test on "))
      << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "reason keyCompromise")) << st.error_message();
  // Every further call is refused; the audit log has one record a minute.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(ListRequests(daemon_->Channel("officer2")).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  auto refused = Audit("authz.revoked");
  ASSERT_EQ(refused.size(), 1u);
  EXPECT_EQ(refused[0].principal(), kOfficer2);
  EXPECT_TRUE(Contains(refused[0].details(), SerialOf(out)));

  // And after a restart, from the database.
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(ListRequests(daemon_->Channel("officer2")).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
}

TEST_F(TrustTest, AClientRevokedOnItsCasCrlIsRefusedOnceTheFileChanges) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(ListRequests(daemon_->Channel("officer")).ok());
  ASSERT_TRUE(daemon_->RevokeTlsClient("officer", 1).ok());
  grpc::Status st;
  for (int i = 0; i < 50; ++i) {  // the daemon looks at the file at most once a second
    st = ListRequests(daemon_->Channel("officer"));
    if (!st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x800b010cu);
  EXPECT_TRUE(Contains(st.error_message(), "revoked by CN=keywarden test TLS CA"))
      << st.error_message();
  // Nobody else is affected.
  EXPECT_TRUE(ListRequests(daemon_->Channel("admin-officer")).ok());
  EXPECT_TRUE(GetCaCertificate("enrollee").ok());
}

TEST_F(TrustTest, AClientCaWithoutACurrentCrlIsRefusedAsACaSideCondition) {
  DaemonHarness::Options options;
  options.tls_crl = false;
  ASSERT_NO_FATAL_FAILURE(Start(options));
  grpc::Status st = GetCaCertificate("enrollee");
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x80092013u);
  EXPECT_TRUE(Contains(st.error_message(), "no current CRL of CN=keywarden test TLS CA"))
      << st.error_message();
  // A client of this CA itself needs no file: its revocations are live.
  // (root's certificate is the TLS CA's, so it is refused too.)
  EXPECT_EQ(GetCaCertificate("root").error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TrustTest, AnExpiredCrlStopsBeingCurrent) {
  ASSERT_NO_FATAL_FAILURE(Start());
  ASSERT_TRUE(GetCaCertificate("enrollee").ok());
  ASSERT_TRUE(daemon_->WriteTlsCrl(-7200, -60).ok());
  grpc::Status st;
  for (int i = 0; i < 50; ++i) {
    st = GetCaCertificate("enrollee");
    if (!st.ok()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
  EXPECT_EQ(HResultOf(st), 0x80092013u);
}

TEST_F(TrustTest, AClientCaMayBeDeclaredUsableWithoutACrl) {
  DaemonHarness::Options options;
  options.tls_crl = false;
  options.tls_crl_optional = true;
  ASSERT_NO_FATAL_FAILURE(Start(options));
  EXPECT_TRUE(GetCaCertificate("enrollee").ok());
  EXPECT_TRUE(ListRequests(daemon_->Channel("officer")).ok());
}

TEST_F(TrustTest, APinnedCertificateHoldsItsRolesWhateverItsSubject) {
  DaemonHarness::Options options;
  options.before_launch = [](DaemonHarness& h) -> absl::Status {
    auto certs = pki::ReadPemCertificates(h.client("nobody").cert_path);
    if (!certs.ok()) return certs.status();
    std::vector<uint8_t> toml = ReadFile(h.config_path());
    std::string text(toml.begin(), toml.end());
    text += StrCat("\n[[role]]\ncertificate_sha256 = \"",
                   pki::Sha256Thumbprint(certs->front().get()), "\"\nroles = [\"auditor\"]\n");
    WriteFile(h.config_path(), text);
    return absl::OkStatus();
  };
  ASSERT_NO_FATAL_FAILURE(Start(options));
  auto stub = v1::Audit::NewStub(daemon_->Channel("nobody"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse out;
  grpc::Status st = stub->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &out);
  EXPECT_TRUE(st.ok()) << st.error_message();
  // Another certificate with the same subject is not pinned.
  v1::EnrollmentResult again;
  ASSERT_TRUE(Enrol("root", "CN=nobody,O=keywarden test", "nobody-again", &again).ok());
  auto other = v1::Audit::NewStub(daemon_->Channel("nobody-again"));
  grpc::ClientContext ctx2;
  EXPECT_EQ(other->VerifyAudit(&ctx2, v1::VerifyAuditRequest(), &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

TEST_F(TrustTest, AClientCaRemovedOnSighupCutsOffItsOpenConnections) {
  ASSERT_NO_FATAL_FAILURE(Start());
  auto open = daemon_->Channel("officer");
  ASSERT_TRUE(ListRequests(open).ok());
  // The operator replaces the TLS client CA file (here: with another CA).
  WriteFile(daemon_->tls_ca_path() + ".new", ReadFile(daemon_->untrusted_ca_path()));
  ASSERT_EQ(std::rename((daemon_->tls_ca_path() + ".new").c_str(), daemon_->tls_ca_path().c_str()),
            0);
  ASSERT_TRUE(daemon_->Signal(SIGHUP).ok());
  ASSERT_TRUE(daemon_->WaitForLog("keywardend: SIGHUP: reloaded", 1).ok());
  // The connection made before is refused at its next call, at the door.
  grpc::Status st = ListRequests(open);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAUTHENTICATED) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "does not chain to a client CA")) << st.error_message();
  // New connections of its clients fail at the handshake.
  EXPECT_EQ(GetCaCertificate("enrollee").error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST_F(TrustTest, EachTemplateSaysWhoMayEnrolForIt) {
  ASSERT_NO_FATAL_FAILURE(Start());
  for (const std::string tmpl : {"Restricted", "KeyRecoveryAgent"}) {
    ossl::UniquePtr<EVP_PKEY> key;
    const std::string csr = tmpl == "KeyRecoveryAgent"
                                ? MakeRequestDer("KRA", 2048, &key)
                                : MakeEcRequestDer("CN=alice,O=keywarden test", &key);
    v1::EnrollmentResult out;
    grpc::Status st = Submit("enrollee", csr, tmpl, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << tmpl;
    EXPECT_EQ(HResultOf(st), 0x80094012u) << tmpl;
    EXPECT_TRUE(Contains(st.error_message(),
                         "CN=alice,O=keywarden test may not enrol for template " + tmpl))
        << st.error_message();
  }
  // bob is listed for both.
  ossl::UniquePtr<EVP_PKEY> key;
  v1::EnrollmentResult out;
  grpc::Status st = Submit("enrollee2", MakeEcRequestDer("CN=ignored", &key), "Restricted", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.disposition(), v1::DISPOSITION_ISSUED) << out.message();
  // The refusals are on record as denied requests.
  auto denied = Audit("request.denied");
  int template_denied = 0;
  for (const auto& r : denied) {
    if (Contains(r.details(), "may not enrol for template")) ++template_denied;
  }
  EXPECT_EQ(template_denied, 2);
}

}  // namespace
}  // namespace keywarden::testing
