// keywarden verifykeys checks the private key's own numbers, not only that
// its public half matches: keys with a damaged private exponent (d = 1) or
// prime (p + 2), built with EVP_PKEY_fromdata (no OpenSSL checks), still
// decrypt what the public key encrypts, and must be refused, named.
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/secret.h"
#include "hsm/strings.h"
#include "pki/pkcs12.h"
#include "pki/private_key_blob.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

constexpr const char* kNumbers[] = {
    OSSL_PKEY_PARAM_RSA_N,         OSSL_PKEY_PARAM_RSA_E,           OSSL_PKEY_PARAM_RSA_D,
    OSSL_PKEY_PARAM_RSA_FACTOR1,   OSSL_PKEY_PARAM_RSA_FACTOR2,     OSSL_PKEY_PARAM_RSA_EXPONENT1,
    OSSL_PKEY_PARAM_RSA_EXPONENT2, OSSL_PKEY_PARAM_RSA_COEFFICIENT1};

// `good`'s numbers with `change` applied to the one named `which`.
ossl::UniquePtr<EVP_PKEY> Damaged(EVP_PKEY* good, const std::string& which,
                                  const std::function<void(BIGNUM*)>& change) {
  ossl::UniquePtr<OSSL_PARAM_BLD> bld(OSSL_PARAM_BLD_new());
  std::vector<ossl::UniquePtr<BIGNUM>> keep;
  for (const char* name : kNumbers) {
    BIGNUM* bn = nullptr;
    if (EVP_PKEY_get_bn_param(good, name, &bn) != 1) return nullptr;
    keep.emplace_back(bn);
    if (which == name) change(bn);
    OSSL_PARAM_BLD_push_BN(bld.get(), name, bn);
  }
  ossl::UniquePtr<OSSL_PARAM> params(OSSL_PARAM_BLD_to_param(bld.get()));
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_name(nullptr, "RSA", nullptr));
  EVP_PKEY* raw = nullptr;
  if (!ctx || EVP_PKEY_fromdata_init(ctx.get()) != 1 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_KEYPAIR, params.get()) != 1) {
    return nullptr;
  }
  return ossl::UniquePtr<EVP_PKEY>(raw);
}

class VerifyKeysTest : public ::testing::Test {
 protected:
  void SetUp() override {
    good_ = SoftwareRsaKey(2048);
    ASSERT_TRUE(good_);
    WriteFile(dir_.File("pub.pem"), PublicKeyPem(good_.get()));
  }
  CommandResult VerifyKeys(EVP_PKEY* key, const std::string& name) {
    WriteFile(dir_.File(name), PrivateKeyPem(key));
    return RunCommand(
        StrCat(KEYWARDEN_CLI, " verifykeys ", dir_.File(name), " ", dir_.File("pub.pem")));
  }
  TempDir dir_;
  ossl::UniquePtr<EVP_PKEY> good_;
};

TEST_F(VerifyKeysTest, AnIntactKeyMatches) {
  auto r = VerifyKeys(good_.get(), "good.key");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Keys match"), std::string::npos) << r.output;
}

