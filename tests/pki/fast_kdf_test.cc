// pki/fast_kdf.h: the derivations give OpenSSL's own numbers (its default
// provider computes the expectations, plus published PBKDF2 vectors), and a
// PFX written through the provider is the same format, read back by
// OpenSSL's default code and the openssl CLI.
#include "pki/fast_kdf.h"

#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pkcs12.h>
#include <openssl/rand.h>
#include <openssl/rsa.h>

#include "hsm/secret.h"
#include "pki/certificate.h"
#include "pki/pkcs12.h"
#include "tests/test_util.h"

namespace keywarden::pki {
namespace {

std::string Hex(const std::vector<uint8_t>& b) {
  static const char* d = "0123456789abcdef";
  std::string s;
  for (uint8_t c : b) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

std::vector<uint8_t> Bytes(const std::string& s) {
  return {s.begin(), s.end()};
}

std::vector<uint8_t> Random(size_t n) {
  std::vector<uint8_t> b(n);
  if (n > 0) {
    EXPECT_EQ(RAND_bytes(b.data(), static_cast<int>(n)), 1);
  }
  return b;
}

TEST(FastKdfTest, Pbkdf2MatchesPublishedVectors) {
  // PBKDF2-HMAC-SHA256, P = "password", S = "salt", dkLen 32 (the RFC 6070
  // inputs; values as published for SHA-256, e.g. RFC 7914 section 11's
  // neighbours on Stack Overflow 5130513 and in many libraries' tests).
  struct Case {
    uint64_t iter;
    const char* hex;
  };
  for (const Case& c :
       {Case{1, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"},
        Case{2, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"},
        Case{4096, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"}}) {
    std::vector<uint8_t> out(32);
    ASSERT_TRUE(Pbkdf2HmacSha256(Bytes("password"), Bytes("salt"), c.iter, out));
    EXPECT_EQ(Hex(out), c.hex) << c.iter;
  }
}

TEST(FastKdfTest, Pbkdf2EqualsOpenSslForManyShapes) {
  // Passwords around the 64-byte HMAC block (longer ones are hashed first),
  // empty and long salts, outputs of several blocks.
  for (size_t pass_len : {0u, 1u, 14u, 63u, 64u, 65u, 200u}) {
    for (size_t salt_len : {0u, 8u, 16u, 100u}) {
      for (size_t out_len : {16u, 32u, 33u, 80u}) {
        for (uint64_t iter : {1u, 3u, 1000u}) {
          const auto pass = Random(pass_len);
          const auto salt = Random(salt_len);
          std::vector<uint8_t> mine(out_len), theirs(out_len);
          ASSERT_TRUE(Pbkdf2HmacSha256(pass, salt, iter, mine));
          ASSERT_EQ(PKCS5_PBKDF2_HMAC(reinterpret_cast<const char*>(pass.data()),
                                      static_cast<int>(pass.size()), salt.data(),
                                      static_cast<int>(salt.size()), static_cast<int>(iter),
                                      EVP_sha256(), static_cast<int>(out_len), theirs.data()),
                    1);
          EXPECT_EQ(Hex(mine), Hex(theirs)) << "pass " << pass_len << " salt " << salt_len
                                            << " out " << out_len << " iter " << iter;
        }
      }
    }
  }
  std::vector<uint8_t> out(32);
  EXPECT_FALSE(Pbkdf2HmacSha256(Bytes("p"), Bytes("s"), 0, out));
}

TEST(FastKdfTest, Pkcs12KdfEqualsOpenSslForEveryIdAndSeveralBlocks) {
  for (int id : {1, 2, 3}) {
    for (size_t pass_len : {0u, 2u, 30u, 64u, 130u}) {  // BMPString bytes, as OpenSSL passes them
      for (size_t salt_len : {8u, 20u, 70u}) {
        for (size_t out_len : {8u, 24u, 32u, 100u}) {  // > 32: I is updated between blocks
          for (uint64_t iter : {1u, 2u, 1000u}) {
            auto pass = Random(pass_len);
            const auto salt = Random(salt_len);
            std::vector<uint8_t> mine(out_len), theirs(out_len);
            ASSERT_TRUE(Pkcs12KdfSha256(pass, salt, id, iter, mine));
            ASSERT_EQ(PKCS12_key_gen_uni(pass.empty() ? nullptr : pass.data(),
                                         static_cast<int>(pass.size()),
                                         const_cast<unsigned char*>(salt.data()),
                                         static_cast<int>(salt.size()), id, static_cast<int>(iter),
                                         static_cast<int>(out_len), theirs.data(), EVP_sha256()),
                      1);
            EXPECT_EQ(Hex(mine), Hex(theirs)) << "id " << id << " pass " << pass_len << " salt "
                                              << salt_len << " out " << out_len << " iter " << iter;
          }
        }
      }
    }
  }
}

TEST(FastKdfTest, PfxIsDerivedByTheProviderAndReadByOpenSsl) {
  ASSERT_NE(FastKdfContext(), nullptr);
  ossl::UniquePtr<EVP_PKEY> key(EVP_RSA_gen(2048));
  ASSERT_TRUE(key);
  ossl::UniquePtr<X509_NAME> name(X509_NAME_new());
  ASSERT_TRUE(name);
  ASSERT_EQ(X509_NAME_add_entry_by_txt(name.get(), "CN", MBSTRING_UTF8,
                                       reinterpret_cast<const unsigned char*>("Fast KDF user"), -1,
                                       -1, 0),
            1);
  RootCaOptions options;
  options.subject = name.get();
  auto cert = MakeSelfSignedRoot(nullptr, key.get(), options);
  ASSERT_TRUE(cert.ok()) << cert.status();
  const hsm::SecretString password("fast-kdf-pw");

  const uint64_t before = FastKdfDerivations();
  auto pfx = BuildPkcs12({{key.get(), cert->get(), {}, "user"}}, password);
  ASSERT_TRUE(pfx.ok()) << pfx.status();
  // Key bag, certificate bag and MAC key: three derivations, all here.
  EXPECT_EQ(FastKdfDerivations() - before, 3u);
  // The legacy protection (3DES, SHA-1) never uses it.
  auto legacy = BuildPkcs12({{key.get(), cert->get(), {}, "user"}}, password,
                            {Pkcs12Protection::kLegacy3Des, 0});
  ASSERT_TRUE(legacy.ok()) << legacy.status();
  EXPECT_EQ(FastKdfDerivations() - before, 3u);

  // Read back by OpenSSL's own derivations (ReadPkcs12 uses the default and
  // legacy providers only): MAC, key and certificate.
  auto read = ReadPkcs12(*pfx, password);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->keys.size(), 1u);
  EXPECT_EQ(EVP_PKEY_eq(read->keys[0].key.get(), key.get()), 1);
  ASSERT_TRUE(read->keys[0].certificate);
  EXPECT_EQ(X509_cmp(read->keys[0].certificate.get(), cert->get()), 0);
  EXPECT_FALSE(ReadPkcs12(*pfx, hsm::SecretString("wrong")).ok());

  // And by the openssl CLI, which also shows the unchanged protection.
  testing::TempDir tmp;
  testing::WriteFile(tmp.File("u.pfx"), *pfx);
  auto info = testing::RunCommand("openssl pkcs12 -info -noout -in " + tmp.File("u.pfx") +
                                  " -passin pass:fast-kdf-pw");
  EXPECT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("MAC: sha256, Iteration 10000"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("PKCS7 Encrypted data: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, "
                             "PRF hmacWithSHA256"),
            std::string::npos)
      << info.output;
  EXPECT_NE(info.output.find("Shrouded Keybag: PBES2, PBKDF2, AES-256-CBC, Iteration 10000, PRF "
                             "hmacWithSHA256"),
            std::string::npos)
      << info.output;
}

}  // namespace
}  // namespace keywarden::pki
