// pki::KraCard on real SoftHSM2 KRA cards: the content key is decrypted on
// the card, the PIN is tried once, and a wrong card costs no PIN attempt.
#include <cstdio>

#include <gtest/gtest.h>

#include "hsm/module.h"
#include "pki/certificate.h"
#include "pki/kra_card.h"
#include "pki/private_key_blob.h"
#include "pki/recovery_blob.h"
#include "tests/recovery_fixture.h"
#include "tests/test_util.h"

namespace keywarden::testing {
namespace {

class KraCardTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
    auto pki = RecoveryPki::Create(*fixture_);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = std::move(*pki);
    auto user = pki_->MakeUser("Bob");
    ASSERT_TRUE(user.ok()) << user.status();
    user_ = std::move(*user);
    anchors_.push_back(pki::SoftwareCopy(pki_->ca_cert()));
  }

  void TearDown() override {
    pki_.reset();
    fixture_.reset();
  }

  pki::RecoveryBlob BlobFor(const std::vector<size_t>& kras,
                            hsm::SymmetricAlgorithm alg = hsm::SymmetricAlgorithm::kDes3,
                            hsm::WrapMechanism wrap = hsm::WrapMechanism::kRsaPkcs1,
                            const std::vector<uint8_t>* plaintext = nullptr) {
    auto envelope = pki_->Archive(user_, kras, alg, wrap, plaintext);
    EXPECT_TRUE(envelope.ok()) << envelope.status();
    auto der = pki_->Blob(user_, *envelope, kras);
    EXPECT_TRUE(der.ok()) << der.status();
    auto blob = pki::ParseRecoveryBlob(*der, anchors_);
    EXPECT_TRUE(blob.ok()) << blob.status();
    return std::move(*blob);
  }

  std::unique_ptr<pki::KraCard> Card(const std::string& label) {
    auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(label));
    EXPECT_TRUE(uri.ok());
    auto card = pki::KraCard::Open(*uri, SoftHsmFixture::module_path());
    EXPECT_TRUE(card.ok()) << card.status();
    return card.ok() ? std::move(*card) : nullptr;
  }

  hsm::PinSource Pin(const std::string& label) {
    return hsm::PinSource::File(fixture_->PinFile(label));
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  std::unique_ptr<RecoveryPki> pki_;
  RecoveryUser user_;
  std::vector<ossl::UniquePtr<X509>> anchors_;
  TempDir tmp_;
};

TEST_F(KraCardTest, EachChosenCardRecoversTheUsersKey) {
  auto blob = BlobFor({0, 1});
  for (const char* label : {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2}) {
    auto card = Card(label);
    ASSERT_NE(card, nullptr);
    ASSERT_EQ(card->certificates().size(), 1u);
    EXPECT_FALSE(card->logged_in());
    ASSERT_TRUE(card->Login(Pin(label)).ok());
    pki::RecoveryTiming timing;
    auto key = card->Recover(blob, &timing);
    ASSERT_TRUE(key.ok()) << label << ": " << key.status();
    EXPECT_EQ(EVP_PKEY_eq(key->key.get(), user_.key.get()), 1);
    EXPECT_FALSE(key->was_private_key_blob);
    EXPECT_GT(timing.card, 0.0);
    ASSERT_NE(key->kra, nullptr);
    EXPECT_EQ(key->kra->label, "kra-key");
  }
}

