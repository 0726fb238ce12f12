// The CMC parser on real Windows key-archival requests
// (shared/vectors/windows-key-archival), and on tampered copies of them.
#include "pki/cmc.h"

#include <algorithm>
#include <stdexcept>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_VECTORS
#error "KEYWARDEN_VECTORS must name shared/vectors/windows-key-archival"
#endif

namespace keywarden::testing {
namespace {

// A missing vector fails the test with its path (never an out-of-range read).
std::vector<uint8_t> Vector(const std::string& name) {
  return ReadRequiredFile(std::string(KEYWARDEN_VECTORS) + "/" + name);
}

constexpr char kUserTemplate[] =
    "1.3.6.1.4.1.311.21.8.10998015.4198218.6898329.11679014.10423712.128.12396513.1783547";

struct Expect {
  const char* file;
  const char* template_oid;
  int64_t major, minor;
  const char* template_name;
  int bits;
  const char* hash_prefix;  // from the vectors' README
};

const Expect kVectors[] = {
    {"user-enroll-1.der", kUserTemplate, 100, 135, "", 2048, "74eaf810"},
    {"user-enroll-2.der", kUserTemplate, 100, 135, "", 2048, "1604db63"},
    {"user-enroll-3.der", kUserTemplate, 100, 135, "", 2048, "18790ae4"},
    {"user-enroll-4.der", kUserTemplate, 100, 137, "", 2048, "d448304f"},
    {"computer-enroll.der",
     "1.3.6.1.4.1.311.21.8.10998015.4198218.6898329.11679014.10423712.128.5234357.7390925", 100, 51,
     "", 2048, "47c51864"},
    {"sample-request.der", "", -1, -1, "User", 1024, "7746e7e6"},
};

TEST(CmcRequestTest, EveryWindowsVectorParsesAndVerifies) {
  for (const Expect& v : kVectors) {
    auto req = pki::ParseCmcRequest(Vector(v.file));
    ASSERT_TRUE(req.ok()) << v.file << ": " << req.status();
    EXPECT_EQ(req->digest, "SHA1") << v.file;
    EXPECT_TRUE(req->signer_by_key_id) << v.file;
    EXPECT_EQ(req->pkcs10_body_part_id, 1) << v.file;
    EXPECT_EQ(req->pkcs10.template_oid, v.template_oid) << v.file;
    EXPECT_EQ(req->pkcs10.template_major, v.major) << v.file;
    EXPECT_EQ(req->pkcs10.template_minor, v.minor) << v.file;
    EXPECT_EQ(req->pkcs10.template_name, v.template_name) << v.file;
    EXPECT_EQ(EVP_PKEY_get_bits(req->pkcs10.public_key()), v.bits) << v.file;
    ASSERT_TRUE(req->encrypted_key.has_value()) << v.file;
    ASSERT_TRUE(req->encrypted_key_hash.has_value()) << v.file;
    EXPECT_EQ(HexString(*req->encrypted_key_hash).substr(0, 8), v.hash_prefix) << v.file;
  }
}

TEST(CmcRequestTest, WindowsUserRequestsHaveAnEmptySubject) {
  auto req = pki::ParseCmcRequest(Vector("user-enroll-1.der"));
  ASSERT_TRUE(req.ok());
  EXPECT_TRUE(req->pkcs10.empty_subject);
  auto sample = pki::ParseCmcRequest(Vector("sample-request.der"));
  ASSERT_TRUE(sample.ok());
  EXPECT_FALSE(sample->pkcs10.empty_subject);
  EXPECT_FALSE(sample->client_info.empty());  // 1.3.6.1.4.1.311.21.20
}

TEST(CmcRequestTest, EncryptedKeyIsTheContentInfoThatOpensslCanRead) {
  auto req = pki::ParseCmcRequest(Vector("user-enroll-1.der"));
  ASSERT_TRUE(req.ok());
  TempDir dir;
  WriteFile(dir.File("env.der"), *req->encrypted_key);
  // Independent check: the exchange key from the vectors decrypts it with openssl.
  auto r = RunCommand("openssl cms -decrypt -binary -inform DER -in " + dir.File("env.der") +
                      " -inkey " + std::string(KEYWARDEN_VECTORS) + "/ca-exchange-key.pem -out " +
                      dir.File("blob.bin"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto blob = ReadFile(dir.File("blob.bin"));
  ASSERT_EQ(blob.size(), 1172u);  // 2048-bit PRIVATEKEYBLOB
  EXPECT_EQ(blob[0], 0x07);       // bType PRIVATEKEYBLOB
  EXPECT_EQ(std::string(blob.begin() + 8, blob.begin() + 12), "RSA2");
}

// Finds `needle` in `hay`; the position of its first byte.
size_t Find(const std::vector<uint8_t>& hay, const std::vector<uint8_t>& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? std::string::npos : static_cast<size_t>(it - hay.begin());
}

TEST(CmcRequestTest, TamperedHashSignatureOrKeyIsRefusedNamingTheCheck) {
  const auto original = Vector("user-enroll-2.der");
  auto parsed = pki::ParseCmcRequest(original);
  ASSERT_TRUE(parsed.ok());

  // 1. A byte of the encrypted key: its hash no longer matches.
  auto key_changed = original;
  size_t key_at = Find(original, *parsed->encrypted_key);
  ASSERT_NE(key_at, std::string::npos);
  key_changed[key_at + parsed->encrypted_key->size() - 3] ^= 0x01;
  auto a = pki::ParseCmcRequest(key_changed);
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("does not match the encrypted private key"),
            absl::string_view::npos)
      << a.status();

  // 2. A byte of the hash in the signed control: the messageDigest breaks.
  auto hash_changed = original;
  size_t hash_at = Find(original, *parsed->encrypted_key_hash);
  ASSERT_NE(hash_at, std::string::npos);
  hash_changed[hash_at] ^= 0x01;
  auto b = pki::ParseCmcRequest(hash_changed);
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("messageDigest"), absl::string_view::npos) << b.status();

  // 3. A byte of the CMS signature value (it sits just before the unsigned attributes).
  auto sig_changed = original;
  sig_changed[key_at - 30] ^= 0x01;
  auto c = pki::ParseCmcRequest(sig_changed);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("signature"), absl::string_view::npos) << c.status();
}

TEST(CmcRequestTest, MalformedInputIsAClearErrorNeverACrash) {
  const auto original = Vector("user-enroll-3.der");
  for (size_t cut : {size_t{0}, size_t{1}, size_t{10}, original.size() / 2, original.size() - 1}) {
    std::vector<uint8_t> truncated(original.begin(), original.begin() + static_cast<long>(cut));
    auto r = pki::ParseCmcRequest(truncated);
    EXPECT_FALSE(r.ok()) << cut;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Every single-byte flip: never a crash, never accepted.
  int accepted = 0;
  for (size_t i = 0; i < original.size(); i += 7) {
    auto flipped = original;
    flipped[i] ^= 0x5a;
    if (pki::ParseCmcRequest(flipped).ok()) ++accepted;
  }
  EXPECT_EQ(accepted, 0);
}

}  // namespace
}  // namespace keywarden::testing
