// pki::KraCard on real SoftHSM2 KRA cards: the content key is decrypted on
// the card, the PIN is tried once, and a wrong card costs no PIN attempt.
#include <cstdio>

#include <gtest/gtest.h>

#include "hsm/keys.h"
#include "hsm/module.h"
#include "hsm/open.h"
#include "pki/certificate.h"
#include "pki/kra_card.h"
#include "pki/private_key_blob.h"
#include "pki/recovery_blob.h"
#include "pki/rewrap.h"
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

// KRA rollover (pki::KraCard::Rewrap): card 1 moves an archive to card 3;
// the encrypted content is unchanged, card 3 alone recovers the key, card 1
// no longer can. Both schemes; then a card key without CKA_UNWRAP (the
// locked-memory fallback).
TEST_F(KraCardTest, RewrapMovesTheArchiveToTheNewKraOnly) {
  for (auto [alg, wrap] :
       {std::pair{hsm::SymmetricAlgorithm::kDes3, hsm::WrapMechanism::kRsaPkcs1},
        std::pair{hsm::SymmetricAlgorithm::kAes256, hsm::WrapMechanism::kRsaOaepSha1}}) {
    auto old_envelope = pki_->Archive(user_, {0, 1}, alg, wrap);
    ASSERT_TRUE(old_envelope.ok()) << old_envelope.status();
    auto der = pki_->Blob(user_, *old_envelope, {0, 1});
    ASSERT_TRUE(der.ok()) << der.status();
    auto blob = pki::ParseRecoveryBlob(*der, anchors_);
    ASSERT_TRUE(blob.ok()) << blob.status();
    auto card1 = Card(SoftHsmFixture::kKraCard1);
    ASSERT_TRUE(card1->Login(Pin(SoftHsmFixture::kKraCard1)).ok());
    auto r = card1->Rewrap(*blob, {pki_->kras()[2].cert.get()});
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_TRUE(r->unwrapped_on_card);
    auto before = pki::ParseArchiveEnvelope(*old_envelope);
    auto after = pki::ParseArchiveEnvelope(r->envelope);
    ASSERT_TRUE(before.ok() && after.ok());
    EXPECT_EQ(after->encrypted_content_info, before->encrypted_content_info);
    ASSERT_EQ(after->recipients.size(), 1u);
    EXPECT_TRUE(after->recipients[0].Names(pki_->kras()[2].cert.get()));

    auto new_der = pki_->Blob(user_, r->envelope, {2});
    ASSERT_TRUE(new_der.ok()) << new_der.status();
    auto new_blob = pki::ParseRecoveryBlob(*new_der, anchors_);
    ASSERT_TRUE(new_blob.ok()) << new_blob.status();
    auto card3 = Card(SoftHsmFixture::kKraCard3);
    ASSERT_TRUE(card3->Login(Pin(SoftHsmFixture::kKraCard3)).ok());
    auto key = card3->Recover(*new_blob);
    ASSERT_TRUE(key.ok()) << key.status();
    EXPECT_EQ(EVP_PKEY_eq(key->key.get(), user_.key.get()), 1);
    EXPECT_EQ(card1->Recover(*new_blob).status().code(), absl::StatusCode::kNotFound);
  }
}

TEST_F(KraCardTest, RewrapWithACardKeyThatCannotUnwrapFallsBackAndStillRecovers) {
  {  // Card 1's key as older cards have it: CKA_UNWRAP false.
    auto uri = hsm::Pkcs11Uri::Parse(SoftHsmFixture::TokenUri(SoftHsmFixture::kKraCard1));
    ASSERT_TRUE(uri.ok());
    hsm::OpenOptions open;
    open.default_module = SoftHsmFixture::module_path();
    open.pin = Pin(SoftHsmFixture::kKraCard1);
    auto token = hsm::OpenToken(*uri, open);
    ASSERT_TRUE(token.ok()) << token.status();
    auto session = (*token)->Acquire(hsm::Access::kReadWrite);
    ASSERT_TRUE(session.ok()) << session.status();
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    auto keys = hsm::FindObjects(*session, {hsm::Attr(CKA_CLASS, cls)});
    ASSERT_TRUE(keys.ok() && keys->size() == 1u);
    CK_ATTRIBUTE off = hsm::Attr(CKA_UNWRAP, hsm::kFalse);
    CK_RV rv = session->Call("C_SetAttributeValue", session->fn()->C_SetAttributeValue,
                             session->handle(), keys->front(), &off, CK_ULONG{1});
    if (rv != CKR_OK) GTEST_SKIP() << "the token does not let CKA_UNWRAP be changed: " << rv;
  }
  auto blob = BlobFor({0});
  auto card1 = Card(SoftHsmFixture::kKraCard1);
  ASSERT_TRUE(card1->Login(Pin(SoftHsmFixture::kKraCard1)).ok());
  auto r = card1->Rewrap(blob, {pki_->kras()[1].cert.get()});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->unwrapped_on_card);
  auto der = pki_->Blob(user_, r->envelope, {1});
  ASSERT_TRUE(der.ok()) << der.status();
  auto new_blob = pki::ParseRecoveryBlob(*der, anchors_);
  ASSERT_TRUE(new_blob.ok()) << new_blob.status();
  auto card2 = Card(SoftHsmFixture::kKraCard2);
  ASSERT_TRUE(card2->Login(Pin(SoftHsmFixture::kKraCard2)).ok());
  auto key = card2->Recover(*new_blob);
  ASSERT_TRUE(key.ok()) << key.status();
  EXPECT_EQ(EVP_PKEY_eq(key->key.get(), user_.key.get()), 1);
}

}  // namespace
}  // namespace keywarden::testing
