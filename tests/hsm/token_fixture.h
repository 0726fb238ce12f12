// A gtest fixture with fresh SoftHSM2 tokens, the CA token opened and logged
// in, and a CryptoContext with keywarden's provider. Each test gets its own
// token directory; all PKCS#11 state is released in TearDown, so the next
// test re-initialises SoftHSM2 against its own directory.
#pragma once

#include <memory>
#include <string>

#include <gtest/gtest.h>
#include <openssl/err.h>

#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/status.h"
#include "hsm/token.h"
#include "softhsm-fixtures/fixture.h"
#include "tests/test_util.h"

namespace keywarden::testing {

class TokenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto fixture = SoftHsmFixture::Create();
    ASSERT_TRUE(fixture.ok()) << fixture.status();
    fixture_ = std::move(*fixture);
    auto crypto = hsm::CryptoContext::Create();
    ASSERT_TRUE(crypto.ok()) << crypto.status();
    crypto_ = *crypto;
    ca_ = OpenToken(SoftHsmFixture::kCaToken);
    ASSERT_NE(ca_, nullptr);
  }

  void TearDown() override {
    ca_.reset();
    crypto_.reset();
    fixture_.reset();
  }

  std::shared_ptr<hsm::Token> OpenToken(const std::string& label) {
    auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(label));
    EXPECT_TRUE(uri.ok()) << uri.status();
    if (!uri.ok()) return nullptr;
    hsm::OpenOptions options;
    options.default_module = SoftHsmFixture::module_path();
    options.pin = hsm::PinSource::File(fixture_->PinFile(label));
    auto token = hsm::OpenToken(*uri, options);
    EXPECT_TRUE(token.ok()) << token.status();
    return token.ok() ? *token : nullptr;
  }

  std::shared_ptr<hsm::TokenKey> Generate(hsm::KeyAlgorithm algorithm, const std::string& label,
                                          bool decrypt = false) {
    hsm::KeySpec spec;
    spec.algorithm = algorithm;
    spec.label = label;
    spec.usage.decrypt = decrypt;
    auto key = hsm::GenerateKeyPair(ca_, spec);
    EXPECT_TRUE(key.ok()) << key.status();
    return key.ok() ? *key : nullptr;
  }

  ossl::UniquePtr<EVP_PKEY> Load(const std::shared_ptr<hsm::TokenKey>& key) {
    auto pkey = crypto_->Load(key);
    EXPECT_TRUE(pkey.ok()) << pkey.status();
    return pkey.ok() ? std::move(*pkey) : nullptr;
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  std::shared_ptr<hsm::CryptoContext> crypto_;
  std::shared_ptr<hsm::Token> ca_;
  TempDir tmp_;
};

}  // namespace keywarden::testing
