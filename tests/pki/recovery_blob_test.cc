// The recovery blob (pki/recovery_blob.h): built with the CA key on a
// SoftHSM2 token, checked by `openssl cms` (an independent
// implementation), and refused whole when anything in it is wrong.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <map>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/provider.h>
#include <openssl/rand.h>

#include <gtest/gtest.h>

#include "hsm/status.h"
#include "hsm/strings.h"
#include "pki/certificate.h"
#include "pki/kra_card.h"
#include "pki/pkcs12.h"
#include "pki/private_key_blob.h"
#include "pki/recovery_blob.h"
#include "tests/recovery_fixture.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

using pki::RecoveryBlobError;
using pki::RecoveryBlobErrorOf;

std::vector<ossl::UniquePtr<X509>> Anchors(X509* cert) {
  std::vector<ossl::UniquePtr<X509>> out;
  out.push_back(pki::SoftwareCopy(cert));
  return out;
}

class RecoveryBlobTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
    RecoveryPki::Options options;
    options.kra_cards = {"", "", ""};  // software KRA keys, so openssl can decrypt
    auto pki = RecoveryPki::Create(*fixture_, options);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = std::move(*pki);
    auto user = pki_->MakeUser("Alice");
    ASSERT_TRUE(user.ok()) << user.status();
    user_ = std::move(*user);
    auto envelope = pki_->Archive(user_, {0, 1});
    ASSERT_TRUE(envelope.ok()) << envelope.status();
    envelope_ = std::move(*envelope);
    auto blob = pki_->Blob(user_, envelope_, {0, 1});
    ASSERT_TRUE(blob.ok()) << blob.status();
    blob_ = std::move(*blob);
    WriteFile(tmp_.File("ca.pem"), ToPem(pki_->ca_cert()));
    WriteFile(tmp_.File("blob.der"), blob_);
  }

  void TearDown() override {
    pki_.reset();
    fixture_.reset();
  }

  absl::StatusOr<pki::RecoveryBlob> Parse(const std::vector<uint8_t>& der) {
    return pki::ParseRecoveryBlob(der, Anchors(pki_->ca_cert()));
  }

  // A blob signed by the CA (software-verifiable) with whatever signed
  // attributes and content the test wants: for blobs BuildRecoveryBlob
  // refuses to make.
  std::vector<uint8_t> SignRaw(const std::vector<uint8_t>& content,
                               const std::vector<uint8_t>* cert_hash,
                               const std::vector<X509*>& certs) {
    const unsigned int flags = CMS_BINARY | CMS_PARTIAL | CMS_NOSMIMECAP | CMS_NOCERTS;
    ossl::UniquePtr<CMS_ContentInfo> cms(
        CMS_sign_ex(nullptr, nullptr, nullptr, nullptr, flags, pki_->crypto()->libctx(), nullptr));
    for (X509* c : certs) CMS_add1_cert(cms.get(), c);
    CMS_SignerInfo* si =
        CMS_add1_signer(cms.get(), pki_->ca_cert(), pki_->ca_key(), EVP_sha256(), flags);
    EXPECT_NE(si, nullptr) << hsm::OpenSslError("add signer");
    if (cert_hash != nullptr) {
      CMS_signed_add1_attr_by_txt(si, pki::kArchivedKeyCertHashOid, V_ASN1_OCTET_STRING,
                                  cert_hash->data(), static_cast<int>(cert_hash->size()));
    }
    ossl::UniquePtr<BIO> in(BIO_new_mem_buf(content.data(), static_cast<int>(content.size())));
    EXPECT_EQ(CMS_final(cms.get(), in.get(), nullptr, CMS_BINARY), 1) << hsm::OpenSslError("final");
    unsigned char* der = nullptr;
    int len = i2d_CMS_ContentInfo(cms.get(), &der);
    std::vector<uint8_t> out(der, der + std::max(len, 0));
    OPENSSL_free(der);
    return out;
  }

  std::vector<uint8_t> UserHash() {
    unsigned char md[20];
    unsigned int len = 0;
    X509_digest(user_.cert.get(), EVP_sha1(), md, &len);
    return std::vector<uint8_t>(md, md + len);
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  std::unique_ptr<RecoveryPki> pki_;
  RecoveryUser user_;
  std::vector<uint8_t> envelope_, blob_;
  TempDir tmp_;
};

