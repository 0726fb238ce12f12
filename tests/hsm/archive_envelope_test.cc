// The archival envelope end to end: the private key encrypted and the
// content key wrapped on the token, the CMS EnvelopedData assembled by
// pki::BuildEnvelopedData, and the result opened by `openssl cms -decrypt`
// with each KRA's key (an independent implementation).
#include <openssl/pem.h>
#include <openssl/rand.h>

#include "hsm/symmetric.h"
#include "pki/envelope.h"
#include "tests/hsm/token_fixture.h"

namespace keywarden::testing {
namespace {

struct Kra {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
  std::string cert_path, key_path;
};

class ArchiveEnvelopeTest : public TokenTest {
 protected:
  Kra MakeKra(const std::string& name) {
    Kra k;
    k.key = SoftwareRsaKey();
    k.cert = SelfSignedCa(nullptr, k.key.get(), "KRA " + name);
    k.cert_path = tmp_.File(name + ".pem");
    k.key_path = tmp_.File(name + ".key");
    WriteFile(k.cert_path, ToPem(k.cert.get()));
    WriteFile(k.key_path, PrivateKeyPem(k.key.get()));
    return k;
  }

  // PKCS#8 DER of a fresh software RSA key: the "user's private key".
  std::vector<uint8_t> UserKeyPkcs8() {
    auto user = SoftwareRsaKey();
    unsigned char* der = nullptr;
    int len = i2d_PrivateKey(user.get(), &der);
    std::vector<uint8_t> out(der, der + len);
    OPENSSL_clear_free(der, static_cast<size_t>(len));
    return out;
  }

  std::vector<uint8_t> Seal(const std::vector<uint8_t>& plaintext, hsm::SymmetricAlgorithm alg,
                            hsm::WrapMechanism wrap, const std::vector<Kra*>& kras) {
    auto key = hsm::SessionKey::Generate(ca_, alg);
    EXPECT_TRUE(key.ok()) << key.status();
    auto ct = key->Encrypt(plaintext);
    EXPECT_TRUE(ct.ok()) << ct.status();
    std::vector<pki::KeyTransRecipient> recipients;
    for (Kra* k : kras) {
      auto wrapped = key->WrapTo(X509_get0_pubkey(k->cert.get()), wrap);
      EXPECT_TRUE(wrapped.ok()) << wrapped.status();
      recipients.push_back({k->cert.get(),
                            wrap == hsm::WrapMechanism::kRsaPkcs1 ? pki::KeyTransport::kRsaPkcs1
                                                                  : pki::KeyTransport::kRsaOaepSha1,
                            *wrapped});
    }
    pki::EncryptedContent content{alg == hsm::SymmetricAlgorithm::kDes3
                                      ? pki::ContentCipher::kDes3Cbc
                                      : pki::ContentCipher::kAes256Cbc,
                                  ct->iv, ct->data};
    auto envelope = pki::BuildEnvelopedData(recipients, content);
    EXPECT_TRUE(envelope.ok()) << envelope.status();
    return envelope.ok() ? *envelope : std::vector<uint8_t>{};
  }

  CommandResult OpensslDecrypt(const std::vector<uint8_t>& envelope, const Kra& k,
                               const std::string& out) {
    WriteFile(tmp_.File("env.der"), envelope);
    return RunCommand("openssl cms -decrypt -binary -inform DER -in " + tmp_.File("env.der") +
                      " -recip " + k.cert_path + " -inkey " + k.key_path + " -out " + out);
  }
};

TEST_F(ArchiveEnvelopeTest, Des3EnvelopeToTwoKrasOpensWithEitherKraKey) {
  Kra kra1 = MakeKra("kra1"), kra2 = MakeKra("kra2"), kra3 = MakeKra("kra3");
  const auto pkcs8 = UserKeyPkcs8();
  auto envelope =
      Seal(pkcs8, hsm::SymmetricAlgorithm::kDes3, hsm::WrapMechanism::kRsaPkcs1, {&kra1, &kra2});
  ASSERT_FALSE(envelope.empty());
  for (const Kra* k : {&kra1, &kra2}) {
    auto r = OpensslDecrypt(envelope, *k, tmp_.File("out.der"));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(ReadFile(tmp_.File("out.der")), pkcs8);
  }
  // A KRA the key was not encrypted to cannot open it (openssl exits non-zero).
  EXPECT_NE(OpensslDecrypt(envelope, kra3, tmp_.File("out3.der")).exit_code, 0);

  WriteFile(tmp_.File("env.der"), envelope);
  auto print = RunCommand("openssl cms -cmsout -print -inform DER -in " + tmp_.File("env.der"));
  EXPECT_NE(print.output.find("des-ede3-cbc"), std::string::npos) << print.output;
  size_t ktri = 0;
  for (size_t at = 0; (at = print.output.find("d.ktri:", at)) != std::string::npos; ++at) ++ktri;
  EXPECT_EQ(ktri, 2u) << print.output;
  EXPECT_NE(print.output.find("CN=KRA kra1"), std::string::npos);
}

TEST_F(ArchiveEnvelopeTest, Aes256OaepEnvelopeOpensWithOpenssl) {
  Kra kra = MakeKra("kra");
  const auto pkcs8 = UserKeyPkcs8();
  auto envelope =
      Seal(pkcs8, hsm::SymmetricAlgorithm::kAes256, hsm::WrapMechanism::kRsaOaepSha1, {&kra});
  ASSERT_FALSE(envelope.empty());
  auto r = OpensslDecrypt(envelope, kra, tmp_.File("out.der"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(ReadFile(tmp_.File("out.der")), pkcs8);
  auto print = RunCommand("openssl cms -cmsout -print -inform DER -in " + tmp_.File("env.der"));
  EXPECT_NE(print.output.find("rsaesOaep"), std::string::npos) << print.output;
  EXPECT_NE(print.output.find("aes-256-cbc"), std::string::npos) << print.output;
}

TEST_F(ArchiveEnvelopeTest, MissingPiecesAreRefused) {
  Kra kra = MakeKra("kra");
  pki::EncryptedContent good{pki::ContentCipher::kDes3Cbc, std::vector<uint8_t>(8, 1),
                             std::vector<uint8_t>(16, 2)};
  EXPECT_EQ(pki::BuildEnvelopedData({}, good).status().code(), absl::StatusCode::kInvalidArgument);
  pki::KeyTransRecipient r{kra.cert.get(), pki::KeyTransport::kRsaPkcs1,
                           std::vector<uint8_t>(256, 3)};
  auto bad_iv = good;
  bad_iv.iv.resize(16);
  EXPECT_EQ(pki::BuildEnvelopedData({r}, bad_iv).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto partial_block = good;
  partial_block.ciphertext.resize(15);
  EXPECT_EQ(pki::BuildEnvelopedData({r}, partial_block).status().code(),
            absl::StatusCode::kInvalidArgument);
  pki::KeyTransRecipient no_key{kra.cert.get(), pki::KeyTransport::kRsaPkcs1, {}};
  EXPECT_EQ(pki::BuildEnvelopedData({no_key}, good).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keywarden::testing
