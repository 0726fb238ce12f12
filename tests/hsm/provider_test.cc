// The provider makes token keys ordinary EVP_PKEYs: everything signed or
// decrypted here runs on a SoftHSM2 token and is checked with the openssl
// command line, an independent implementation.
#include <cstring>

#include <openssl/cms.h>
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "tests/hsm/token_fixture.h"

namespace keywarden::testing {
namespace {

using hsm::KeyAlgorithm;

class ProviderTest : public TokenTest {
 protected:
  // Verifies a self-signed certificate with `openssl verify`.
  void ExpectOpensslVerifies(X509* cert) {
    ASSERT_NE(cert, nullptr);
    WriteFile(tmp_.File("ca.pem"), ToPem(cert));
    auto r =
        RunCommand("openssl verify -CAfile " + tmp_.File("ca.pem") + " " + tmp_.File("ca.pem"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find(": OK"), std::string::npos) << r.output;
  }

  std::vector<uint8_t> DigestSign(EVP_PKEY* key, const char* md, const std::string& msg,
                                  int pad = 0) {
    ossl::UniquePtr<EVP_MD_CTX> mctx(EVP_MD_CTX_new());
    EVP_PKEY_CTX* pctx = nullptr;
    EXPECT_EQ(
        EVP_DigestSignInit_ex(mctx.get(), &pctx, md, crypto_->libctx(), nullptr, key, nullptr), 1);
    if (pad == RSA_PKCS1_PSS_PADDING) {
      EXPECT_EQ(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING), 1);
      EXPECT_EQ(EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST), 1);
    }
    size_t len = 0;
    auto* data = reinterpret_cast<const unsigned char*>(msg.data());
    EXPECT_EQ(EVP_DigestSign(mctx.get(), nullptr, &len, data, msg.size()), 1);
    std::vector<uint8_t> sig(len);
    EXPECT_EQ(EVP_DigestSign(mctx.get(), sig.data(), &len, data, msg.size()), 1);
    sig.resize(len);
    return sig;
  }

  // `openssl dgst -verify` with the key's public part written from the EVP_PKEY.
  CommandResult OpensslDgstVerify(EVP_PKEY* key, const char* md, const std::string& msg,
                                  const std::vector<uint8_t>& sig,
                                  const std::string& sigopts = "") {
    WriteFile(tmp_.File("pub.pem"), PublicKeyPem(key));
    WriteFile(tmp_.File("msg.bin"), msg);
    WriteFile(tmp_.File("sig.bin"), sig);
    return RunCommand(std::string("openssl dgst -") + md + " -verify " + tmp_.File("pub.pem") +
                      " " + sigopts + " -signature " + tmp_.File("sig.bin") + " " +
                      tmp_.File("msg.bin"));
  }
};

TEST_F(ProviderTest, TokenKeyIsServedByKeywardenProvider) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "ca-signing");
  auto pkey = Load(key);
  EXPECT_TRUE(hsm::IsTokenKey(pkey.get()));
  EXPECT_EQ(EVP_PKEY_get_bits(pkey.get()), 2048);
  EXPECT_EQ(EVP_PKEY_get_size(pkey.get()), 256);
  EXPECT_TRUE(EVP_PKEY_is_a(pkey.get(), "RSA"));
}

TEST_F(ProviderTest, RsaSelfSignedCaCertificatePassesOpensslVerify) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "ca-signing"));
  auto cert = SelfSignedCa(crypto_->libctx(), pkey.get(), "keywarden Test Root CA");
  ExpectOpensslVerifies(cert.get());
}

TEST_F(ProviderTest, Rsa3072PssSignedCertificatePassesOpensslVerify) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa3072, "ca-pss"));
  auto cert = SelfSignedCa(crypto_->libctx(), pkey.get(), "keywarden PSS Root", "SHA384", true);
  ExpectOpensslVerifies(cert.get());
  auto r = RunCommand("openssl x509 -noout -text -in " + tmp_.File("ca.pem"));
  EXPECT_NE(r.output.find("rsassaPss"), std::string::npos) << r.output;
}

TEST_F(ProviderTest, Rsa4096CertificatePassesOpensslVerify) {
  auto key = Generate(KeyAlgorithm::kRsa4096, "ca-4096");
  ASSERT_NE(key, nullptr);
  EXPECT_EQ(key->bits, 4096u);
  auto pkey = Load(key);
  EXPECT_EQ(EVP_PKEY_get_size(pkey.get()), 512);
  ExpectOpensslVerifies(
      SelfSignedCa(crypto_->libctx(), pkey.get(), "RSA-4096 Root", "SHA512").get());
}