TEST_F(RecoveryBlobTest, ParseGivesUserCertificateKrasAndTheStoredEnvelope) {
  auto blob = Parse(blob_);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(X509_cmp(blob->user_certificate.get(), user_.cert.get()), 0);
  EXPECT_EQ(blob->enveloped_data, envelope_);
  EXPECT_EQ(blob->content_cipher, "des-ede3-cbc");
  EXPECT_EQ(blob->digest, "sha256");
  ASSERT_TRUE(blob->signing_time.has_value());
  EXPECT_LT(std::abs(*blob->signing_time - time(nullptr)), 300);
  EXPECT_EQ(X509_cmp(blob->signer.get(), pki_->ca_cert()), 0);
  ASSERT_EQ(blob->user_chain.size(), 1u);
  EXPECT_EQ(X509_cmp(blob->user_chain[0].get(), pki_->ca_cert()), 0);
  ASSERT_EQ(blob->recipients.size(), 2u);
  ASSERT_EQ(blob->kra_certificates.size(), 2u);
  for (const auto& r : blob->recipients) {
    ASSERT_NE(r.certificate, nullptr);
    EXPECT_EQ(r.key_transport, "rsaEncryption");
    EXPECT_TRUE(r.Matches(pki_->kras()[0].cert.get()) || r.Matches(pki_->kras()[1].cert.get()));
    EXPECT_FALSE(r.Matches(pki_->kras()[2].cert.get()));
    EXPECT_NE(r.Describe().find("KRA "), std::string::npos) << r.Describe();
  }
}

// What keywardend passes: the software copy of the CA certificate, which
// makes BuildRecoveryBlob check the blob in its DER instead of opening it
// as a KRA does. The blob must be the same to a KRA, and a check that fails
// must still release nothing.
class BuiltBlobCheckTest : public RecoveryBlobTest {
 protected:
  pki::RecoveryBlobInput Input(X509* software_ca) {
    pki::RecoveryBlobInput in;
    in.ca_key = pki_->ca_key();
    in.ca_certificate = pki_->ca_cert();
    in.ca_certificate_software = software_ca;
    in.user_certificate = user_.cert.get();
    in.user_chain = {pki_->ca_cert()};
    in.kra_certificates = {pki_->kras().at(0).cert.get(), pki_->kras().at(1).cert.get()};
    in.enveloped_data = envelope_;
    return in;
  }
  absl::StatusOr<std::vector<uint8_t>> Build(const pki::RecoveryBlobInput& in) {
    return pki::BuildRecoveryBlob(pki_->crypto()->libctx(), hsm::kTokenKeyProperties, in);
  }
  // A self-signed certificate named like the CA, with another key.
  ossl::UniquePtr<X509> Impostor() {
    impostor_key_.reset(EVP_RSA_gen(2048));
    pki::RootCaOptions options;
    options.subject = X509_get_subject_name(pki_->ca_cert());
    auto cert = pki::MakeSelfSignedRoot(nullptr, impostor_key_.get(), options);
    EXPECT_TRUE(cert.ok()) << cert.status();
    return cert.ok() ? std::move(*cert) : nullptr;
  }
  ossl::UniquePtr<EVP_PKEY> impostor_key_;
};