TEST_F(KraCardTest, AesOaepArchivesAndPrivateKeyBlobsRecoverToo) {
  auto blob_plain = pki::SerializePrivateKeyBlob(user_.key.get());
  ASSERT_TRUE(blob_plain.ok()) << blob_plain.status();
  std::vector<uint8_t> capi(blob_plain->data(), blob_plain->data() + blob_plain->size());
  auto aes = BlobFor({2}, hsm::SymmetricAlgorithm::kAes256, hsm::WrapMechanism::kRsaOaepSha1);
  EXPECT_EQ(aes.content_cipher, "aes-256-cbc");
  EXPECT_EQ(aes.recipients[0].key_transport, "rsaesOaep");
  auto capi_blob =
      BlobFor({2}, hsm::SymmetricAlgorithm::kDes3, hsm::WrapMechanism::kRsaPkcs1, &capi);
  auto card = Card(SoftHsmFixture::kKraCard3);
  ASSERT_TRUE(card->Login(Pin(SoftHsmFixture::kKraCard3)).ok());
  auto a = card->Recover(aes);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(EVP_PKEY_eq(a->key.get(), user_.key.get()), 1);
  auto c = card->Recover(capi_blob);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->was_private_key_blob);
  EXPECT_EQ(c->ai_key_alg, pki::kCalgRsaKeyx);
  EXPECT_EQ(EVP_PKEY_eq(c->key.get(), user_.key.get()), 1);
}

TEST_F(KraCardTest, WrongCardNamesTheKrasThatWouldWorkBeforeAnyLogin) {
  auto blob = BlobFor({0, 1});
  auto card = Card(SoftHsmFixture::kKraCard3);
  auto match = card->Match(blob);
  ASSERT_EQ(match.status().code(), absl::StatusCode::kNotFound);
  const std::string msg(match.status().message());
  EXPECT_NE(msg.find("CN=KRA 1,O=keywarden"), std::string::npos) << msg;
  EXPECT_NE(msg.find("CN=KRA 2,O=keywarden"), std::string::npos) << msg;
  EXPECT_NE(msg.find(pki::Sha1Thumbprint(pki_->kras()[0].cert.get())), std::string::npos) << msg;
  EXPECT_NE(msg.find("holds:\n  \"CN=KRA 3"), std::string::npos) << msg;
  EXPECT_FALSE(card->logged_in());
  EXPECT_EQ(card->Recover(blob).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(KraCardTest, AWrongPinIsTriedOnceAndNeverAgain) {
  auto card = Card(SoftHsmFixture::kKraCard1);
  auto module = hsm::Module::Load(SoftHsmFixture::module_path());
  ASSERT_TRUE(module.ok());
  const std::string trace_path = tmp_.File("trace.txt");
  FILE* trace = std::fopen(trace_path.c_str(), "w");
  ASSERT_NE(trace, nullptr);
  (*module)->SetTrace(true, trace);
  auto wrong = hsm::PinSource::Value(hsm::SecretString("not-the-pin"));
  auto first = card->Login(wrong);
  auto second = card->Login(Pin(SoftHsmFixture::kKraCard1));  // even the right PIN: not sent
  (*module)->SetTrace(false);
  std::fclose(trace);
  ASSERT_FALSE(first.ok());
  EXPECT_EQ(first.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(first.ToString().find("wrong PIN (CKR_PIN_INCORRECT)"), std::string::npos) << first;
  EXPECT_NE(first.ToString().find("exactly one login attempt"), std::string::npos) << first;
  EXPECT_EQ(second, first);
  EXPECT_FALSE(card->logged_in());
  auto lines = ReadFile(trace_path);
  const std::string text(lines.begin(), lines.end());
  size_t logins = 0;
  for (size_t at = 0; (at = text.find("C_Login", at)) != std::string::npos; ++at) ++logins;
  EXPECT_EQ(logins, 1u) << text;
  auto blob = BlobFor({0});
  EXPECT_EQ(card->Recover(blob).status(), first);
}

TEST_F(KraCardTest, ObjectInTheUriNarrowsTheCard) {
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=kra-card-1;object=no-such-kra");
  ASSERT_TRUE(uri.ok());
  auto card = pki::KraCard::Open(*uri, SoftHsmFixture::module_path());
  ASSERT_TRUE(card.ok()) << card.status();
  EXPECT_TRUE((*card)->certificates().empty());
  EXPECT_NE((*card)->Match(BlobFor({0})).status().ToString().find("holds no certificate"),
            std::string::npos);
}

}  // namespace
}  // namespace keywarden::testing
