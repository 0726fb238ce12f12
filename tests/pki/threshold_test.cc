// Threshold archives and share contributions (pki/threshold.h) with
// software KRA keys; openssl's CMS reader checks the encoding
// independently. Token cards are covered by the recovery tests.
#include "pki/threshold.h"

#include <gtest/gtest.h>
#include <openssl/rand.h>

#include <algorithm>
#include <string>
#include <vector>

#include "pki/rewrap.h"
#include "pki/shamir.h"
#include "tests/test_util.h"

namespace keywarden::pki::threshold {
namespace {

using testing::RunCommand;
using testing::TempDir;
using testing::WriteFile;

struct Kra {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
};

std::vector<Kra> MakeKras(int n, const std::string& prefix = "KRA ") {
  std::vector<Kra> out;
  for (int i = 0; i < n; ++i) {
    Kra k;
    k.key = testing::SoftwareRsaKey(2048);
    k.cert = testing::SelfSignedCa(nullptr, k.key.get(), prefix + std::to_string(i + 1));
    out.push_back(std::move(k));
  }
  return out;
}

shamir::RandomSource OpenSslRandom() {
  return [](std::span<uint8_t> out) {
    return RAND_bytes(out.data(), static_cast<int>(out.size())) == 1
               ? absl::OkStatus()
               : absl::InternalError("RAND_bytes");
  };
}

struct Built {
  std::vector<uint8_t> der;
  std::vector<uint8_t> plaintext;
  hsm::SecretBytes content_key;
};

Built BuildArchive(const std::vector<Kra>& kras, int k, KeyTransport transport,
                   ContentCipher cipher = ContentCipher::kAes256Cbc) {
  Built b;
  b.plaintext.assign(300, 0);
  for (size_t i = 0; i < b.plaintext.size(); ++i) b.plaintext[i] = static_cast<uint8_t>(i * 13);
  b.content_key = hsm::SecretBytes(ContentKeyLength(cipher));
  EXPECT_EQ(RAND_bytes(b.content_key.data(), static_cast<int>(b.content_key.size())), 1);
  std::vector<uint8_t> iv(cipher == ContentCipher::kDes3Cbc ? 8 : 16);
  EXPECT_EQ(RAND_bytes(iv.data(), static_cast<int>(iv.size())), 1);
  auto content = EncryptContent(cipher, b.content_key.span(), iv, b.plaintext);
  EXPECT_TRUE(content.ok()) << content.status();
  const int n = static_cast<int>(kras.size());
  auto shares = shamir::Split(b.content_key.span(), k, n, OpenSslRandom());
  EXPECT_TRUE(shares.ok()) << shares.status();
  std::vector<ShareRecipient> recipients;
  for (int i = 0; i < n; ++i) {
    const shamir::Share& s = (*shares)[static_cast<size_t>(i)];
    ShareRecipient r;
    r.certificate = kras[static_cast<size_t>(i)].cert.get();
    r.transport = transport;
    r.index = s.index;
    auto enc = EncryptShare(X509_get0_pubkey(r.certificate), transport, s.value.span());
    EXPECT_TRUE(enc.ok()) << enc.status();
    r.encrypted_share = *enc;
    r.commitment = CommitTo(k, n, s.index, s.value.span());
    recipients.push_back(std::move(r));
  }
  auto der = BuildThresholdEnvelopedData(k, recipients, *content);
  EXPECT_TRUE(der.ok()) << der.status();
  b.der = *der;
  return b;
}

const Kra& KraOf(const std::vector<Kra>& kras, const ShareEntry& e) {
  for (const Kra& k : kras) {
    if (e.Names(k.cert.get())) return k;
  }
  ADD_FAILURE() << "no KRA for " << e.Describe();
  return kras.front();
}

TEST(ThresholdArchiveTest, AnyTwoOfThreeRecoverTheContent) {
  const auto kras = MakeKras(3);
  for (KeyTransport transport : {KeyTransport::kRsaPkcs1, KeyTransport::kRsaOaepSha1}) {
    Built b = BuildArchive(kras, 2, transport);
    ASSERT_TRUE(IsThresholdEnvelope(b.der));
    auto env = ParseThresholdEnvelope(b.der);
    ASSERT_TRUE(env.ok()) << env.status();
    EXPECT_EQ(env->k, 2);
    EXPECT_EQ(env->n, 3);
    ASSERT_EQ(env->shares.size(), 3u);
    std::vector<shamir::Share> decrypted;
    for (const ShareEntry& e : env->shares) {
      EXPECT_EQ(e.transport, transport);
      auto share = DecryptShare(KraOf(kras, e).key.get(), *env, e, nullptr, nullptr);
      ASSERT_TRUE(share.ok()) << share.status();
      decrypted.push_back({e.index, std::move(*share)});
    }
    for (size_t skip = 0; skip < 3; ++skip) {
      std::vector<shamir::Share> two;
      for (size_t i = 0; i < 3; ++i) {
        if (i != skip) two.push_back(decrypted[i]);
      }
      auto key = shamir::Combine(two);
      ASSERT_TRUE(key.ok());
      auto plain = DecryptContent(env->content, key->span());
      ASSERT_TRUE(plain.ok()) << plain.status();
      EXPECT_TRUE(std::equal(b.plaintext.begin(), b.plaintext.end(), plain->data()));
      EXPECT_EQ(plain->size(), b.plaintext.size());
    }
    // One share alone does not give the key.
    auto one = shamir::Combine(std::span<const shamir::Share>(decrypted.data(), 1));
    ASSERT_TRUE(one.ok());
    EXPECT_FALSE(DecryptContent(env->content, one->span()).ok() &&
                 std::equal(one->data(), one->data() + one->size(), b.content_key.data()));
  }
}

// A rewrap (ResplitContentKey): the content key of a 2-of-3 archive split
// afresh into 3 of 4 to other KRAs around the same encryptedContentInfo
// bytes; every triple of the new KRAs decrypts the original plaintext and
// the new commitments match; the old KRAs hold no share.
TEST(ThresholdArchiveTest, ResplitKeepsTheContentAndEveryNewTripleRecovers) {
  const auto old_kras = MakeKras(3);
  const auto new_kras = MakeKras(4, "New KRA ");
  Built b = BuildArchive(old_kras, 2, KeyTransport::kRsaOaepSha1);
  auto old_parsed = ParseArchiveEnvelope(b.der);
  ASSERT_TRUE(old_parsed.ok()) << old_parsed.status();
  std::vector<X509*> targets;
  for (const Kra& k : new_kras) targets.push_back(k.cert.get());
  auto der = ResplitContentKey(3, targets, KeyTransport::kRsaOaepSha1, b.content_key.span(),
                               old_parsed->encrypted_content_info, OpenSslRandom());
  ASSERT_TRUE(der.ok()) << der.status();
  auto parsed = ParseArchiveEnvelope(*der);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->encrypted_content_info, old_parsed->encrypted_content_info);
  auto env = ParseThresholdEnvelope(*der);
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->k, 3);
  EXPECT_EQ(env->n, 4);
  std::vector<shamir::Share> decrypted;
  for (const ShareEntry& e : env->shares) {
    for (const Kra& k : old_kras) EXPECT_FALSE(e.Names(k.cert.get()));
    auto share = DecryptShare(KraOf(new_kras, e).key.get(), *env, e, nullptr, nullptr);
    ASSERT_TRUE(share.ok()) << share.status();  // includes the commitment check
    decrypted.push_back({e.index, std::move(*share)});
  }
  for (size_t skip = 0; skip < 4; ++skip) {
    std::vector<shamir::Share> three;
    for (size_t i = 0; i < 4; ++i) {
      if (i != skip) three.push_back(decrypted[i]);
    }
    auto key = shamir::Combine(three);
    ASSERT_TRUE(key.ok());
    auto plain = DecryptContent(env->content, key->span());
    ASSERT_TRUE(plain.ok()) << plain.status();
    ASSERT_EQ(plain->size(), b.plaintext.size());
    EXPECT_TRUE(std::equal(b.plaintext.begin(), b.plaintext.end(), plain->data()));
  }
  // Bad parameters: k above n, k = 1.
  EXPECT_FALSE(ResplitContentKey(5, targets, KeyTransport::kRsaOaepSha1, b.content_key.span(),
                                 old_parsed->encrypted_content_info, OpenSslRandom())
                   .ok());
  EXPECT_FALSE(ResplitContentKey(1, targets, KeyTransport::kRsaOaepSha1, b.content_key.span(),
                                 old_parsed->encrypted_content_info, OpenSslRandom())
                   .ok());
}