TEST_F(BuiltBlobCheckTest, WithTheSoftwareCaCertificateTheBlobOpensAsAKraExpects) {
  ossl::UniquePtr<X509> software = pki::SoftwareCopy(pki_->ca_cert());
  ASSERT_TRUE(software);
  auto der = Build(Input(software.get()));
  ASSERT_TRUE(der.ok()) << der.status();
  auto blob = Parse(*der);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(X509_cmp(blob->user_certificate.get(), user_.cert.get()), 0);
  EXPECT_EQ(blob->enveloped_data, envelope_);
  EXPECT_EQ(blob->kra_certificates.size(), 2u);
  // openssl, independently, verifies the signature against the CA.
  WriteFile(tmp_.File("fast.p7"), *der);
  WriteFile(tmp_.File("fast-ca.pem"), ToPem(pki_->ca_cert()));
  auto r =
      RunCommand("openssl cms -verify -binary -inform DER -in " + tmp_.File("fast.p7") +
                 " -CAfile " + tmp_.File("fast-ca.pem") + " -out " + tmp_.File("fast.content"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ReadFile(tmp_.File("fast.content")), envelope_);
}

TEST_F(BuiltBlobCheckTest, ASoftwareCaCertificateOfAnotherKeyReleasesNothing) {
  // The signature does not verify with it: the DER check fails, and the
  // full check that follows, anchored on that certificate, fails too.
  ossl::UniquePtr<X509> impostor = Impostor();
  ASSERT_TRUE(impostor);
  auto der = Build(Input(impostor.get()));
  ASSERT_FALSE(der.ok());
  EXPECT_EQ(der.status().code(), absl::StatusCode::kInternal) << der.status();
  EXPECT_NE(der.status().message().find("the blob just made does not verify"), std::string::npos)
      << der.status();
}

TEST_F(BuiltBlobCheckTest, AUserChainWithAStrangerNamedLikeTheCaIsFoundBeforeRelease) {
  // After a CA key renewal the user's issuer must be the old CA
  // certificate; a certificate of the CA's name that did not sign the user
  // certificate is refused by the daemon, not left for the KRA to find.
  ossl::UniquePtr<X509> software = pki::SoftwareCopy(pki_->ca_cert());
  ossl::UniquePtr<X509> impostor = Impostor();
  ASSERT_TRUE(software && impostor);
  pki::RecoveryBlobInput in = Input(software.get());
  in.user_chain = {impostor.get()};
  auto der = Build(in);
  ASSERT_FALSE(der.ok());
  EXPECT_EQ(der.status().code(), absl::StatusCode::kInternal) << der.status();
}

TEST_F(RecoveryBlobTest, OpensslVerifiesTheBlobAndDecryptsTheInnerEnvelopeWithAKraKey) {
  // Outer: the CA signature, chained to the CA certificate.
  auto verify = RunCommand("openssl cms -verify -binary -inform DER -in " + tmp_.File("blob.der") +
                           " -CAfile " + tmp_.File("ca.pem") + " -out " + tmp_.File("inner.der"));
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_NE(verify.output.find("Verification successful"), std::string::npos) << verify.output;
  EXPECT_EQ(ReadFile(tmp_.File("inner.der")), envelope_);
  // Inner: the stored EnvelopedData, which either chosen KRA opens.
  auto expected = pki::ToPkcs8(user_.key.get());
  ASSERT_TRUE(expected.ok());
  for (size_t k : {0u, 1u}) {
    const std::string n = std::to_string(k);
    WriteFile(tmp_.File("kra" + n + ".pem"), ToPem(pki_->kras()[k].cert.get()));
    WriteFile(tmp_.File("kra" + n + ".key"), PrivateKeyPem(pki_->kras()[k].software_key.get()));
    auto dec = RunCommand("openssl cms -decrypt -binary -inform DER -in " + tmp_.File("inner.der") +
                          " -recip " + tmp_.File("kra" + n + ".pem") + " -inkey " +
                          tmp_.File("kra" + n + ".key") + " -out " + tmp_.File("key" + n + ".der"));
    ASSERT_EQ(dec.exit_code, 0) << dec.output;
    auto plain = ReadFile(tmp_.File("key" + n + ".der"));
    EXPECT_EQ(plain, std::vector<uint8_t>(expected->data(), expected->data() + expected->size()));
  }
  // The third KRA was not chosen: openssl cannot open it with that key.
  WriteFile(tmp_.File("kra2.pem"), ToPem(pki_->kras()[2].cert.get()));
  WriteFile(tmp_.File("kra2.key"), PrivateKeyPem(pki_->kras()[2].software_key.get()));
  EXPECT_NE(RunCommand("openssl cms -decrypt -binary -inform DER -in " + tmp_.File("inner.der") +
                       " -recip " + tmp_.File("kra2.pem") + " -inkey " + tmp_.File("kra2.key") +
                       " -out " + tmp_.File("key2.der"))
                .exit_code,
            0);
}

TEST_F(RecoveryBlobTest, OpensslSeesTheStructureAndTheUserCertificateHashAttribute) {
  auto print = RunCommand("openssl cms -cmsout -print -inform DER -in " + tmp_.File("blob.der"));
  ASSERT_EQ(print.exit_code, 0) << print.output;
  const std::string& o = print.output;
  EXPECT_NE(o.find("contentType: pkcs7-signedData"), std::string::npos) << o;
  EXPECT_NE(o.find("eContentType: pkcs7-data"), std::string::npos) << o;
  EXPECT_NE(o.find("1.3.6.1.4.1.311.21.16"), std::string::npos) << o;
  EXPECT_NE(o.find("sha256"), std::string::npos) << o;
  // The attribute value is SHA-1 of the user certificate, as openssl computes it.
  WriteFile(tmp_.File("user.pem"), ToPem(user_.cert.get()));
  auto fp = RunCommand("openssl x509 -noout -fingerprint -sha1 -in " + tmp_.File("user.pem"));
  std::string hex;
  for (char c : fp.output.substr(fp.output.find('=') + 1)) {
    if (std::isxdigit(static_cast<unsigned char>(c))) hex += static_cast<char>(std::tolower(c));
  }
  ASSERT_EQ(hex.size(), 40u) << fp.output;
  EXPECT_EQ(HexString(UserHash()), hex);
  auto asn1 = RunCommand("openssl asn1parse -inform DER -in " + tmp_.File("blob.der"));
  // OCTET STRING of the hash right after the 21.16 OID, within the SET.
  std::string upper;
  for (char c : hex) upper += static_cast<char>(std::toupper(c));
  EXPECT_NE(asn1.output.find("[HEX DUMP]:" + upper), std::string::npos) << asn1.output;
  // Certificates: user, two KRAs, CA (the CA certificate once, though it is
  // both the user's issuer and the signer).
  auto certs =
      RunCommand("openssl pkcs7 -inform DER -print_certs -noout -in " + tmp_.File("blob.der"));
  size_t subjects = 0;
  for (size_t at = 0; (at = certs.output.find("subject=", at)) != std::string::npos; ++at) {
    ++subjects;
  }
  EXPECT_EQ(subjects, 4u) << certs.output;
}

TEST_F(RecoveryBlobTest, EverySingleByteChangeIsRefusedOrChangesNothingThatMatters) {
  // What the KRA relies on: the envelope (ciphertext and recipients), the
  // user certificate and the signer; and what it is shown: the KRA
  // certificates. Any byte change must be refused, or leave all of them as
  // they were.
  auto recipient_certs = [](const pki::RecoveryBlob& b) {
    std::vector<std::vector<uint8_t>> out;
    for (const auto& r : b.recipients) {
      out.push_back(r.certificate ? pki::CertificateDer(r.certificate) : std::vector<uint8_t>{});
    }
    return out;
  };
  auto original = Parse(blob_);
  ASSERT_TRUE(original.ok()) << original.status();
  const auto original_kras = recipient_certs(*original);
  size_t refused = 0, harmless = 0;
  std::string accepted_at;
  std::map<std::string, size_t> kinds;
  for (size_t i = 0; i < blob_.size(); ++i) {
    std::vector<uint8_t> bad = blob_;
    bad[i] ^= 0x01;
    auto parsed = Parse(bad);
    if (!parsed.ok()) {
      ++refused;
      ++kinds[std::string(pki::RecoveryBlobErrorName(RecoveryBlobErrorOf(parsed.status())))];
      EXPECT_NE(RecoveryBlobErrorOf(parsed.status()), RecoveryBlobError::kNone)
          << i << ": " << parsed.status();
      continue;
    }
    ++harmless;
    accepted_at += StrCat(" ", i);
    EXPECT_EQ(parsed->enveloped_data, envelope_) << "byte " << i;
    EXPECT_EQ(X509_cmp(parsed->user_certificate.get(), user_.cert.get()), 0) << "byte " << i;
    EXPECT_EQ(X509_cmp(parsed->signer.get(), pki_->ca_cert()), 0) << "byte " << i;
    EXPECT_EQ(recipient_certs(*parsed), original_kras) << "byte " << i;
  }
  std::string summary;
  for (auto& [k, n] : kinds) summary += StrCat(k, "=", n, " ");
  std::cout << "[ byte flips ] " << blob_.size() << " positions: " << refused << " refused ("
            << summary << "), " << harmless << " accepted unchanged (at" << accepted_at << ")"
            << std::endl;
  EXPECT_EQ(refused + harmless, blob_.size());
  EXPECT_GT(kinds["bad-signature"], 0u);
  EXPECT_GT(kinds["malformed"], 0u);
  EXPECT_GT(kinds["certificate-tampered"] + kinds["user-certificate-missing"], 0u);
}

TEST_F(RecoveryBlobTest, TruncationsAndGarbageAreRefusedWithoutACrash) {
  for (size_t n = 0; n < blob_.size(); n += 7) {
    std::vector<uint8_t> cut(blob_.begin(), blob_.begin() + static_cast<long>(n));
    auto parsed = Parse(cut);
    ASSERT_FALSE(parsed.ok()) << n;
    EXPECT_EQ(RecoveryBlobErrorOf(parsed.status()), RecoveryBlobError::kMalformed) << n;
  }
  std::vector<uint8_t> extra = blob_;
  extra.push_back(0);
  EXPECT_EQ(RecoveryBlobErrorOf(Parse(extra).status()), RecoveryBlobError::kMalformed);
  std::vector<uint8_t> random(4096);
  for (int round = 0; round < 50; ++round) {
    RAND_bytes(random.data(), static_cast<int>(random.size()));
    random[0] = 0x30;  // look like a SEQUENCE
    EXPECT_FALSE(Parse(random).ok());
  }
}

TEST_F(RecoveryBlobTest, AnotherCaIsNotTrusted) {
  auto other_key = SoftwareRsaKey();
  auto other = SelfSignedCa(nullptr, other_key.get(), "Recovery Test CA");  // same name!
  auto parsed = pki::ParseRecoveryBlob(blob_, Anchors(other.get()));
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(RecoveryBlobErrorOf(parsed.status()), RecoveryBlobError::kUntrustedSigner)
      << parsed.status();
  EXPECT_EQ(parsed.status().code(), absl::StatusCode::kPermissionDenied);
  auto none = pki::ParseRecoveryBlob(blob_, {});
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  // Also at a time the CA certificate is no longer valid.
  pki::RecoveryBlobVerifyOptions later;
  later.verify_time = time(nullptr) + 3650L * 24 * 3600 + 86400 * 30;
  auto expired = pki::ParseRecoveryBlob(blob_, Anchors(pki_->ca_cert()), later);
  ASSERT_FALSE(expired.ok());
  EXPECT_EQ(RecoveryBlobErrorOf(expired.status()), RecoveryBlobError::kUntrustedSigner);
  EXPECT_NE(expired.status().ToString().find("expired"), std::string::npos) << expired.status();
}

TEST_F(RecoveryBlobTest, MissingOrWrongCertificateHashIsRefused) {
  std::vector<X509*> certs = {user_.cert.get(), pki_->kras()[0].cert.get(),
                              pki_->kras()[1].cert.get(), pki_->ca_cert()};
  auto no_hash = Parse(SignRaw(envelope_, nullptr, certs));
  EXPECT_EQ(RecoveryBlobErrorOf(no_hash.status()), RecoveryBlobError::kMissingCertHash)
      << no_hash.status();
  std::vector<uint8_t> short_hash(19, 1);
  auto bad_len = Parse(SignRaw(envelope_, &short_hash, certs));
  EXPECT_EQ(RecoveryBlobErrorOf(bad_len.status()), RecoveryBlobError::kMissingCertHash);
  // The hash names the user certificate, but the certificate was left out.
  auto hash = UserHash();
  auto no_user = Parse(SignRaw(envelope_, &hash, {pki_->kras()[0].cert.get(), pki_->ca_cert()}));
  EXPECT_EQ(RecoveryBlobErrorOf(no_user.status()), RecoveryBlobError::kUserCertificateMissing)
      << no_user.status();
  // The same blob, complete, parses: the helper itself is sound.
  EXPECT_TRUE(Parse(SignRaw(envelope_, &hash, certs)).ok());
}

TEST_F(RecoveryBlobTest, SignedContentThatIsNotAnEnvelopeIsRefused) {
  auto hash = UserHash();
  std::vector<X509*> certs = {user_.cert.get(), pki_->ca_cert()};
  const std::string text = "not an envelope";
  auto parsed = Parse(SignRaw(std::vector<uint8_t>(text.begin(), text.end()), &hash, certs));
  EXPECT_EQ(RecoveryBlobErrorOf(parsed.status()), RecoveryBlobError::kNotEnveloped)
      << parsed.status();
  // A signed blob that is not SignedData at all: the inner envelope alone.
  EXPECT_EQ(RecoveryBlobErrorOf(Parse(envelope_).status()), RecoveryBlobError::kMalformed);
}

TEST_F(RecoveryBlobTest, BuildRefusesKrasThatDoNotMatchTheRecipients) {
  pki::RecoveryBlobInput in;
  in.ca_key = pki_->ca_key();
  in.ca_certificate = pki_->ca_cert();
  in.user_certificate = user_.cert.get();
  in.enveloped_data = envelope_;
  // One recipient's certificate missing: the daemon's 0x80092004 case.
  in.kra_certificates = {pki_->kras()[0].cert.get()};
  auto missing = pki::BuildRecoveryBlob(pki_->crypto()->libctx(), hsm::kTokenKeyProperties, in);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound) << missing.status();
  EXPECT_NE(missing.status().ToString().find("Cannot find object or property"), std::string::npos);
  // A KRA certificate that is not a recipient.
  in.kra_certificates = {pki_->kras()[0].cert.get(), pki_->kras()[1].cert.get(),
                         pki_->kras()[2].cert.get()};
  auto extra = pki::BuildRecoveryBlob(pki_->crypto()->libctx(), hsm::kTokenKeyProperties, in);
  EXPECT_EQ(extra.status().code(), absl::StatusCode::kInvalidArgument) << extra.status();
  // The CA key must be the key of the CA certificate.
  in.kra_certificates = {pki_->kras()[0].cert.get(), pki_->kras()[1].cert.get()};
  auto wrong_key = SoftwareRsaKey();
  in.ca_key = wrong_key.get();
  auto bad_ca = pki::BuildRecoveryBlob(nullptr, nullptr, in);
  EXPECT_EQ(bad_ca.status().code(), absl::StatusCode::kInvalidArgument) << bad_ca.status();
  // Not an envelope.
  in.ca_key = pki_->ca_key();
  std::vector<uint8_t> junk = {0x30, 0x03, 0x02, 0x01, 0x00};
  in.enveloped_data = junk;
  EXPECT_EQ(pki::BuildRecoveryBlob(pki_->crypto()->libctx(), nullptr, in).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(RecoveryBlobTest, PemBlobsAreAcceptedAndOtherPemIsNot) {
  auto r = RunCommand("openssl cms -cmsout -inform DER -outform PEM -in " + tmp_.File("blob.der") +
                      " -out " + tmp_.File("blob.pem"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto der = pki::RecoveryBlobDer(ReadFile(tmp_.File("blob.pem")));
  ASSERT_TRUE(der.ok()) << der.status();
  EXPECT_EQ(*der, blob_);
  std::string cert_pem = ToPem(user_.cert.get());
  EXPECT_FALSE(pki::RecoveryBlobDer(std::vector<uint8_t>(cert_pem.begin(), cert_pem.end())).ok());
}

// ---- PKCS#12 ----------------------------------------------------------------

class Pkcs12Test : public ::testing::Test {
 protected:
  TempDir tmp_;
};

TEST_F(Pkcs12Test, AesAndLegacyFilesOpenWithOpensslAndRoundTrip) {
  auto key = SoftwareRsaKey();
  auto ca_key = SoftwareRsaKey();
  auto ca = SelfSignedCa(nullptr, ca_key.get(), "PFX CA");
  // A leaf for `key`, issued by the CA.
  ossl::UniquePtr<X509> leaf(X509_new());
  X509_set_version(leaf.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(leaf.get()), 7);
  X509_set_issuer_name(leaf.get(), X509_get_subject_name(ca.get()));
  X509_NAME_add_entry_by_txt(X509_get_subject_name(leaf.get()), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("pfx user"), -1, -1, 0);
  X509_gmtime_adj(X509_getm_notBefore(leaf.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(leaf.get()), 3600);
  X509_set_pubkey(leaf.get(), key.get());
  ASSERT_GT(X509_sign(leaf.get(), ca_key.get(), EVP_sha256()), 0);

  const hsm::SecretString pw("correct horse");
  for (auto protection :
       {pki::Pkcs12Protection::kAes256Pbkdf2, pki::Pkcs12Protection::kLegacy3Des}) {
    const bool legacy = protection == pki::Pkcs12Protection::kLegacy3Des;
    auto pfx =
        pki::BuildPkcs12({{key.get(), leaf.get(), {ca.get()}, "user key"}}, pw, {protection, 0});
    ASSERT_TRUE(pfx.ok()) << pfx.status();
    WriteFile(tmp_.File("out.pfx"), *pfx);
    auto info = RunCommand("openssl pkcs12 -info -nokeys -passin pass:'correct horse' -in " +
                           tmp_.File("out.pfx"));
    ASSERT_EQ(info.exit_code, 0) << info.output;
    if (legacy) {
      EXPECT_NE(info.output.find("pbeWithSHA1And3-KeyTripleDES-CBC"), std::string::npos)
          << info.output;
      EXPECT_NE(info.output.find("MAC: sha1"), std::string::npos) << info.output;
    } else {
      EXPECT_NE(info.output.find("PBES2, PBKDF2, AES-256-CBC"), std::string::npos) << info.output;
      EXPECT_NE(info.output.find("MAC: sha256"), std::string::npos) << info.output;
    }
    EXPECT_NE(info.output.find("friendlyName: user key"), std::string::npos) << info.output;
    EXPECT_NE(info.output.find("CN = PFX CA"), std::string::npos) << info.output;

    auto back = pki::ReadPkcs12(*pfx, pw);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->keys.size(), 1u);
    EXPECT_EQ(EVP_PKEY_eq(back->keys[0].key.get(), key.get()), 1);
    ASSERT_NE(back->keys[0].certificate, nullptr);
    EXPECT_EQ(X509_cmp(back->keys[0].certificate.get(), leaf.get()), 0);
    EXPECT_EQ(back->keys[0].friendly_name, "user key");
    ASSERT_EQ(back->other_certificates.size(), 1u);
    auto wrong = pki::ReadPkcs12(*pfx, hsm::SecretString("wrong"));
    EXPECT_EQ(wrong.status().code(), absl::StatusCode::kPermissionDenied);
  }
  // A key that is not the certificate's is refused.
  auto other = SoftwareRsaKey();
  EXPECT_EQ(pki::BuildPkcs12({{other.get(), leaf.get(), {}, ""}}, pw).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      pki::BuildPkcs12({{key.get(), leaf.get(), {}, ""}}, hsm::SecretString()).status().code(),
      absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pki::ReadPkcs12(std::vector<uint8_t>{0x30, 0x00}, pw).status().code(),
            absl::StatusCode::kDataLoss);
}

// Windows XP/2003 exported PFX files with RC2-40 (certificates) and 3DES
// (keys); old OpenSSL the same. Files made by the openssl CLI read, and the
// key read back has the modulus openssl prints for the original.
class LegacyPkcs12Test : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r =
        RunCommand(StrCat("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "
                          "'/CN=legacy user' -keyout ",
                          tmp_.File("user.key"), " -out ", tmp_.File("user.pem"), " 2>&1"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto m = RunCommand(StrCat("openssl rsa -noout -modulus -in ", tmp_.File("user.key")));
    ASSERT_EQ(m.exit_code, 0) << m.output;
    modulus_ = m.output;
  }
  // openssl pkcs12 -export with `options`, into NAME.
  std::vector<uint8_t> Export(const std::string& name, const std::string& options) {
    auto r = RunCommand(StrCat("openssl pkcs12 -export ", options, " -in ", tmp_.File("user.pem"),
                               " -inkey ", tmp_.File("user.key"), " -passout pass:'old pass' -out ",
                               tmp_.File(name)));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return ReadFile(tmp_.File(name));
  }
  // openssl's description of a PFX's algorithms.
  std::string Info(const std::string& name) {
    return RunCommand(StrCat("openssl pkcs12 -legacy -info -nokeys -noout -passin pass:'old pass' "
                             "-in ",
                             tmp_.File(name), " 2>&1"))
        .output;
  }
  // The modulus of `key` as `openssl rsa -modulus` prints it.
  std::string Modulus(EVP_PKEY* key) {
    WriteFile(tmp_.File("back.key"), PrivateKeyPem(key));
    return RunCommand(StrCat("openssl rsa -noout -modulus -in ", tmp_.File("back.key"))).output;
  }
  TempDir tmp_;
  std::string modulus_;
};

TEST_F(LegacyPkcs12Test, Rc240FileReadsAndTheKeyMatches) {
  auto pfx = Export("rc2.pfx", "-legacy -certpbe PBE-SHA1-RC2-40 -keypbe PBE-SHA1-RC2-40");
  const std::string info = Info("rc2.pfx");
  ASSERT_NE(info.find("pbeWithSHA1And40BitRC2-CBC"), std::string::npos) << info;
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("old pass"));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->keys.size(), 1u);
  ASSERT_NE(back->keys[0].certificate, nullptr);
  EXPECT_EQ(pki::FormatName(X509_get_subject_name(back->keys[0].certificate.get())),
            "CN=legacy user");
  EXPECT_EQ(Modulus(back->keys[0].key.get()), modulus_);
}

TEST_F(LegacyPkcs12Test, WindowsDefaultRc2CertificatesAnd3DesKeyReads) {
  auto pfx = Export("win.pfx", "-legacy -certpbe PBE-SHA1-RC2-40 -keypbe PBE-SHA1-3DES");
  const std::string info = Info("win.pfx");
  ASSERT_NE(info.find("pbeWithSHA1And40BitRC2-CBC"), std::string::npos) << info;
  ASSERT_NE(info.find("pbeWithSHA1And3-KeyTripleDES-CBC"), std::string::npos) << info;
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("old pass"));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->keys.size(), 1u);
  EXPECT_EQ(Modulus(back->keys[0].key.get()), modulus_);
}

