// keywardend end to end: a real daemon on loopback, real tokens, real mTLS;
// everything it issues is checked with the openssl command line.
#include <gtest/gtest.h>
#include <openssl/pem.h>

#include "keywarden/v1/keywarden.grpc.pb.h"
#include "tests/service/daemon_harness.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

std::string DerToPem(const std::string& der, const char* label) {
  ossl::UniquePtr<BIO> b64(BIO_new(BIO_s_mem()));
  PEM_write_bio(b64.get(), label, "", reinterpret_cast<const unsigned char*>(der.data()),
                static_cast<long>(der.size()));
  char* data = nullptr;
  long len = BIO_get_mem_data(b64.get(), &data);
  return std::string(data, static_cast<size_t>(len));
}

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

}  // namespace
}  // namespace keywarden::testing