TEST(ThresholdArchiveTest, OpensslReadsTheEnvelopeAndItsOtherRecipientInfos) {
  const auto kras = MakeKras(3);
  Built b = BuildArchive(kras, 2, KeyTransport::kRsaOaepSha1, ContentCipher::kDes3Cbc);
  TempDir dir;
  WriteFile(dir.File("archive.der"), b.der);
  auto printed =
      RunCommand("openssl cms -cmsout -print -inform DER -in " + dir.File("archive.der"));
  ASSERT_EQ(printed.exit_code, 0) << printed.output;
  EXPECT_NE(printed.output.find("d.ori"), std::string::npos) << printed.output;
  EXPECT_NE(printed.output.find(kThresholdShareOid), std::string::npos) << printed.output;
  EXPECT_NE(printed.output.find("des-ede3-cbc"), std::string::npos) << printed.output;
  auto parsed = RunCommand("openssl asn1parse -inform DER -in " + dir.File("archive.der"));
  ASSERT_EQ(parsed.exit_code, 0) << parsed.output;
  // EnvelopedData version 3 (RFC 5652 §6.1 with ori recipients).
  EXPECT_NE(parsed.output.find("INTEGER           :03"), std::string::npos) << parsed.output;
}

TEST(ThresholdArchiveTest, AShareThatDoesNotMatchItsCommitmentIsNamed) {
  const auto kras = MakeKras(3);
  Built b = BuildArchive(kras, 2, KeyTransport::kRsaPkcs1);
  auto env = ParseThresholdEnvelope(b.der);
  ASSERT_TRUE(env.ok());
  ShareEntry& e = env->shares[1];
  e.commitment[5] ^= 1;
  auto share = DecryptShare(KraOf(kras, e).key.get(), *env, e, nullptr, nullptr);
  ASSERT_FALSE(share.ok());
  EXPECT_EQ(share.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(std::string(share.status().message())
                .find("share " + std::to_string(e.index) + " (KRA issuer"),
            std::string::npos)
      << share.status();
  // The wrong card for a share: does not decrypt (PKCS#1) and is named too.
  const Kra& other = KraOf(kras, env->shares[0]);
  auto wrong = DecryptShare(other.key.get(), *env, env->shares[2], nullptr, nullptr);
  ASSERT_FALSE(wrong.ok());
  EXPECT_NE(std::string(wrong.status().message()).find("share"), std::string::npos);
}

TEST(ThresholdArchiveTest, EveryTruncationAndManyBitFlipsAreRefusedWithoutCrashing) {
  const auto kras = MakeKras(2);
  Built b = BuildArchive(kras, 2, KeyTransport::kRsaPkcs1);
  ASSERT_TRUE(ParseThresholdEnvelope(b.der).ok());
  for (size_t len = 0; len < b.der.size(); ++len) {
    auto r = ParseThresholdEnvelope(std::span<const uint8_t>(b.der.data(), len));
    EXPECT_FALSE(r.ok()) << len;
  }
  int refused = 0;
  for (size_t i = 0; i < b.der.size(); i += 3) {
    std::vector<uint8_t> flipped = b.der;
    flipped[i] ^= 0x40;
    if (!ParseThresholdEnvelope(flipped).ok()) ++refused;
  }
  EXPECT_GT(refused, 0);
}

TEST(ThresholdArchiveTest, AnOrdinaryEnvelopeIsNotAThresholdArchive) {
  const auto kras = MakeKras(1);
  KeyTransRecipient r;
  r.certificate = kras[0].cert.get();
  r.encrypted_key = std::vector<uint8_t>(256, 1);
  EncryptedContent c;
  c.iv.assign(8, 0);
  c.ciphertext.assign(16, 0);
  auto der = BuildEnvelopedData({r}, c);
  ASSERT_TRUE(der.ok());
  EXPECT_FALSE(IsThresholdEnvelope(*der));
  auto parsed = ParseThresholdEnvelope(*der);
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(std::string(parsed.status().message()).find("version is not 3"), std::string::npos);
}

TEST(ThresholdArchiveTest, BuildRefusesBadThresholdsAndDuplicateIndexes) {
  const auto kras = MakeKras(2);
  EncryptedContent c;
  c.cipher = ContentCipher::kAes256Cbc;
  c.iv.assign(16, 0);
  c.ciphertext.assign(32, 0);
  std::vector<ShareRecipient> rs(2);
  for (int i = 0; i < 2; ++i) {
    rs[static_cast<size_t>(i)].certificate = kras[static_cast<size_t>(i)].cert.get();
    rs[static_cast<size_t>(i)].index = static_cast<uint8_t>(i + 1);
    rs[static_cast<size_t>(i)].encrypted_share.assign(256, 2);
  }
  EXPECT_TRUE(BuildThresholdEnvelopedData(2, rs, c).ok());
  EXPECT_FALSE(BuildThresholdEnvelopedData(3, rs, c).ok());
  EXPECT_FALSE(BuildThresholdEnvelopedData(1, rs, c).ok());
  rs[1].index = 1;
  EXPECT_FALSE(BuildThresholdEnvelopedData(2, rs, c).ok());
}

TEST(ShareContributionTest, SealedToTheCoordinatorOpensOnlyWithItsKey) {
  const auto kras = MakeKras(3);
  Built b = BuildArchive(kras, 2, KeyTransport::kRsaOaepSha1);
  auto env = ParseThresholdEnvelope(b.der);
  ASSERT_TRUE(env.ok());
  const ShareEntry& mine = env->shares[0];
  auto share = DecryptShare(KraOf(kras, mine).key.get(), *env, mine, nullptr, nullptr);
  ASSERT_TRUE(share.ok());
  Contribution c;
  c.archive_digest = ArchiveDigest(b.der);
  c.index = mine.index;
  c.contributor_issuer = mine.issuer;
  c.contributor_serial = mine.serial;
  c.share = *share;
  const Kra& coordinator = KraOf(kras, env->shares[1]);
  auto sealed = SealContribution(c, coordinator.cert.get(), KeyTransport::kRsaOaepSha1);
  ASSERT_TRUE(sealed.ok()) << sealed.status();

  auto opened =
      OpenContribution(*sealed, coordinator.key.get(), coordinator.cert.get(), nullptr, nullptr);
  ASSERT_TRUE(opened.ok()) << opened.status();
  EXPECT_EQ(opened->index, mine.index);
  EXPECT_EQ(opened->archive_digest, c.archive_digest);
  EXPECT_EQ(opened->contributor_issuer, mine.issuer);
  EXPECT_EQ(opened->contributor_serial, mine.serial);
  EXPECT_TRUE(std::equal(share->data(), share->data() + share->size(), opened->share.data()));

  const Kra& third = KraOf(kras, env->shares[2]);
  auto refused = OpenContribution(*sealed, third.key.get(), third.cert.get(), nullptr, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kDataLoss);

  // openssl decrypts it with the coordinator's key, independently of our
  // reader, to a DER SEQUENCE holding the share.
  TempDir dir;
  WriteFile(dir.File("c.der"), *sealed);
  WriteFile(dir.File("key.pem"), testing::PrivateKeyPem(coordinator.key.get()));
  WriteFile(dir.File("cert.pem"), testing::ToPem(coordinator.cert.get()));
  auto dec = RunCommand("openssl cms -decrypt -binary -inform DER -in " + dir.File("c.der") +
                        " -recip " + dir.File("cert.pem") + " -inkey " + dir.File("key.pem") +
                        " -out " + dir.File("content.der") +
                        " && openssl asn1parse -inform DER -in " + dir.File("content.der"));
  ASSERT_EQ(dec.exit_code, 0) << dec.output;
  EXPECT_NE(dec.output.find("OCTET STRING"), std::string::npos) << dec.output;
  auto printed = RunCommand("openssl cms -cmsout -print -inform DER -in " + dir.File("c.der"));
  EXPECT_NE(printed.output.find(kShareContributionOid), std::string::npos) << printed.output;
}

TEST(ShareContributionTest, MalformedContentIsRefused) {
  EXPECT_FALSE(ParseContributionContent({}).ok());
  const std::vector<uint8_t> not_seq = {0x04, 0x01, 0x00};
  EXPECT_FALSE(ParseContributionContent(not_seq).ok());
  const std::vector<uint8_t> wrong_version = {0x30, 0x03, 0x02, 0x01, 0x02};
  auto r = ParseContributionContent(wrong_version);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("version"), std::string::npos);
}

}  // namespace
}  // namespace keywarden::pki::threshold
