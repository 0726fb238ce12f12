// Session keys for archival: made on the token, used there to encrypt, and
// leaving it only wrapped. Checked by unwrapping and decrypting in software.
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "hsm/status.h"
#include "hsm/symmetric.h"
#include "tests/hsm/token_fixture.h"

namespace keywarden::testing {
namespace {

using hsm::SessionKey;
using hsm::SymmetricAlgorithm;
using hsm::WrapMechanism;

std::vector<uint8_t> RsaDecrypt(EVP_PKEY* key, const std::vector<uint8_t>& in, int pad) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  EVP_PKEY_decrypt_init(ctx.get());
  EVP_PKEY_CTX_set_rsa_padding(ctx.get(), pad);
  size_t len = 0;
  if (EVP_PKEY_decrypt(ctx.get(), nullptr, &len, in.data(), in.size()) != 1) return {};
  std::vector<uint8_t> out(len);
  if (EVP_PKEY_decrypt(ctx.get(), out.data(), &len, in.data(), in.size()) != 1) return {};
  out.resize(len);
  return out;
}

std::vector<uint8_t> CbcDecrypt(const char* cipher, const std::vector<uint8_t>& key,
                                const hsm::Ciphertext& ct) {
  ossl::UniquePtr<EVP_CIPHER_CTX> ctx(EVP_CIPHER_CTX_new());
  ossl::UniquePtr<EVP_CIPHER> c(EVP_CIPHER_fetch(nullptr, cipher, nullptr));
  std::vector<uint8_t> out(ct.data.size() + 32);
  int n1 = 0, n2 = 0;
  if (EVP_DecryptInit_ex2(ctx.get(), c.get(), key.data(), ct.iv.data(), nullptr) != 1 ||
      EVP_DecryptUpdate(ctx.get(), out.data(), &n1, ct.data.data(),
                        static_cast<int>(ct.data.size())) != 1 ||
      EVP_DecryptFinal_ex(ctx.get(), out.data() + n1, &n2) != 1) {
    return {};
  }
  out.resize(static_cast<size_t>(n1 + n2));
  return out;
}

class SymmetricTest : public TokenTest {};

TEST_F(SymmetricTest, Des3KeyWrappedToRsaDecryptsTheTokenCiphertext) {
  auto kra = SoftwareRsaKey();
  std::vector<uint8_t> plaintext(1172);  // the size of a 2048-bit PRIVATEKEYBLOB
  RAND_bytes(plaintext.data(), static_cast<int>(plaintext.size()));

  auto key = SessionKey::Generate(ca_, SymmetricAlgorithm::kDes3);
  ASSERT_TRUE(key.ok()) << key.status();
  auto ct = key->Encrypt(plaintext);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->iv.size(), 8u);
  EXPECT_EQ(ct->data.size(), 1176u);  // PKCS#7 padding to the 8-byte block
  auto wrapped = key->WrapTo(kra.get(), WrapMechanism::kRsaPkcs1);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  EXPECT_EQ(wrapped->size(), 256u);

  auto des3 = RsaDecrypt(kra.get(), *wrapped, RSA_PKCS1_PADDING);
  ASSERT_EQ(des3.size(), 24u);
  EXPECT_EQ(CbcDecrypt("DES-EDE3-CBC", des3, *ct), plaintext);
}

TEST_F(SymmetricTest, Aes256KeyWrappedWithOaepDecryptsTheTokenCiphertext) {
  auto kra = SoftwareRsaKey(3072);
  std::vector<uint8_t> plaintext(777);
  RAND_bytes(plaintext.data(), static_cast<int>(plaintext.size()));
  auto key = SessionKey::Generate(ca_, SymmetricAlgorithm::kAes256);
  ASSERT_TRUE(key.ok()) << key.status();
  auto ct = key->Encrypt(plaintext);
  ASSERT_TRUE(ct.ok()) << ct.status();
  EXPECT_EQ(ct->iv.size(), 16u);
  auto wrapped = key->WrapTo(kra.get(), WrapMechanism::kRsaOaepSha1);
  ASSERT_TRUE(wrapped.ok()) << wrapped.status();
  auto aes = RsaDecrypt(kra.get(), *wrapped, RSA_PKCS1_OAEP_PADDING);
  ASSERT_EQ(aes.size(), 32u);
  EXPECT_EQ(CbcDecrypt("AES-256-CBC", aes, *ct), plaintext);
  // OAEP-wrapped: PKCS#1 v1.5 unwrapping must not give the key.
  EXPECT_NE(RsaDecrypt(kra.get(), *wrapped, RSA_PKCS1_PADDING), aes);
}

TEST_F(SymmetricTest, OneKeyWrapsToSeveralRecipientsAndEachUnwrapsTheSameKey) {
  auto kra1 = SoftwareRsaKey(), kra2 = SoftwareRsaKey();
  auto key = SessionKey::Generate(ca_, SymmetricAlgorithm::kDes3);
  ASSERT_TRUE(key.ok());
  auto w1 = key->WrapTo(kra1.get(), WrapMechanism::kRsaPkcs1);
  auto w2 = key->WrapTo(kra2.get(), WrapMechanism::kRsaPkcs1);
  ASSERT_TRUE(w1.ok() && w2.ok());
  auto k1 = RsaDecrypt(kra1.get(), *w1, RSA_PKCS1_PADDING);
  EXPECT_EQ(k1.size(), 24u);
  EXPECT_EQ(k1, RsaDecrypt(kra2.get(), *w2, RSA_PKCS1_PADDING));
}

TEST_F(SymmetricTest, KeyValueCannotBeReadAndIvsAreFresh) {
  auto key = SessionKey::Generate(ca_, SymmetricAlgorithm::kDes3);
  ASSERT_TRUE(key.ok());
  auto value = hsm::GetAttribute(key->session(), key->handle(), CKA_VALUE);
  ASSERT_FALSE(value.ok());
  EXPECT_NE(value.status().message().find("CKR_ATTRIBUTE_SENSITIVE"), absl::string_view::npos)
      << value.status();
  std::vector<uint8_t> data(64, 0x42);
  auto a = key->Encrypt(data), b = key->Encrypt(data);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(a->iv, b->iv);
  EXPECT_NE(a->data, b->data);
}

TEST_F(SymmetricTest, KeyIsDestroyedWithItsOwner) {
  CK_OBJECT_HANDLE handle;
  {
    auto key = SessionKey::Generate(ca_, SymmetricAlgorithm::kAes256);
    ASSERT_TRUE(key.ok());
    handle = key->handle();
  }
  auto session = ca_->Acquire();
  ASSERT_TRUE(session.ok());
  auto value = hsm::GetAttribute(*session, handle, CKA_CLASS);
  EXPECT_FALSE(value.ok());
}

TEST_F(SymmetricTest, WrappingToANonRsaKeyIsRefused) {
  ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
  auto key = SessionKey::Generate(ca_, SymmetricAlgorithm::kDes3);
  ASSERT_TRUE(key.ok());
  auto wrapped = key->WrapTo(ec.get(), WrapMechanism::kRsaPkcs1);
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace keywarden::testing