TEST_F(LegacyPkcs12Test, TripleDesFileReadsAndTheKeyMatches) {
  auto pfx = Export("3des.pfx", "-certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES -macalg sha1");
  const std::string info = Info("3des.pfx");
  ASSERT_NE(info.find("pbeWithSHA1And3-KeyTripleDES-CBC"), std::string::npos) << info;
  ASSERT_EQ(info.find("RC2"), std::string::npos) << info;
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("old pass"));
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->keys.size(), 1u);
  EXPECT_EQ(Modulus(back->keys[0].key.get()), modulus_);
}

TEST_F(LegacyPkcs12Test, WrongPasswordOnAnRc2FileIsStillAWrongPassword) {
  auto pfx = Export("rc2.pfx", "-legacy");
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("not the pass"));
  EXPECT_EQ(back.status().code(), absl::StatusCode::kPermissionDenied) << back.status();
  EXPECT_NE(back.status().message().find("wrong password"), std::string::npos) << back.status();
  EXPECT_EQ(back.status().message().find("unsupported"), std::string::npos) << back.status();
}

TEST_F(LegacyPkcs12Test, AnAlgorithmNobodyHasIsUnsupportedNotAWrongPassword) {
  // No MAC (so the change below is not caught as damage) and the RC2-40 PBE
  // OID 1.2.840.113549.1.12.1.6 turned into the unassigned ...12.1.9.
  auto pfx = Export("nomac.pfx", "-legacy -nomac -certpbe PBE-SHA1-RC2-40");
  const std::vector<uint8_t> oid = {0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86,
                                    0xf7, 0x0d, 0x01, 0x0c, 0x01, 0x06};
  auto at = std::search(pfx.begin(), pfx.end(), oid.begin(), oid.end());
  ASSERT_NE(at, pfx.end());
  at[oid.size() - 1] = 0x09;
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("old pass"));
  EXPECT_EQ(back.status().code(), absl::StatusCode::kUnimplemented) << back.status();
  EXPECT_NE(back.status().message().find("unsupported algorithm"), std::string::npos)
      << back.status();
  EXPECT_NE(back.status().message().find("1.2.840.113549.1.12.1.9"), std::string::npos)
      << back.status();
}

