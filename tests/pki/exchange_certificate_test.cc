// The client's check of the CA exchange certificate (pki/exchange_certificate.h):
// a good one passes; each broken property is refused by name.
#include "pki/exchange_certificate.h"

#include <ctime>

#include <gtest/gtest.h>

#include "tests/pki/exchange_test_certs.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

class ExchangeCertificateTest : public ::testing::Test {
 protected:
  ArchivalCa ca_;

  pki::ExchangeTrust Trust() const { return pki::ExchangeTrust{{ca_.ca.get()}, {}, 0}; }

  // The refusal for `cert`, checked to be a FailedPrecondition containing `expect`.
  void ExpectRefused(X509* cert, const pki::ExchangeTrust& trust, const std::string& expect) {
    ASSERT_NE(cert, nullptr);
    auto st = pki::VerifyExchangeCertificate(cert, trust);
    ASSERT_FALSE(st.ok()) << "accepted; expected: " << expect;
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_NE(st.message().find(expect), absl::string_view::npos) << st;
    EXPECT_NE(st.message().find("refusing to encrypt the private key"), absl::string_view::npos);
  }

  ossl::UniquePtr<X509> Exchange(const ExchangeCertSpec& spec) {
    return MakeExchangeCert(ca_.ca.get(), ca_.ca_key.get(), ca_.exchange_key.get(), spec);
  }
};

TEST_F(ExchangeCertificateTest, AGoodExchangeCertificatePasses) {
  ASSERT_NE(ca_.exchange, nullptr);
  auto st = pki::VerifyExchangeCertificate(ca_.exchange.get(), Trust());
  EXPECT_TRUE(st.ok()) << st;
  // With the CA given as the operator's trust anchor too.
  pki::ExchangeTrust anchored = Trust();
  anchored.trust_anchors = {ca_.ca.get()};
  st = pki::VerifyExchangeCertificate(ca_.exchange.get(), anchored);
  EXPECT_TRUE(st.ok()) << st;
}

TEST_F(ExchangeCertificateTest, SignedByAnotherKeyIsRefused) {
  auto impostor = SoftwareRsaKey(2048);
  ExchangeCertSpec spec;
  spec.sign_with = impostor.get();  // same issuer name, wrong key
  ExpectRefused(Exchange(spec).get(), Trust(), "is not signed by the CA key");
}

TEST_F(ExchangeCertificateTest, IssuedByAnotherCaIsRefused) {
  auto other_key = SoftwareRsaKey(2048);
  auto other_ca = SelfSignedCa(nullptr, other_key.get(), "Other CA");
  auto foreign = MakeExchangeCert(other_ca.get(), other_key.get(), ca_.exchange_key.get());
  ExpectRefused(foreign.get(), Trust(),
                "was issued by \"CN=Other CA\", not by the CA \"CN=keywarden Test CA\"");
  // Same name, different key: the signature check catches it.
  ArchivalCa same_name;
  ExpectRefused(same_name.exchange.get(), Trust(), "is not signed by the CA key");
}

TEST_F(ExchangeCertificateTest, MissingExchangeEkuIsRefused) {
  ExchangeCertSpec spec;
  spec.exchange_eku = false;
  ExpectRefused(Exchange(spec).get(), Trust(), "no extendedKeyUsage 1.3.6.1.4.1.311.21.5");
}

TEST_F(ExchangeCertificateTest, KeyUsageWithoutKeyEnciphermentIsRefused) {
  ExchangeCertSpec spec;
  spec.key_usage = "critical,digitalSignature";
  ExpectRefused(Exchange(spec).get(), Trust(), "keyUsage without keyEncipherment");
  spec.key_usage = "";
  ExpectRefused(Exchange(spec).get(), Trust(), "no keyUsage extension");
}