TEST_F(ProviderTest, EcP256AndP384CertificatesPassOpensslVerify) {
  auto p256 = Load(Generate(KeyAlgorithm::kEcP256, "ec256"));
  ExpectOpensslVerifies(SelfSignedCa(crypto_->libctx(), p256.get(), "EC P-256 Root").get());
  auto p384 = Load(Generate(KeyAlgorithm::kEcP384, "ec384"));
  ExpectOpensslVerifies(
      SelfSignedCa(crypto_->libctx(), p384.get(), "EC P-384 Root", "SHA384").get());
}

TEST_F(ProviderTest, PlainX509SignWorksUnchanged) {
  // X509_sign without a library context: OpenSSL finds the provider through the key.
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "ca-plain"));
  ossl::UniquePtr<X509> x(X509_new());
  X509_set_version(x.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 7);
  X509_NAME_add_entry_by_txt(X509_get_subject_name(x.get()), "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>("plain"), -1, -1, 0);
  X509_set_issuer_name(x.get(), X509_get_subject_name(x.get()));
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  ASSERT_EQ(X509_set_pubkey(x.get(), pkey.get()), 1);
  ASSERT_GT(X509_sign(x.get(), pkey.get(), EVP_sha256()), 0);
  ExpectOpensslVerifies(x.get());
}

TEST_F(ProviderTest, RsaPkcs1SignatureVerifiesWithOpensslDgst) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "rsa"));
  auto sig = DigestSign(pkey.get(), "SHA256", "the quick brown fox");
  auto r = OpensslDgstVerify(pkey.get(), "sha256", "the quick brown fox", sig);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Verified OK"), std::string::npos);
  // A changed message must not verify: the check can fail.
  auto bad = OpensslDgstVerify(pkey.get(), "sha256", "the quick brown fox!", sig);
  EXPECT_NE(bad.exit_code, 0) << bad.output;
}

TEST_F(ProviderTest, RsaPssSignatureVerifiesWithOpensslDgst) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "rsa-pss"));
  auto sig = DigestSign(pkey.get(), "SHA256", "pss message", RSA_PKCS1_PSS_PADDING);
  auto r = OpensslDgstVerify(pkey.get(), "sha256", "pss message", sig,
                             "-sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:digest");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  // Not a PKCS#1 v1.5 signature.
  auto pkcs1 = OpensslDgstVerify(pkey.get(), "sha256", "pss message", sig);
  EXPECT_NE(pkcs1.exit_code, 0);
}

TEST_F(ProviderTest, EcdsaSignaturesVerifyWithOpensslDgst) {
  for (auto [alg, md] :
       {std::pair{KeyAlgorithm::kEcP256, "sha256"}, std::pair{KeyAlgorithm::kEcP384, "sha384"}}) {
    auto pkey = Load(Generate(alg, std::string("ecdsa-") + md));
    auto sig = DigestSign(pkey.get(), md, "ecdsa message");
    auto r = OpensslDgstVerify(pkey.get(), md, "ecdsa message", sig);
    EXPECT_EQ(r.exit_code, 0) << md << ": " << r.output;
  }
}

TEST_F(ProviderTest, RawDigestSignatureVerifiesWithOpensslPkeyutl) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "pkeyutl"));
  unsigned char digest[32];
  RAND_bytes(digest, sizeof digest);
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(
      EVP_PKEY_CTX_new_from_pkey(crypto_->libctx(), pkey.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_sign_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()), 1);
  size_t len = 0;
  ASSERT_EQ(EVP_PKEY_sign(ctx.get(), nullptr, &len, digest, sizeof digest), 1);
  std::vector<uint8_t> sig(len);
  ASSERT_EQ(EVP_PKEY_sign(ctx.get(), sig.data(), &len, digest, sizeof digest), 1);
  sig.resize(len);
  WriteFile(tmp_.File("pub.pem"), PublicKeyPem(pkey.get()));
  WriteFile(tmp_.File("digest.bin"), std::vector<uint8_t>(digest, digest + 32));
  WriteFile(tmp_.File("sig.bin"), sig);
  auto r = RunCommand("openssl pkeyutl -verify -pubin -inkey " + tmp_.File("pub.pem") +
                      " -pkeyopt digest:sha256 -in " + tmp_.File("digest.bin") + " -sigfile " +
                      tmp_.File("sig.bin"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Signature Verified Successfully"), std::string::npos) << r.output;
}

TEST_F(ProviderTest, DigestOfWrongLengthIsRefused) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "wronglen"));
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(
      EVP_PKEY_CTX_new_from_pkey(crypto_->libctx(), pkey.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_sign_init(ctx.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_sha256()), 1);
  unsigned char digest[20] = {};
  std::vector<uint8_t> sig(256);
  size_t len = sig.size();
  EXPECT_LE(EVP_PKEY_sign(ctx.get(), sig.data(), &len, digest, sizeof digest), 0);
  auto err = hsm::OpenSslError("sign");
  EXPECT_NE(err.message().find("digest length"), absl::string_view::npos) << err;
}