TEST_F(LegacyPkcs12Test, WithoutAMacAWrongPasswordIsNamedAsSuch) {
  auto pfx = Export("nomac.pfx", "-legacy -nomac");
  ASSERT_TRUE(pki::ReadPkcs12(pfx, hsm::SecretString("old pass")).ok());
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("not the pass"));
  EXPECT_EQ(back.status().code(), absl::StatusCode::kPermissionDenied) << back.status();
  EXPECT_NE(back.status().message().find("wrong password"), std::string::npos) << back.status();
  EXPECT_NE(back.status().message().find("no MAC"), std::string::npos) << back.status();
}

TEST_F(LegacyPkcs12Test, ASafeDamagedUnderAValidMacIsDamageNotAWrongPassword) {
  // The RC2 safe's ciphertext changed, then the MAC made again over the
  // damaged contents with the right password: only decryption can tell.
  auto pfx = Export("rc2.pfx", "-legacy");
  const unsigned char* p = pfx.data();
  ossl::UniquePtr<PKCS12> p12(d2i_PKCS12(nullptr, &p, static_cast<long>(pfx.size())));
  ASSERT_TRUE(p12);
  STACK_OF(PKCS7)* safes = PKCS12_unpack_authsafes(p12.get());
  ASSERT_NE(safes, nullptr);
  bool damaged = false;
  for (int i = 0; i < sk_PKCS7_num(safes); ++i) {
    PKCS7* safe = sk_PKCS7_value(safes, i);
    if (OBJ_obj2nid(safe->type) != NID_pkcs7_encrypted) continue;
    ASN1_OCTET_STRING* ct = safe->d.encrypted->enc_data->enc_data;
    ct->data[ct->length - 1] ^= 0x5a;  // the last block: the padding breaks
    damaged = true;
  }
  ASSERT_TRUE(damaged);
  ASSERT_EQ(PKCS12_pack_authsafes(p12.get(), safes), 1);
  sk_PKCS7_pop_free(safes, PKCS7_free);
  ASSERT_EQ(PKCS12_set_mac(p12.get(), "old pass", -1, nullptr, 0, 2048, EVP_sha1()), 1);
  unsigned char* out = nullptr;
  const int len = i2d_PKCS12(p12.get(), &out);
  ASSERT_GT(len, 0);
  std::vector<uint8_t> bad(out, out + len);
  OPENSSL_free(out);
  // openssl agrees: the MAC verifies, the contents do not decrypt.
  WriteFile(tmp_.File("bad.pfx"), bad);
  auto info = RunCommand(StrCat("openssl pkcs12 -legacy -info -noout -passin pass:'old pass' -in ",
                                tmp_.File("bad.pfx"), " 2>&1"));
  EXPECT_NE(info.exit_code, 0) << info.output;
  EXPECT_EQ(info.output.find("Mac verify error"), std::string::npos) << info.output;
  auto back = pki::ReadPkcs12(bad, hsm::SecretString("old pass"));
  EXPECT_EQ(back.status().code(), absl::StatusCode::kDataLoss) << back.status();
  EXPECT_NE(back.status().message().find("damaged"), std::string::npos) << back.status();
  EXPECT_NE(back.status().message().find("pbeWithSHA1And40BitRC2-CBC"), std::string::npos)
      << back.status();
}

