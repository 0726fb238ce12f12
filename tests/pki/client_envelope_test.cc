// The requester's encrypted private key (CMC attribute 1.3.6.1.4.1.311.21.13)
// as the archiver reads it: envelopes made by `openssl cms -encrypt` and
// taken from the Windows vectors, and damaged copies of them. A damaged
// envelope once made the daemon free the CMS object twice (d2i frees the
// object it is given when parsing fails); the fuzzer found it.
#include "pki/envelope.h"

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "pki/cmc.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_VECTORS
#error "KEYWARDEN_VECTORS must name shared/vectors/windows-key-archival"
#endif

namespace keywarden::testing {
namespace {

// An exchange certificate and key in software, and an envelope to it made
// by the openssl command line.
class ClientEnvelopeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = SoftwareRsaKey(2048);
    cert_ = SelfSignedCa(nullptr, key_.get(), "Test CA-Xchg");
    other_key_ = SoftwareRsaKey(2048);
    other_ = SelfSignedCa(nullptr, other_key_.get(), "Another CA-Xchg");
    WriteFile(tmp_.File("x.pem"), ToPem(cert_.get()));
    WriteFile(tmp_.File("plain.bin"), kPlaintext);
    auto r = RunCommand(StrCat("openssl cms -encrypt -binary -des3 -outform DER -in ",
                               tmp_.File("plain.bin"), " -out ", tmp_.File("env.der"), " ",
                               tmp_.File("x.pem")));
    ASSERT_EQ(r.exit_code, 0) << r.output;
    envelope_ = ReadRequiredFile(tmp_.File("env.der"));
  }

  static constexpr char kPlaintext[] = "a private key stands here";
  TempDir tmp_;
  ossl::UniquePtr<EVP_PKEY> key_, other_key_;
  ossl::UniquePtr<X509> cert_, other_;
  std::vector<uint8_t> envelope_;
};

TEST_F(ClientEnvelopeTest, OpensAnEnvelopeToTheMatchingExchangeCertificate) {
  auto env = pki::ClientEnvelope::Parse(envelope_, nullptr);
  ASSERT_TRUE(env.ok()) << env.status();
  ASSERT_EQ(env->recipients().size(), 1u);
  EXPECT_TRUE(Contains(env->recipients()[0], "CN=Test CA-Xchg")) << env->recipients()[0];
  X509* both[] = {other_.get(), cert_.get()};
  ASSERT_EQ(env->Match(both), std::optional<size_t>(1));
  X509* neither[] = {other_.get()};
  EXPECT_EQ(env->Match(neither), std::nullopt);
  auto plain = env->Decrypt(key_.get(), cert_.get());
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_EQ(std::string(plain->span().begin(), plain->span().end()), kPlaintext);
}

TEST_F(ClientEnvelopeTest, NamesTheRecipientsOfAWindowsRequest) {
  auto cmc =
      pki::ParseCmcRequest(ReadRequiredFile(std::string(KEYWARDEN_VECTORS) + "/user-enroll-1.der"));
  ASSERT_TRUE(cmc.ok()) << cmc.status();
  ASSERT_TRUE(cmc->encrypted_key.has_value());
  auto env = pki::ClientEnvelope::Parse(*cmc->encrypted_key, nullptr);
  ASSERT_TRUE(env.ok()) << env.status();
  ASSERT_EQ(env->recipients().size(), 1u);
  // The issuer and serial, as `openssl cms -cmsout -print` shows them.
  const std::string env_file = tmp_.File("vector-env.der");
  WriteFile(env_file, *cmc->encrypted_key);
  auto shown = RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", env_file,
                                 " | sed -n 's/^ *serialNumber: 0x//p'"));
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  std::string serial = AsciiLower(shown.output);
  while (!serial.empty() && serial.back() == '\n') serial.pop_back();
  ASSERT_FALSE(serial.empty());
  EXPECT_EQ(env->recipients()[0], StrCat("CN=Issuer2 serial ", serial));
  X509* ours[] = {cert_.get()};
  EXPECT_EQ(env->Match(ours), std::nullopt);
}

// Every damaged copy is refused with the same clear error, and nothing is
// freed twice (under glibc a double free aborts the test binary).
TEST_F(ClientEnvelopeTest, DamagedEnvelopesAreRefusedWithoutCrashing) {
  std::vector<std::vector<uint8_t>> damaged;
  damaged.push_back(std::vector<uint8_t>(300, 'x'));
  for (size_t cut : {size_t{1}, size_t{20}, envelope_.size() / 2, envelope_.size() - 1}) {
    damaged.emplace_back(envelope_.begin(), envelope_.begin() + static_cast<long>(cut));
  }
  // Each byte of the RecipientInfo and the content's algorithm set to 0xff
  // in turn: broken tags, lengths and OIDs deep inside the structure.
  for (size_t i = 0; i < std::min<size_t>(envelope_.size(), 400); ++i) {
    std::vector<uint8_t> copy = envelope_;
    copy[i] = 0xff;
    damaged.push_back(std::move(copy));
  }
  std::vector<uint8_t> trailing = envelope_;
  trailing.push_back(0);
  damaged.push_back(trailing);
  int refused = 0;
  for (const auto& d : damaged) {
    auto env = pki::ClientEnvelope::Parse(d, nullptr);
    if (env.ok()) continue;  // a byte inside a value (a serial, a key) may still parse
    ++refused;
    EXPECT_EQ(env.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_TRUE(Contains(std::string(env.status().message()), "1.3.6.1.4.1.311.21.13"))
        << env.status();
  }
  EXPECT_GT(refused, 50);
  EXPECT_FALSE(pki::ClientEnvelope::Parse(trailing, nullptr).ok()) << "trailing bytes";
  EXPECT_FALSE(pki::ClientEnvelope::Parse({}, nullptr).ok());
}

TEST(ReadContentInfoTest, SaysHowMuchItTook) {
  TempDir tmp;
  WriteFile(tmp.File("p.bin"), "x");
  auto r = RunCommand(StrCat("openssl cms -data_create -binary -outform DER -in ",
                             tmp.File("p.bin"), " -out ", tmp.File("d.der")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<uint8_t> der = ReadRequiredFile(tmp.File("d.der"));
  const size_t size = der.size();
  der.push_back(0x05);
  der.push_back(0x00);
  size_t consumed = 0;
  auto cms = pki::ReadContentInfo(der, nullptr, nullptr, &consumed);
  ASSERT_NE(cms, nullptr);
  EXPECT_EQ(consumed, size);
  EXPECT_EQ(pki::ReadContentInfo(std::span<const uint8_t>(der.data(), size - 1), nullptr, nullptr,
                                 &consumed),
            nullptr);
  EXPECT_EQ(consumed, 0u);
}

}  // namespace
}  // namespace keywarden::testing