TEST_F(ProviderTest, CrlSignedOnTokenVerifies) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "crl-ca"));
  auto ca = SelfSignedCa(crypto_->libctx(), pkey.get(), "CRL Test CA");
  ossl::UniquePtr<X509_CRL> crl(X509_CRL_new_ex(crypto_->libctx(), nullptr));
  X509_CRL_set_version(crl.get(), 1);
  X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(ca.get()));
  ossl::UniquePtr<ASN1_TIME> now(ASN1_TIME_new());
  X509_gmtime_adj(now.get(), 0);
  X509_CRL_set1_lastUpdate(crl.get(), now.get());
  X509_gmtime_adj(now.get(), 3600);
  X509_CRL_set1_nextUpdate(crl.get(), now.get());
  ASSERT_GT(X509_CRL_sign(crl.get(), pkey.get(), EVP_sha256()), 0);
  WriteFile(tmp_.File("ca.pem"), ToPem(ca.get()));
  ossl::UniquePtr<BIO> bio(BIO_new_file(tmp_.File("crl.pem").c_str(), "w"));
  PEM_write_bio_X509_CRL(bio.get(), crl.get());
  bio.reset();
  auto r = RunCommand("openssl crl -noout -CAfile " + tmp_.File("ca.pem") + " -in " +
                      tmp_.File("crl.pem"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("verify OK"), std::string::npos) << r.output;
}

TEST_F(ProviderTest, CmsSignedDataVerifiesWithOpensslCms) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "cms-signer"));
  auto cert = SelfSignedCa(crypto_->libctx(), pkey.get(), "CMS Signer");
  const std::string content = "content signed on the token";
  ossl::UniquePtr<BIO> in(BIO_new_mem_buf(content.data(), static_cast<int>(content.size())));
  ossl::UniquePtr<CMS_ContentInfo> cms(CMS_sign_ex(cert.get(), pkey.get(), nullptr, in.get(),
                                                   CMS_BINARY, crypto_->libctx(), nullptr));
  ASSERT_NE(cms, nullptr) << hsm::OpenSslError("CMS_sign_ex");
  ossl::UniquePtr<BIO> out(BIO_new_file(tmp_.File("signed.der").c_str(), "wb"));
  ASSERT_EQ(i2d_CMS_bio(out.get(), cms.get()), 1);
  out.reset();
  WriteFile(tmp_.File("signer.pem"), ToPem(cert.get()));
  auto r = RunCommand("openssl cms -verify -binary -inform DER -in " + tmp_.File("signed.der") +
                      " -CAfile " + tmp_.File("signer.pem") + " -out " + tmp_.File("content.out"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto got = ReadFile(tmp_.File("content.out"));
  EXPECT_EQ(std::string(got.begin(), got.end()), content);
}

TEST_F(ProviderTest, KeyMatchesItsCertificateOnly) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "match"));
  auto cert = SelfSignedCa(crypto_->libctx(), pkey.get(), "Match");
  EXPECT_EQ(X509_check_private_key(cert.get(), pkey.get()), 1);
  auto other = SoftwareRsaKey();
  auto other_cert = SelfSignedCa(nullptr, other.get(), "Other");
  ERR_clear_error();
  EXPECT_NE(X509_check_private_key(other_cert.get(), pkey.get()), 1);
  EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(cert.get()), pkey.get()), 1);
}

TEST_F(ProviderTest, PublicPartExportsPrivatePartDoesNot) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "export");
  auto pkey = Load(key);
  // Public: i2d_PUBKEY gives the same bytes as the public key read from the token.
  unsigned char* a = nullptr;
  unsigned char* b = nullptr;
  int alen = i2d_PUBKEY(pkey.get(), &a);
  int blen = i2d_PUBKEY(key->public_key.get(), &b);
  ASSERT_GT(alen, 0);
  ASSERT_EQ(alen, blen);
  EXPECT_EQ(std::memcmp(a, b, static_cast<size_t>(alen)), 0);
  OPENSSL_free(a);
  OPENSSL_free(b);
  // Private: no route out.
  OSSL_PARAM* params = nullptr;
  EXPECT_LE(EVP_PKEY_todata(pkey.get(), EVP_PKEY_KEYPAIR, &params), 0);
  BIGNUM* d = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(pkey.get(), OSSL_PKEY_PARAM_RSA_D, &d), 0);
  unsigned char* der = nullptr;
  EXPECT_LE(i2d_PrivateKey(pkey.get(), &der), 0);
  ossl::UniquePtr<BIO> bio(BIO_new(BIO_s_mem()));
  EXPECT_EQ(PEM_write_bio_PrivateKey(bio.get(), pkey.get(), nullptr, nullptr, 0, nullptr, nullptr),
            0);
}

