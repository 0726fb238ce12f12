// CMC Full PKI Responses: what BuildCmcResponse makes verifies with the CA
// certificate, and VerifyCmcResponse refuses a response whose signature or
// signed content was changed, or that another key signed.
#include "pki/cmc_response.h"

#include <openssl/cms.h>

#include <algorithm>

#include <gtest/gtest.h>

#include "pki/certificate.h"
#include "tests/test_util.h"

namespace keywarden::pki {
namespace {

using testing::SelfSignedCa;
using testing::SoftwareRsaKey;

struct Signed {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
  std::vector<uint8_t> der;
};

Signed MakeResponse(const std::string& cn) {
  Signed s;
  s.key = SoftwareRsaKey(2048);
  s.cert = SelfSignedCa(nullptr, s.key.get(), cn);
  CmcResponseSpec spec;
  spec.status = CmcStatus::kPending;
  spec.status_string = "Taken Under Submission";
  spec.encrypted_key_hash = std::vector<uint8_t>(20, 0x5a);
  auto der = BuildCmcResponse(nullptr, nullptr, s.key.get(), s.cert.get(), spec);
  EXPECT_TRUE(der.ok()) << der.status();
  if (der.ok()) s.der = std::move(*der);
  return s;
}

// Where `needle` starts in `hay` (npos when absent).
size_t Find(const std::vector<uint8_t>& hay, const std::string& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? std::string::npos : static_cast<size_t>(it - hay.begin());
}

TEST(CmcResponseTest, WhatIsBuiltVerifiesWithTheCaCertificate) {
  Signed s = MakeResponse("CMC Test CA");
  ASSERT_FALSE(s.der.empty());
  absl::Status st = VerifyCmcResponse(s.der, s.cert.get());
  EXPECT_TRUE(st.ok()) << st;
}

TEST(CmcResponseTest, AChangedSignatureIsRefused) {
  Signed s = MakeResponse("CMC Test CA");
  ASSERT_FALSE(s.der.empty());
  // The SignerInfo's signature value is the last element of the DER: the
  // last byte belongs to it (RSA-2048: 256 bytes).
  std::vector<uint8_t> bad = s.der;
  bad.back() ^= 0x01;
  absl::Status st = VerifyCmcResponse(bad, s.cert.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("does not verify"), std::string::npos) << st;
  bad = s.der;
  bad[bad.size() - 128] ^= 0x80;
  EXPECT_FALSE(VerifyCmcResponse(bad, s.cert.get()).ok());
}

TEST(CmcResponseTest, AChangedStatusStringIsRefused) {
  Signed s = MakeResponse("CMC Test CA");
  const size_t at = Find(s.der, "Taken Under Submission");
  ASSERT_NE(at, std::string::npos);
  std::vector<uint8_t> bad = s.der;
  bad[at] = 'B';  // "Baken Under Submission": same length, still DER
  absl::Status st = VerifyCmcResponse(bad, s.cert.get());
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
}

TEST(CmcResponseTest, AResponseSignedByAnotherKeyIsRefused) {
  Signed ours = MakeResponse("CMC Test CA");
  Signed other = MakeResponse("CMC Test CA");  // same name, another key
  ASSERT_FALSE(other.der.empty());
  EXPECT_TRUE(VerifyCmcResponse(other.der, other.cert.get()).ok());
  absl::Status st = VerifyCmcResponse(other.der, ours.cert.get());
  EXPECT_FALSE(st.ok()) << "a response signed by another key verified";
}

// BuildCmcResponse checks its own signature before the response leaves,
// with the caller's software copy of the CA certificate when given: a
// signature that does not verify with it (here: the copy of another CA of
// the same name) makes an INTERNAL error, never output. The response
// carries certificates (the issued one and the CA's), which the signature
// does not cover; the check is the same with them there.
TEST(CmcResponseTest, BuildRefusesWhatDoesNotVerify) {
  Signed ca = MakeResponse("CMC Test CA");
  Signed other = MakeResponse("CMC Test CA");
  auto leaf_key = SoftwareRsaKey(2048);
  auto leaf = SelfSignedCa(nullptr, leaf_key.get(), "Leaf");
  ossl::UniquePtr<X509> software = SoftwareCopy(ca.cert.get());
  ossl::UniquePtr<X509> wrong = SoftwareCopy(other.cert.get());
  CmcResponseSpec spec;
  spec.status = CmcStatus::kSuccess;
  spec.status_string = "Issued";
  spec.issued = leaf.get();
  spec.certificates = {leaf.get(), ca.cert.get()};
  for (X509* copy : {static_cast<X509*>(nullptr), software.get()}) {
    auto good = BuildCmcResponse(nullptr, nullptr, ca.key.get(), ca.cert.get(), spec, copy);
    ASSERT_TRUE(good.ok()) << good.status();
    EXPECT_TRUE(VerifyCmcResponseCarries(*good, ca.cert.get(), CertificateDer(leaf.get())).ok());
  }
  auto bad = BuildCmcResponse(nullptr, nullptr, ca.key.get(), ca.cert.get(), spec, wrong.get());
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInternal) << bad.status();
  EXPECT_NE(bad.status().message().find("does not verify"), std::string::npos) << bad.status();
}

TEST(CmcResponseTest, NotASignedPkiResponseIsRefused) {
  Signed s = MakeResponse("CMC Test CA");
  EXPECT_FALSE(VerifyCmcResponse({}, s.cert.get()).ok());
  std::vector<uint8_t> cut(s.der.begin(), s.der.begin() + s.der.size() / 2);
  EXPECT_EQ(VerifyCmcResponse(cut, s.cert.get()).code(), absl::StatusCode::kDataLoss);
  std::vector<uint8_t> longer = s.der;
  longer.push_back(0);
  EXPECT_EQ(VerifyCmcResponse(longer, s.cert.get()).code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(VerifyCmcResponse(s.der, nullptr).ok());
}

// certreq -accept: the response must carry the issued certificate.
TEST(CmcResponseTest, CarriesTheIssuedCertificateAndNoOther) {
  auto ca_key = SoftwareRsaKey(2048);
  auto ca = SelfSignedCa(nullptr, ca_key.get(), "CMC Issuing CA");
  auto user_key = SoftwareRsaKey(2048);
  auto issued = SelfSignedCa(nullptr, user_key.get(), "issued user");
  auto other = SelfSignedCa(nullptr, user_key.get(), "someone else");
  CmcResponseSpec spec;
  spec.status_string = "Issued";
  spec.issued = issued.get();
  spec.certificates = {issued.get(), ca.get()};
  auto der = BuildCmcResponse(nullptr, nullptr, ca_key.get(), ca.get(), spec);
  ASSERT_TRUE(der.ok()) << der.status();
  const std::vector<uint8_t> issued_der = CertificateDer(issued.get());
  const std::vector<uint8_t> other_der = CertificateDer(other.get());
  EXPECT_TRUE(VerifyCmcResponseCarries(*der, ca.get(), issued_der).ok());
  absl::Status st = VerifyCmcResponseCarries(*der, ca.get(), other_der);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_NE(st.message().find("issued certificate is not in it"), std::string::npos) << st;
  // Signed by someone else: refused before the certificates are looked at.
  EXPECT_EQ(VerifyCmcResponseCarries(*der, issued.get(), issued_der).code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace keywarden::pki