TEST_F(ExchangeCertificateTest, ExpiredAndNotYetValidAreRefused) {
  ExchangeCertSpec spec;
  spec.not_before = -10L * 24 * 3600;
  spec.not_after = -3600;
  ExpectRefused(Exchange(spec).get(), Trust(), "expired on ");
  spec.not_before = 3600;
  spec.not_after = 7L * 24 * 3600;
  ExpectRefused(Exchange(spec).get(), Trust(), "is not valid before ");
  // The clock can be given: the good certificate a year from now has expired.
  pki::ExchangeTrust later = Trust();
  later.now = static_cast<int64_t>(std::time(nullptr)) + 365L * 24 * 3600;
  ExpectRefused(ca_.exchange.get(), later, "expired on ");
}

TEST_F(ExchangeCertificateTest, EcExchangeKeyIsRefused) {
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  auto cert = MakeExchangeCert(ca_.ca.get(), ca_.ca_key.get(), ec.get());
  ExpectRefused(cert.get(), Trust(), "key, not RSA");
}

TEST_F(ExchangeCertificateTest, ACaOutsideTheTrustAnchorIsRefused) {
  // The daemon's CA is self-signed; the operator trusts a different root.
  ArchivalCa operator_root;
  pki::ExchangeTrust trust = Trust();
  trust.trust_anchors = {operator_root.ca.get()};
  ExpectRefused(ca_.exchange.get(), trust, "does not chain to a trusted CA");
}

TEST_F(ExchangeCertificateTest, SubordinateCaChainsToTheOperatorsRoot) {
  // root -> issuing CA -> exchange; the daemon sends [issuing CA, root].
  ArchivalCa root;
  auto issuing_key = SoftwareRsaKey(2048);
  ossl::UniquePtr<X509> issuing(X509_new());
  X509_set_version(issuing.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(issuing.get()), 7);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(issuing.get()), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("Issuing CA"), -1, -1, 0);
  X509_set_issuer_name(issuing.get(), X509_get_subject_name(root.ca.get()));
  X509_gmtime_adj(X509_getm_notBefore(issuing.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(issuing.get()), 30L * 24 * 3600);
  X509_set_pubkey(issuing.get(), issuing_key.get());
  ASSERT_TRUE(
      pki::AddExtension(issuing.get(), root.ca.get(), NID_basic_constraints, "critical,CA:TRUE"));
  ASSERT_TRUE(pki::AddExtension(issuing.get(), root.ca.get(), NID_key_usage,
                                "critical,keyCertSign,cRLSign"));
  ASSERT_TRUE(pki::AddExtension(issuing.get(), root.ca.get(), NID_subject_key_identifier, "hash"));
  ASSERT_GT(X509_sign(issuing.get(), root.ca_key.get(), EVP_sha256()), 0);
  auto xchg_key = SoftwareRsaKey(2048);
  auto xchg = MakeExchangeCert(issuing.get(), issuing_key.get(), xchg_key.get());
  ASSERT_NE(xchg, nullptr);

  pki::ExchangeTrust trust{{issuing.get(), root.ca.get()}, {root.ca.get()}, 0};
  auto st = pki::VerifyExchangeCertificate(xchg.get(), trust);
  EXPECT_TRUE(st.ok()) << st;
  // Without an anchor the daemon's root is used; pinning the issuing CA works too.
  trust.trust_anchors.clear();
  EXPECT_TRUE(pki::VerifyExchangeCertificate(xchg.get(), trust).ok());
  trust.trust_anchors = {issuing.get()};
  EXPECT_TRUE(pki::VerifyExchangeCertificate(xchg.get(), trust).ok());
  // An expired issuing CA breaks the path even though the exchange cert is fine.
  X509_gmtime_adj(X509_getm_notBefore(issuing.get()), -30L * 24 * 3600);
  X509_gmtime_adj(X509_getm_notAfter(issuing.get()), -3600);
  ASSERT_GT(X509_sign(issuing.get(), root.ca_key.get(), EVP_sha256()), 0);
  trust.trust_anchors = {root.ca.get()};
  ExpectRefused(xchg.get(), trust, "certificate has expired");
}

TEST_F(ExchangeCertificateTest, MissingInputsAreInvalidArguments) {
  EXPECT_EQ(pki::VerifyExchangeCertificate(nullptr, Trust()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pki::VerifyExchangeCertificate(ca_.exchange.get(), pki::ExchangeTrust{}).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keywarden::testing