TEST_F(ProviderTest, CmsEnvelopeFromOpensslDecryptsOnToken) {
  auto pkey = Load(Generate(KeyAlgorithm::kRsa2048, "xchg", /*decrypt=*/true));
  auto cert = SelfSignedCa(crypto_->libctx(), pkey.get(), "Exchange");
  WriteFile(tmp_.File("recip.pem"), ToPem(cert.get()));
  const std::string secret = "private key material, 3DES under RSA PKCS#1 v1.5";
  WriteFile(tmp_.File("plain.bin"), secret);
  for (const std::string opts : {"-des3", "-aes256 -keyopt rsa_padding_mode:oaep"}) {
    // -keyopt applies to the -recip before it.
    auto r = RunCommand("openssl cms -encrypt -binary -outform DER -in " + tmp_.File("plain.bin") +
                        " -out " + tmp_.File("env.der") + " -recip " + tmp_.File("recip.pem") +
                        " " + opts);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto der = ReadFile(tmp_.File("env.der"));
    const unsigned char* p = der.data();
    ossl::UniquePtr<CMS_ContentInfo> cms(CMS_ContentInfo_new_ex(crypto_->libctx(), nullptr));
    CMS_ContentInfo* raw = cms.get();
    ASSERT_NE(d2i_CMS_ContentInfo(&raw, &p, static_cast<long>(der.size())), nullptr);
    ossl::UniquePtr<BIO> out(BIO_new(BIO_s_mem()));
    ASSERT_EQ(CMS_decrypt(cms.get(), pkey.get(), cert.get(), nullptr, out.get(), CMS_BINARY), 1)
        << opts << ": " << hsm::OpenSslError("CMS_decrypt");
    char* data = nullptr;
    long len = BIO_get_mem_data(out.get(), &data);
    EXPECT_EQ(std::string(data, static_cast<size_t>(len)), secret) << opts;
  }
}

TEST_F(ProviderTest, OaepSha1DecryptsOnToken) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "oaep", /*decrypt=*/true);
  auto pkey = Load(key);
  const std::string msg = "24-byte 3DES key here!!!";
  // Encrypt in software with the public key read from the token.
  ossl::UniquePtr<EVP_PKEY_CTX> enc(
      EVP_PKEY_CTX_new_from_pkey(nullptr, key->public_key.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_encrypt_init(enc.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(enc.get(), RSA_PKCS1_OAEP_PADDING), 1);
  size_t clen = 0;
  auto* m = reinterpret_cast<const unsigned char*>(msg.data());
  ASSERT_EQ(EVP_PKEY_encrypt(enc.get(), nullptr, &clen, m, msg.size()), 1);
  std::vector<uint8_t> ct(clen);
  ASSERT_EQ(EVP_PKEY_encrypt(enc.get(), ct.data(), &clen, m, msg.size()), 1);
  ct.resize(clen);

  ossl::UniquePtr<EVP_PKEY_CTX> dec(
      EVP_PKEY_CTX_new_from_pkey(crypto_->libctx(), pkey.get(), nullptr));
  ASSERT_EQ(EVP_PKEY_decrypt_init(dec.get()), 1);
  ASSERT_EQ(EVP_PKEY_CTX_set_rsa_padding(dec.get(), RSA_PKCS1_OAEP_PADDING), 1);
  size_t plen = 0;
  ASSERT_EQ(EVP_PKEY_decrypt(dec.get(), nullptr, &plen, ct.data(), ct.size()), 1);
  std::vector<uint8_t> pt(plen);
  ASSERT_EQ(EVP_PKEY_decrypt(dec.get(), pt.data(), &plen, ct.data(), ct.size()), 1)
      << hsm::OpenSslError("decrypt");
  EXPECT_EQ(std::string(pt.begin(), pt.begin() + static_cast<long>(plen)), msg);
}

TEST_F(ProviderTest, SoftwareKeysInTheSameContextStillWork) {
  // A software key in the provider's context must keep using the default provider.
  ossl::UniquePtr<EVP_PKEY> soft(
      EVP_PKEY_Q_keygen(crypto_->libctx(), nullptr, "RSA", size_t{2048}));
  ASSERT_NE(soft, nullptr);
  EXPECT_FALSE(hsm::IsTokenKey(soft.get()));
  auto cert = SelfSignedCa(crypto_->libctx(), soft.get(), "Software");
  ExpectOpensslVerifies(cert.get());
}

}  // namespace
}  // namespace keywarden::testing