TEST_F(VerifyKeysTest, PrivateExponentOneIsRefusedAndNamed) {
  auto bad = Damaged(good_.get(), OSSL_PKEY_PARAM_RSA_D, [](BIGNUM* d) { BN_one(d); });
  ASSERT_TRUE(bad);
  // The public half is the same: only the private numbers are wrong.
  ASSERT_EQ(EVP_PKEY_eq(bad.get(), good_.get()), 1);
  auto r = VerifyKeys(bad.get(), "d1.key");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.find("Keys match"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("keys do NOT match"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the private key is damaged"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("privateExponent * pubexp is not 1"), std::string::npos) << r.output;
}

TEST_F(VerifyKeysTest, PrimePlusTwoIsRefusedAndNamed) {
  auto bad =
      Damaged(good_.get(), OSSL_PKEY_PARAM_RSA_FACTOR1, [](BIGNUM* p) { BN_add_word(p, 2); });
  ASSERT_TRUE(bad);
  ASSERT_EQ(EVP_PKEY_eq(bad.get(), good_.get()), 1);
  auto r = VerifyKeys(bad.get(), "p2.key");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(r.output.find("Keys match"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("the private key is damaged"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("modulus is not prime1 * prime2"), std::string::npos) << r.output;
}

TEST_F(VerifyKeysTest, WrongCrtValueIsNamed) {
  auto bad =
      Damaged(good_.get(), OSSL_PKEY_PARAM_RSA_EXPONENT2, [](BIGNUM* dq) { BN_add_word(dq, 2); });
  ASSERT_TRUE(bad);
  auto r = VerifyKeys(bad.get(), "dq.key");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("exponent2 is not privateExponent mod (prime2 - 1)"), std::string::npos)
      << r.output;
}

// A PFX with two keys (a merged recovery, certutil -MergePFX): every key is
// checked against the certificate the file holds for it, each reported.
class VerifyPfxKeysTest : public VerifyKeysTest {
 protected:
  void SetUp() override {
    VerifyKeysTest::SetUp();
    second_ = SoftwareRsaKey(2048);
    ASSERT_TRUE(second_);
    first_cert_ = SelfSignedCa(nullptr, good_.get(), "first user");
    second_cert_ = SelfSignedCa(nullptr, second_.get(), "second user");
    ASSERT_TRUE(first_cert_ && second_cert_);
  }
  // A PFX of (good_, first user) and (`second`, second user).
  CommandResult VerifyPfx(EVP_PKEY* second, const std::string& extra = "") {
    auto pfx = pki::BuildPkcs12(
        {{good_.get(), first_cert_.get(), {}, "first"}, {second, second_cert_.get(), {}, "second"}},
        hsm::SecretString("two keys"));
    EXPECT_TRUE(pfx.ok()) << pfx.status();
    if (!pfx.ok()) return {};
    WriteFile(dir_.File("two.pfx"), *pfx);
    WriteFile(dir_.File("pw"), "two keys");
    // Independently: openssl sees two keys in the file.
    auto keys = RunCommand(StrCat("openssl pkcs12 -nocerts -nodes -passin pass:'two keys' -in ",
                                  dir_.File("two.pfx")));
    size_t count = 0;
    for (size_t at = keys.output.find("BEGIN PRIVATE KEY"); at != std::string::npos;
         at = keys.output.find("BEGIN PRIVATE KEY", at + 1)) {
      ++count;
    }
    EXPECT_EQ(count, 2u) << keys.output;
    return RunCommand(StrCat(KEYWARDEN_CLI, " verifykeys ", dir_.File("two.pfx"), " ", extra,
                             " --password file:", dir_.File("pw")));
  }
  ossl::UniquePtr<EVP_PKEY> second_;
  ossl::UniquePtr<X509> first_cert_, second_cert_;
};

TEST_F(VerifyPfxKeysTest, BothKeysOfATwoKeyPfxAreCheckedAndReported) {
  auto r = VerifyPfx(second_.get());
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("key 1 of 2 (\"first\") is the private key of \"CN=first user\""),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("key 2 of 2 (\"second\") is the private key of \"CN=second user\""),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("2 of 2 key(s)"), std::string::npos) << r.output;
}

TEST_F(VerifyPfxKeysTest, ADamagedSecondKeyIsCaught) {
  auto bad = Damaged(second_.get(), OSSL_PKEY_PARAM_RSA_D, [](BIGNUM* d) { BN_add_word(d, 2); });
  ASSERT_TRUE(bad);
  ASSERT_EQ(EVP_PKEY_eq(bad.get(), second_.get()), 1);  // same public half
  auto r = VerifyPfx(bad.get());
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("Keys match: " + dir_.File("two.pfx") + " key 1 of 2"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("keys do NOT match: " + dir_.File("two.pfx") + " key 2 of 2"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("the private key is damaged"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("1 of 2 key(s)"), std::string::npos) << r.output;
}

TEST_F(VerifyPfxKeysTest, AGivenCertificateMustBelongToOneOfTheKeys) {
  WriteFile(dir_.File("second.pem"), ToPem(second_cert_.get()));
  auto r = VerifyPfx(second_.get(), dir_.File("second.pem"));
  EXPECT_EQ(r.exit_code, 0) << r.output;
  auto stranger = SoftwareRsaKey(2048);
  WriteFile(dir_.File("stranger.pem"), PublicKeyPem(stranger.get()));
  r = VerifyPfx(second_.get(), dir_.File("stranger.pem"));
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("no key of"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace keywarden::testing
