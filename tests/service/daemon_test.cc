// keywardend end to end: a real daemon on loopback, real tokens, real mTLS;
// everything it issues is checked with the openssl command line.
#include <chrono>
#include <cstdlib>
#include <thread>
#include <tuple>

#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

class DaemonTest : public ::testing::Test {
 protected:
  void SetUp() override { StartDaemon(DaemonHarness::Options()); }

  void StartDaemon(const DaemonHarness::Options& options) {
    daemon_.reset();
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  // A PKCS#10 made by `openssl req` (an independent implementation).
  std::string MakeCsr(const std::string& subject, const std::string& keyopt = "rsa:2048",
                      const std::string& name = "req") {
    const std::string key = tmp_.File(name + ".key"), csr = tmp_.File(name + ".der");
    auto r = RunCommand("openssl req -new -newkey " + keyopt + " -nodes -subj '" + subject +
                        "' -keyout " + key + " -outform DER -out " + csr);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    auto der = ReadFile(csr);
    return std::string(der.begin(), der.end());
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

  v1::Crl GetCrl() {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::Crl crl;
    EXPECT_TRUE(stub->GetCrl(&ctx, v1::GetCrlRequest(), &crl).ok());
    return crl;
  }

  // openssl verify -crl_check with the daemon's current CRL.
  CommandResult VerifyWithCrl(const std::string& cert_der) {
    WriteFile(tmp_.File("leaf.pem"), DerToPem(cert_der, "CERTIFICATE"));
    WriteFile(tmp_.File("crl.pem"), DerToPem(GetCrl().crl(), "X509 CRL"));
    return RunCommand("openssl verify -crl_check -CAfile " + daemon_->ca_cert_path() +
                      " -CRLfile " + tmp_.File("crl.pem") + " " + tmp_.File("leaf.pem"));
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(DaemonTest, CaCertificateIsTheOneFromTheCeremony) {
  auto stub = v1::Enrollment::NewStub(daemon_->Channel("nobody"));
  grpc::ClientContext ctx;
  v1::CertificateChain chain;
  ASSERT_TRUE(stub->GetCaCertificate(&ctx, v1::GetCaCertificateRequest(), &chain).ok());
  auto file = ReadFile(daemon_->ca_cert_path());
  WriteFile(tmp_.File("got.pem"), DerToPem(chain.certificate(), "CERTIFICATE"));
  auto a = RunCommand("openssl x509 -noout -fingerprint -sha256 -in " + tmp_.File("got.pem"));
  auto b = RunCommand("openssl x509 -noout -fingerprint -sha256 -in " + daemon_->ca_cert_path());
  EXPECT_EQ(a.output, b.output);
}

TEST_F(DaemonTest, ExchangeCertificateChainsToTheCaAndHasTheExchangeProfile) {
  auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::CertificateChain chain;
  auto st = stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(chain.chain_size(), 1);
  WriteFile(tmp_.File("xchg.pem"), DerToPem(chain.certificate(), "CERTIFICATE"));
  auto v =
      RunCommand("openssl verify -CAfile " + daemon_->ca_cert_path() + " " + tmp_.File("xchg.pem"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  auto text = RunCommand("openssl x509 -noout -text -in " + tmp_.File("xchg.pem"));
  EXPECT_NE(text.output.find("CN = keywarden Test CA-Xchg"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("1.3.6.1.4.1.311.21.5"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("Key Encipherment"), std::string::npos) << text.output;
  EXPECT_EQ(text.output.find("Digital Signature"), std::string::npos) << text.output;
}

TEST_F(DaemonTest, Pkcs10IsIssuedAndPassesOpensslVerifyWithCrlCheck) {
  v1::EnrollmentResult result;
  auto st = Submit("enrollee", MakeCsr("/CN=alice web/O=keywarden test"), "User", &result);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(result.disposition(), v1::DISPOSITION_ISSUED);
  EXPECT_GT(result.request_id(), 0);
  auto v = VerifyWithCrl(result.certificate());
  EXPECT_EQ(v.exit_code, 0) << v.output;
  auto text = RunCommand("openssl x509 -noout -text -in " + tmp_.File("leaf.pem"));
  EXPECT_NE(text.output.find("TLS Web Client Authentication"), std::string::npos) << text.output;
}

TEST_F(DaemonTest, PendingRequestIsIssuedOnlyAfterAnOfficerApproves) {
  v1::EnrollmentResult result;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=pending one"), "PendingUser", &result).ok());
  EXPECT_EQ(result.disposition(), v1::DISPOSITION_PENDING);
  EXPECT_EQ(result.message(), "Taken Under Submission");
  EXPECT_TRUE(result.certificate().empty());

  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  {
    grpc::ClientContext ctx;
    v1::ListRequestsRequest in;
    in.set_disposition(v1::DISPOSITION_PENDING);
    v1::ListRequestsResponse list;
    ASSERT_TRUE(officer->ListRequests(&ctx, in, &list).ok());
    ASSERT_EQ(list.requests_size(), 1);
    EXPECT_EQ(list.requests(0).request_id(), result.request_id());
    EXPECT_EQ(list.requests(0).requester(), "CN=alice,O=keywarden test");
  }
  v1::EnrollmentResult approved;
  {
    grpc::ClientContext ctx;
    v1::ApproveRequest in;
    in.set_request_id(result.request_id());
    auto st = officer->Approve(&ctx, in, &approved);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(approved.disposition(), v1::DISPOSITION_ISSUED);
  EXPECT_EQ(VerifyWithCrl(approved.certificate()).exit_code, 0);

  // The requester retrieves it by request id; approving twice is refused.
  auto enroll = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::RetrieveRequest rin;
  rin.set_request_id(result.request_id());
  v1::EnrollmentResult retrieved;
  ASSERT_TRUE(enroll->Retrieve(&ctx, rin, &retrieved).ok());
  EXPECT_EQ(retrieved.certificate(), approved.certificate());
  grpc::ClientContext again_ctx;
  v1::ApproveRequest again;
  again.set_request_id(result.request_id());
  v1::EnrollmentResult ignored;
  auto st = officer->Approve(&again_ctx, again, &ignored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(DetailOf(st).hresult(), 0x80094003u) << st.error_message();
}

TEST_F(DaemonTest, DeniedRequestKeepsItsReasonAndIssuesNothing) {
  v1::EnrollmentResult result;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=to deny"), "PendingUser", &result).ok());
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::DenyRequest in;
  in.set_request_id(result.request_id());
  in.set_reason("not on the list");
  v1::RequestInfo info;
  ASSERT_TRUE(officer->Deny(&ctx, in, &info).ok());
  EXPECT_EQ(info.disposition(), v1::DISPOSITION_DENIED);
  EXPECT_NE(info.message().find("not on the list"), std::string::npos);
  EXPECT_EQ(info.resolved_by(), "CN=officer,O=keywarden test");
  EXPECT_TRUE(info.serial().empty());
}

TEST_F(DaemonTest, OnlyTheRequesterOrAnOfficerMayRetrieve) {
  v1::EnrollmentResult result;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=mine"), "User", &result).ok());
  auto other = v1::Enrollment::NewStub(daemon_->Channel("enrollee2"));
  grpc::ClientContext ctx;
  v1::RetrieveRequest in;
  in.set_request_id(result.request_id());
  v1::EnrollmentResult out;
  auto st = other->Retrieve(&ctx, in, &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  auto officer = v1::Enrollment::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext octx;
  EXPECT_TRUE(officer->Retrieve(&octx, in, &out).ok());
  EXPECT_EQ(out.certificate(), result.certificate());
}

TEST_F(DaemonTest, PolicyRefusalsCarryTheSeedsCodesAndAreRecorded) {
  struct Case {
    std::string csr;
    std::string tmpl;
    uint32_t hresult;
  };
  std::vector<Case> cases = {
      {MakeCsr("/CN=a", "rsa:2048", "a"), "NoSuchTemplate", 0x80094800},  // not offered
      {MakeCsr("/CN=b", "rsa:2048", "b"), "ArchivalUser", 0x80094804},    // needs an archived key
      {MakeCsr("/CN=c", "rsa:2048", "c"), "WebServer", 0x80094811},       // key too small
      {MakeCsr("/CN=d", "rsa:2048", "d"), "", 0x80094801},                // no template at all
  };
  for (const auto& c : cases) {
    v1::EnrollmentResult out;
    auto st = Submit("enrollee", c.csr, c.tmpl, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.tmpl;
    EXPECT_EQ(DetailOf(st).hresult(), c.hresult) << c.tmpl << ": " << st.error_message();
    EXPECT_FALSE(DetailOf(st).symbol().empty());
  }
  // Each is on record as denied, with its code; nothing was issued.
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::ListRequestsResponse list;
  ASSERT_TRUE(officer->ListRequests(&ctx, v1::ListRequestsRequest(), &list).ok());
  ASSERT_EQ(list.requests_size(), 4);
  for (const auto& r : list.requests()) {
    EXPECT_EQ(r.disposition(), v1::DISPOSITION_DENIED);
    EXPECT_NE(r.status_code(), 0u);
    EXPECT_TRUE(r.serial().empty());
  }
  grpc::ClientContext fctx;
  v1::FindCertificatesResponse found;
  v1::FindCertificatesRequest q;
  q.set_subject_contains("CN=");
  ASSERT_TRUE(officer->FindCertificates(&fctx, q, &found).ok());
  for (const auto& c : found.certificates()) EXPECT_EQ(c.template_name(), "CAExchange");
}

TEST_F(DaemonTest, TemplateNamedByOidIsFound) {
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", MakeCsr("/CN=by oid"), "1.3.6.1.4.1.311.21.8.1.1", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.disposition(), v1::DISPOSITION_ISSUED);
}

TEST_F(DaemonTest, EmptySubjectTakesThePrincipalLikeAutoenrollment) {
  ossl::UniquePtr<EVP_PKEY> key;
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", MakeRequestDer("", 2048, &key), "User", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  WriteFile(tmp_.File("auto.pem"), DerToPem(out.certificate(), "CERTIFICATE"));
  auto text = RunCommand("openssl x509 -noout -subject -in " + tmp_.File("auto.pem"));
  EXPECT_NE(text.output.find("CN = alice"), std::string::npos) << text.output;
}

TEST_F(DaemonTest, CmcRequestWithoutArchivalIsIssued) {
  ossl::UniquePtr<EVP_PKEY> key;
  const std::string csr = MakeRequestDer("cmc user", 2048, &key);
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", MakeCmcDer(csr, key.get()), "User", &out);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(out.disposition(), v1::DISPOSITION_ISSUED);
  EXPECT_EQ(VerifyWithCrl(out.certificate()).exit_code, 0);
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::GetRequestRequest g;
  g.set_request_id(out.request_id());
  v1::RequestInfo info;
  ASSERT_TRUE(officer->GetRequest(&ctx, g, &info).ok());
  EXPECT_EQ(info.format(), "cmc");
}

TEST_F(DaemonTest, WindowsArchivalRequestForAnUnknownTemplateIsDeniedLikeTheSeed) {
  auto bytes = ReadFile(std::string(KEYWARDEN_VECTORS) + "/user-enroll-1.der");
  ASSERT_FALSE(bytes.empty()) << "missing test vector in " << KEYWARDEN_VECTORS;
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", std::string(bytes.begin(), bytes.end()), "", &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DetailOf(st).hresult(), 0x80094800u);
  // seed: "The request was for certificate template (1.3.6.1.4.1.311.21.8....) that is
  // not supported by the Certificate Services policy."
  EXPECT_NE(
      st.error_message().find(
          "1.3.6.1.4.1.311.21.8.10998015.4198218.6898329.11679014.10423712.128.12396513.1783547"),
      std::string::npos)
      << st.error_message();
}

TEST_F(DaemonTest, WindowsArchivalRequestWithoutKrasIsRefusedWith8009400a) {
  auto bytes = ReadFile(std::string(KEYWARDEN_VECTORS) + "/user-enroll-2.der");
  ASSERT_FALSE(bytes.empty()) << "missing test vector in " << KEYWARDEN_VECTORS;
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", std::string(bytes.begin(), bytes.end()), "User", &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(DetailOf(st).hresult(), 0x8009400au);
  EXPECT_NE(st.error_message().find("not configured for key archival"), std::string::npos);
}

// Stored as a failed row (issue 13): its reason and code, never its body.
TEST_F(DaemonTest, CmcWithATamperedEncryptedKeyIsRefusedAndOnlyAFailedRowIsStored) {
  auto bytes = ReadFile(std::string(KEYWARDEN_VECTORS) + "/user-enroll-3.der");
  ASSERT_FALSE(bytes.empty()) << "missing test vector in " << KEYWARDEN_VECTORS;
  bytes[bytes.size() - 40] ^= 0x01;  // inside the encrypted key
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", std::string(bytes.begin(), bytes.end()), "User", &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("1.3.6.1.4.1.311.21.21"), std::string::npos)
      << st.error_message();
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::ListRequestsResponse list;
  ASSERT_TRUE(officer->ListRequests(&ctx, v1::ListRequestsRequest(), &list).ok());
  ASSERT_EQ(list.requests_size(), 1);
  EXPECT_EQ(list.requests(0).disposition(), v1::DISPOSITION_FAILED);
  EXPECT_EQ(list.requests(0).status_code(), 0x80090002u);
  EXPECT_FALSE(list.requests(0).has_archived_key());
  EXPECT_NE(list.requests(0).message().find("1.3.6.1.4.1.311.21.21"), std::string::npos);
  EXPECT_EQ(DetailOf(st).hresult(), 0x80090002u) << st.error_message();
}

TEST_F(DaemonTest, RequestWithABrokenSignatureIsRefused) {
  std::string csr = MakeCsr("/CN=tampered");
  csr[csr.size() - 5] ^= 0x01;  // inside the signature
  v1::EnrollmentResult out;
  auto st = Submit("enrollee", csr, "User", &out);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(DetailOf(st).hresult(), 0x80090006u) << st.error_message();
}

TEST_F(DaemonTest, RevokedCertificateFailsCrlCheckAndTheCrlNumberGrows) {
  v1::EnrollmentResult issued;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=to revoke"), "User", &issued).ok());
  ASSERT_EQ(VerifyWithCrl(issued.certificate()).exit_code, 0);
  const int64_t before = GetCrl().crl_number();

  WriteFile(tmp_.File("revoke.pem"), DerToPem(issued.certificate(), "CERTIFICATE"));
  auto serial = RunCommand("openssl x509 -noout -serial -in " + tmp_.File("revoke.pem"));
  std::string hex = serial.output.substr(serial.output.find('=') + 1);
  hex.erase(hex.find_last_not_of("\n") + 1);
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::RevokeRequest in;
  in.set_serial(hex);  // upper case, as openssl prints it
  in.set_reason(1);    // keyCompromise
  v1::CertificateInfo info;
  auto st = officer->Revoke(&ctx, in, &info);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_TRUE(info.revoked());

  EXPECT_GT(GetCrl().crl_number(), before);
  auto v = VerifyWithCrl(issued.certificate());
  EXPECT_NE(v.exit_code, 0);
  EXPECT_NE(v.output.find("certificate revoked"), std::string::npos) << v.output;
  auto crl_text = RunCommand("openssl crl -noout -text -in " + tmp_.File("crl.pem"));
  EXPECT_NE(crl_text.output.find("Key Compromise"), std::string::npos) << crl_text.output;

  // Twice, unknown serial, bad reason: each refused clearly.
  for (auto [serial_text, reason, code] :
       {std::tuple{hex, 1, grpc::StatusCode::FAILED_PRECONDITION},
        std::tuple{std::string("0badc0de"), 1, grpc::StatusCode::NOT_FOUND},
        std::tuple{hex, 7, grpc::StatusCode::INVALID_ARGUMENT},
        std::tuple{std::string("not hex!"), 0, grpc::StatusCode::INVALID_ARGUMENT}}) {
    grpc::ClientContext c2;
    v1::RevokeRequest r2;
    r2.set_serial(serial_text);
    r2.set_reason(reason);
    EXPECT_EQ(officer->Revoke(&c2, r2, &info).error_code(), code) << serial_text << " " << reason;
  }
}

TEST_F(DaemonTest, ExchangeCertificateIsRenewedInsideTheOverlapAndTheOldOneKept) {
  DaemonHarness::Options options;
  // Wide margins: on a loaded machine the steps below take seconds.
  options.exchange_validity = "30s";
  options.exchange_overlap = "20s";
  StartDaemon(options);
  auto enroll = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  auto fetch = [&] {
    grpc::ClientContext ctx;
    v1::CertificateChain chain;
    EXPECT_TRUE(
        enroll->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain).ok());
    return chain.certificate();
  };
  const std::string first = fetch();
  EXPECT_EQ(fetch(), first);  // still more than the overlap left
  std::this_thread::sleep_for(std::chrono::milliseconds(10500));
  const std::string second = fetch();
  EXPECT_NE(second, first);
  WriteFile(tmp_.File("x2.pem"), DerToPem(second, "CERTIFICATE"));
  EXPECT_EQ(
      RunCommand("openssl verify -CAfile " + daemon_->ca_cert_path() + " " + tmp_.File("x2.pem"))
          .exit_code,
      0);

  auto admin = v1::Administration::NewStub(daemon_->Channel("admin"));
  grpc::ClientContext ctx;
  v1::CaStatus status;
  ASSERT_TRUE(admin->GetCaStatus(&ctx, v1::GetCaStatusRequest(), &status).ok());
  ASSERT_EQ(status.exchange_size(), 2);  // the old one is kept until it expires
  EXPECT_TRUE(status.exchange(0).current());
  EXPECT_FALSE(status.exchange(1).current());
}

TEST_F(DaemonTest, ExchangeCertificateIsRenewedEvenWhenNobodyAsks) {
  DaemonHarness::Options options;
  options.exchange_validity = "8s";
  options.exchange_overlap = "5s";
  StartDaemon(options);
  auto admin = v1::Administration::NewStub(daemon_->Channel("admin"));
  auto serials = [&] {
    grpc::ClientContext ctx;
    v1::CaStatus status;
    EXPECT_TRUE(admin->GetCaStatus(&ctx, v1::GetCaStatusRequest(), &status).ok());
    std::vector<std::string> out;
    for (const auto& x : status.exchange()) out.push_back(x.serial());
    return out;
  };
  // GetCaStatus itself may renew; wait past the overlap without fetching
  // and check the audit log shows a renewal by the daemon on its own.
  std::this_thread::sleep_for(std::chrono::milliseconds(5500));
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::ReadAuditResponse records;
  ASSERT_TRUE(audit->ReadAudit(&ctx, v1::ReadAuditRequest(), &records).ok());
  int renewals = 0;
  for (const auto& r : records.records()) renewals += r.event() == "exchange.renewed";
  EXPECT_GE(renewals, 2) << "only the start-up exchange certificate was made";
  EXPECT_GE(serials().size(), 2u);
}

TEST_F(DaemonTest, EverythingSurvivesARestartAndTheAuditChainVerifies) {
  v1::EnrollmentResult issued, pending;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=persist", "rsa:2048", "p1"), "User", &issued).ok());
  ASSERT_TRUE(
      Submit("enrollee", MakeCsr("/CN=later", "rsa:2048", "p2"), "PendingUser", &pending).ok());
  auto xchg_before = [&] {
    auto s = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CertificateChain c;
    EXPECT_TRUE(s->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &c).ok());
    return c.certificate();
  };
  const std::string xchg = xchg_before();
  const int64_t crl_number = GetCrl().crl_number();
  ASSERT_TRUE(daemon_->Restart().ok());

  auto enroll = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
  grpc::ClientContext ctx;
  v1::RetrieveRequest in;
  in.set_request_id(issued.request_id());
  v1::EnrollmentResult again;
  ASSERT_TRUE(enroll->Retrieve(&ctx, in, &again).ok());
  EXPECT_EQ(again.certificate(), issued.certificate());
  EXPECT_EQ(xchg_before(), xchg);                // same exchange key after restart
  EXPECT_GE(GetCrl().crl_number(), crl_number);  // CRL numbers never go back

  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext actx;
  v1::ApproveRequest approve;
  approve.set_request_id(pending.request_id());
  v1::EnrollmentResult approved;
  EXPECT_TRUE(officer->Approve(&actx, approve, &approved).ok());  // pending survived too

  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext vctx;
  v1::VerifyAuditResponse verdict;
  ASSERT_TRUE(audit->VerifyAudit(&vctx, v1::VerifyAuditRequest(), &verdict).ok());
  EXPECT_TRUE(verdict.ok()) << verdict.problem();
  EXPECT_GT(verdict.records(), 8);
  grpc::ClientContext rctx;
  v1::ReadAuditResponse records;
  ASSERT_TRUE(audit->ReadAudit(&rctx, v1::ReadAuditRequest(), &records).ok());
  std::string events;
  for (const auto& r : records.records()) events += r.event() + " ";
  for (const char* e :
       {"service.started", "service.stopped", "request.received", "request.issued",
        "request.pending", "request.approved", "crl.published", "exchange.renewed"}) {
    EXPECT_NE(events.find(e), std::string::npos) << e << " missing from: " << events;
  }
}

TEST_F(DaemonTest, AnEditedAuditRecordIsDetected) {
  v1::EnrollmentResult issued;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=audited"), "User", &issued).ok());
  ASSERT_TRUE(daemon_->Stop().ok());
  // An attacker with the database file: drop the append-only triggers, edit a row.
  auto edit =
      RunCommand("sqlite3 " + daemon_->db_path() +
                 " \"SELECT name FROM sqlite_master WHERE type='trigger'\" | while read t; do "
                 "sqlite3 " +
                 daemon_->db_path() + " \"DROP TRIGGER $t\"; done; sqlite3 " + daemon_->db_path() +
                 " \"UPDATE audit SET principal='CN=someone else' WHERE event='request.issued'\"");
  ASSERT_EQ(edit.exit_code, 0) << edit.output;
  const std::string seq = RunCommand("sqlite3 " + daemon_->db_path() +
                                     " \"SELECT seq FROM audit WHERE event='request.issued'\"")
                              .output;
  ASSERT_FALSE(seq.empty());
  // The daemon refuses to start on it, naming the record.
  absl::Status refused = daemon_->Restart();
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(std::string(refused.message()),
                       "refusing to start: the audit log does not verify: audit chain broken at "
                       "seq " +
                           seq.substr(0, seq.find('\n')) + ": record edited"))
      << refused;
  // Told to, it starts, and says so in the audit log; the log still does
  // not verify.
  daemon_->set_daemon_args({"--accept-broken-audit"});
  ASSERT_TRUE(daemon_->Restart().ok());
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse verdict;
  ASSERT_TRUE(audit->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &verdict).ok());
  EXPECT_FALSE(verdict.ok());
  EXPECT_NE(verdict.problem().find("edited"), std::string::npos) << verdict.problem();
  grpc::ClientContext rctx;
  v1::ReadAuditResponse records;
  ASSERT_TRUE(audit->ReadAudit(&rctx, v1::ReadAuditRequest(), &records).ok());
  bool accepted = false;
  for (const auto& r : records.records()) {
    if (r.event() == "audit.broken_accepted") {
      accepted = true;
      EXPECT_NE(r.details().find("record edited"), std::string::npos) << r.details();
      EXPECT_NE(r.details().find("--accept-broken-audit"), std::string::npos) << r.details();
    }
  }
  EXPECT_TRUE(accepted) << "no audit.broken_accepted record";
}

std::vector<uint8_t> FromHex(const std::string& hex) {
  std::vector<uint8_t> out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return out;
}

std::string Sqlite(const std::string& db, const std::string& sql) {
  auto r = RunCommand("sqlite3 " + db + " \"" + sql + "\"");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  std::string out = r.output;
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

TEST_F(DaemonTest, ACleanStopLeavesACheckpointOfTheHeadThatOpensslVerifies) {
  v1::EnrollmentResult issued;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=checkpointed"), "User", &issued).ok());
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db = daemon_->db_path();
  const std::string head = Sqlite(db, "SELECT max(seq) FROM audit");
  EXPECT_EQ(Sqlite(db, "SELECT event FROM audit WHERE seq = " + head), "service.stopped");
  EXPECT_EQ(Sqlite(db, "SELECT seq FROM audit_checkpoints ORDER BY number DESC LIMIT 1"), head);
  const std::string file = tmp_.File("checkpoint.der");
  WriteFile(file, FromHex(Sqlite(db,
                                 "SELECT hex(der) FROM audit_checkpoints ORDER BY number DESC "
                                 "LIMIT 1")));
  // Signed by the CA key on the token, verified with the CA certificate by
  // openssl alone; the body names the head's seq and hash.
  auto v = RunCommand("openssl cms -verify -binary -inform DER -purpose any -in " + file +
                      " -CAfile " + daemon_->ca_cert_path());
  ASSERT_EQ(v.exit_code, 0) << v.output;
  EXPECT_TRUE(Contains(v.output, "Verification successful")) << v.output;
  EXPECT_TRUE(Contains(
      v.output, "\"seq\":" + head + ",\"hash\":\"" +
                    Sqlite(db, "SELECT lower(hex(hash)) FROM audit WHERE seq = " + head) + "\""))
      << v.output;
  // Another CA's certificate does not verify it.
  auto other = RunCommand("openssl cms -verify -binary -inform DER -purpose any -in " + file +
                          " -CAfile " + daemon_->tls_ca_path());
  EXPECT_NE(other.exit_code, 0) << other.output;
}

TEST_F(DaemonTest, DroppedAuditTriggersStopTheDaemonAndAreNotQuietlyRestored) {
  ASSERT_TRUE(daemon_->Stop().ok());
  const std::string db = daemon_->db_path();
  Sqlite(db, "DROP TRIGGER audit_no_update;");
  absl::Status refused = daemon_->Restart();
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(std::string(refused.message()), "refusing to start")) << refused;
  EXPECT_TRUE(Contains(std::string(refused.message()), "audit_no_update (missing)")) << refused;
  // Started with the flag, the daemon says so and leaves the schema as it
  // found it: the operator sees the same at every start.
  daemon_->set_daemon_args({"--accept-broken-audit"});
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Sqlite(db, "SELECT count(*) FROM sqlite_master WHERE name = 'audit_no_update'"), "0");
  EXPECT_EQ(Sqlite(db, "SELECT count(*) FROM audit WHERE event = 'audit.broken_accepted'"), "1");
}

TEST_F(DaemonTest, PeriodicCheckpointsSignTheHeadWhileRunning) {
  DaemonHarness::Options options;
  options.extra_toml = "\n[audit]\ncheckpoint_interval = \"1s\"\n";
  StartDaemon(options);
  v1::EnrollmentResult issued;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=periodic"), "User", &issued).ok());
  const std::string db = daemon_->db_path();
  const std::string issued_seq =
      Sqlite(db, "SELECT max(seq) FROM audit WHERE event = 'request.issued'");
  ASSERT_FALSE(issued_seq.empty());
  // Within a few seconds, with the daemon still running, a checkpoint
  // vouches for the issuance.
  std::string signed_seq;
  for (int i = 0; i < 100; ++i) {
    signed_seq = Sqlite(db, "SELECT coalesce(max(seq), 0) FROM audit_checkpoints");
    if (std::stoll(signed_seq) >= std::stoll(issued_seq)) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_GE(std::stoll(signed_seq), std::stoll(issued_seq));
  // No checkpoint is made while nothing is appended (one per head).
  EXPECT_EQ(Sqlite(db, "SELECT count(*) FROM audit_checkpoints"),
            Sqlite(db, "SELECT count(DISTINCT seq) FROM audit_checkpoints"));
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse verdict;
  ASSERT_TRUE(audit->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &verdict).ok());
  EXPECT_TRUE(verdict.ok()) << verdict.problem();
  EXPECT_GE(verdict.checkpoints(), 1);
  EXPECT_GE(verdict.signed_seq(), std::stoll(issued_seq));
}

TEST_F(DaemonTest, TruncatedAuditLogStopsTheDaemonAndTheAuditorsCheckpointCatchesIt) {
  v1::EnrollmentResult issued;
  ASSERT_TRUE(Submit("enrollee", MakeCsr("/CN=truncated"), "User", &issued).ok());
  // The auditor exports the newest checkpoint (the daemon signs its head).
  const std::string conn =
      StrCat(" --server ", daemon_->target(), " --server-ca ", daemon_->tls_ca_path(),
             " --client-cert ", daemon_->client("auditor").cert_path, " --client-key ",
             daemon_->client("auditor").key_path, " ");
  const std::string held = tmp_.File("held.der");
  auto exported = RunCommand(StrCat(KEYWARDEN_CLI, conn, "audit checkpoint --out ", held));
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  // What the auditor holds opens with openssl and the CA certificate, as
  // DER (--out) and as the PEM printed without it.
  auto der_ok = RunCommand(StrCat("openssl cms -verify -binary -inform DER -purpose any -in ", held,
                                  " -CAfile ", daemon_->ca_cert_path()));
  EXPECT_EQ(der_ok.exit_code, 0) << der_ok.output;
  EXPECT_TRUE(Contains(der_ok.output, "\"type\":\"keywarden-audit-checkpoint\"")) << der_ok.output;
  const std::string pem = tmp_.File("held.pem");
  ASSERT_EQ(RunCommand(StrCat(KEYWARDEN_CLI, conn, "audit checkpoint > ", pem)).exit_code, 0);
  auto pem_ok = RunCommand(StrCat("openssl cms -verify -binary -inform PEM -purpose any -in ", pem,
                                  " -CAfile ", daemon_->ca_cert_path()));
  EXPECT_EQ(pem_ok.exit_code, 0) << pem_ok.output;
  auto online = RunCommand(StrCat(KEYWARDEN_CLI, conn, "audit verify --checkpoint ", held,
                                  " --ca-cert ", daemon_->ca_cert_path()));
  EXPECT_EQ(online.exit_code, 0) << online.output;
  // Only Auditors export checkpoints.
  const std::string officer =
      StrCat(" --server ", daemon_->target(), " --server-ca ", daemon_->tls_ca_path(),
             " --client-cert ", daemon_->client("officer").cert_path, " --client-key ",
             daemon_->client("officer").key_path, " ");
  EXPECT_EQ(RunCommand(StrCat(KEYWARDEN_CLI, officer, "audit checkpoint")).exit_code, 3);
  ASSERT_TRUE(daemon_->Stop().ok());

  // The insider removes the newest record (service.stopped) and puts the
  // trigger back.
  const std::string db = daemon_->db_path();
  const std::string head = Sqlite(db, "SELECT max(seq) FROM audit");
  const std::string trigger =
      Sqlite(db, "SELECT sql FROM sqlite_master WHERE name = 'audit_no_delete'");
  Sqlite(db, "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = " + head + "; " +
                 trigger + ";");
  absl::Status refused = daemon_->Restart();
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(std::string(refused.message()),
                       StrCat("refusing to start: the audit log does not verify: the newest record "
                              "is seq ",
                              std::stoll(head) - 1)))
      << refused;
  EXPECT_TRUE(Contains(std::string(refused.message()), "--accept-broken-audit")) << refused;

  // Offline, the auditor's checkpoint (older than the stop) still verifies
  // against what is left... and the stored one shows the truncation.
  auto offline = RunCommand(StrCat(KEYWARDEN_CLI, " audit verify --database ", db, " --checkpoint ",
                                   held, " --ca-cert ", daemon_->ca_cert_path()));
  EXPECT_EQ(offline.exit_code, 1) << offline.output;
  EXPECT_TRUE(Contains(offline.output, "the log was truncated")) << offline.output;

  // Told to start anyway: it does, says so in the log, and numbering goes
  // on after the removed record.
  daemon_->set_daemon_args({"--accept-broken-audit"});
  ASSERT_TRUE(daemon_->Restart().ok());
  EXPECT_EQ(Sqlite(db, "SELECT min(seq) FROM audit WHERE event = 'audit.broken_accepted'"),
            std::to_string(std::stoll(head) + 1));
  EXPECT_TRUE(
      daemon_->WaitForLog("WARNING: starting on an audit log that does not verify", 1).ok());
}

TEST_F(DaemonTest, BadBytesOnEveryRpcThatTakesThemAreInvalidArgumentAndChangeNothing) {
  std::string good = MakeCsr("/CN=good");
  const auto ca_pem = ReadFile(daemon_->ca_cert_path());
  std::string random(3000, '\0');
  for (auto& c : random) c = static_cast<char>(std::rand());
  const std::vector<std::pair<std::string, std::string>> inputs = {
      {"empty", ""},
      {"truncated", good.substr(0, good.size() / 2)},
      {"random", random},
      {"trailing garbage", good + "xyz"},
      {"over the field's limit", std::string(512 << 10, '\x30')},
      {"pem garbage",
       "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n"},
      {"a certificate, not a request", std::string(ca_pem.begin(), ca_pem.end())},
  };
  for (const auto& [name, bytes] : inputs) {
    v1::EnrollmentResult out;
    auto st = Submit("enrollee", bytes, "User", &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << name << ": " << st.error_message();
    EXPECT_FALSE(st.error_message().empty()) << name;
  }
  // Over the largest legitimate message: gRPC's own refusal, with a message.
  {
    v1::EnrollmentResult out;
    auto st = Submit("enrollee", std::string(8 << 20, '\x30'), "User", &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << st.error_message();
    EXPECT_NE(st.error_message().find("larger than max"), std::string::npos) << st.error_message();
  }
  // The daemon still serves, and no request was recorded for any of them.
  v1::EnrollmentResult ok;
  ASSERT_TRUE(Submit("enrollee", good, "User", &ok).ok());
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::ListRequestsResponse list;
  ASSERT_TRUE(officer->ListRequests(&ctx, v1::ListRequestsRequest(), &list).ok());
  EXPECT_EQ(list.requests_size(), 1);
  // Unknown ids and serials: clear NOT_FOUND.
  grpc::ClientContext gctx;
  v1::GetRequestRequest g;
  g.set_request_id(987654);
  v1::RequestInfo info;
  EXPECT_EQ(officer->GetRequest(&gctx, g, &info).error_code(), grpc::StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace keywarden::testing