TEST_F(LegacyPkcs12Test, ADamagedRc2FileIsRefusedNotCalledUnsupported) {
  auto pfx = Export("rc2.pfx", "-legacy");
  auto back = pki::ReadPkcs12(pfx, hsm::SecretString("old pass"));
  ASSERT_TRUE(back.ok()) << back.status();
  auto damaged = pfx;
  damaged[damaged.size() / 2] ^= 0x01;
  auto bad = pki::ReadPkcs12(damaged, hsm::SecretString("old pass"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().code(), absl::StatusCode::kUnimplemented) << bad.status();
}

TEST_F(LegacyPkcs12Test, TheLegacyProviderStaysOutOfTheDefaultContext) {
  auto pfx = Export("rc2.pfx", "-legacy");
  ASSERT_TRUE(pki::ReadPkcs12(pfx, hsm::SecretString("old pass")).ok());
  // RC2 is there for reading, in the private context only.
  ossl::UniquePtr<EVP_CIPHER> in_reader(
      EVP_CIPHER_fetch(pki::LegacyReadContext(), "RC2-40-CBC", nullptr));
  EXPECT_NE(in_reader, nullptr);
  ossl::UniquePtr<EVP_CIPHER> in_default(EVP_CIPHER_fetch(nullptr, "RC2-40-CBC", nullptr));
  EXPECT_EQ(in_default, nullptr);
  EXPECT_EQ(OSSL_PROVIDER_available(nullptr, "legacy"), 0);
  ERR_clear_error();
}

}  // namespace
}  // namespace keywarden::testing
