// keywarden verifykeys checks the private key's own numbers, not only that
// its public half matches: keys with a damaged private exponent (d = 1) or
// prime (p + 2), built with EVP_PKEY_fromdata (no OpenSSL checks), still
// decrypt what the public key encrypts, and must be refused, named.
#include <openssl/core_names.h>
#include <openssl/param_build.h>

#include <functional>
#include <vector>

#include <gtest/gtest.h>

#include "hsm/strings.h"
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

}  // namespace
}  // namespace keywarden::testing
