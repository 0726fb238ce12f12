// The door's set of this CA's revocations, without a daemon: it follows the
// database at each publication (ReplaceOwnRevocations) without ever losing
// a revocation made while the database was read, and a released
// certificateHold leaves it unless the certificate was revoked again.
#include "service/trust/client_trust.h"

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "tests/test_util.h"

namespace keywarden::service {
namespace {

using testing::Contains;
using testing::SelfSignedCa;
using testing::SoftwareRsaKey;
using testing::TempDir;
using testing::ToPem;
using testing::WriteFile;

class OwnRevocationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = SoftwareRsaKey();
    ca_ = SelfSignedCa(nullptr, key_.get(), "Door Test CA");
    ASSERT_NE(ca_, nullptr);
    WriteFile(dir_.File("ca.pem"), ToPem(ca_.get()));
    config_.server.client_ca = {dir_.File("ca.pem")};
    auto trust = ClientTrust::Load(config_, ca_.get(), [] { return int64_t{1000}; });
    ASSERT_TRUE(trust.ok()) << trust.status();
    trust_ = std::move(*trust);
  }

  // OK when a client certificate `serial` of this CA may be served.
  absl::Status Door(const std::string& serial) {
    PeerIdentity peer;
    peer.principal = "CN=client";
    peer.serial = serial;
    peer.not_after = 100000;
    peer.links.push_back({serial, "CN=client", "CN=Door Test CA", true, ""});
    return trust_->CheckRevocation(peer);
  }

  TempDir dir_;
  ossl::UniquePtr<EVP_PKEY> key_;
  ossl::UniquePtr<X509> ca_;
  Config config_;
  std::unique_ptr<ClientTrust> trust_;
};

constexpr ClientTrust::Revocation kHold{900, 6};
constexpr ClientTrust::Revocation kCompromise{950, 1};

TEST_F(OwnRevocationsTest, APublicationThatReadTheDatabaseBeforeARevocationDoesNotDropIt) {
  const uint64_t before = trust_->OwnRevocationsMark();  // the publication starts reading
  trust_->AddOwnRevocations({{"0a", kCompromise}});      // a revocation meanwhile
  trust_->ReplaceOwnRevocations({}, before);             // what it read: nothing yet
  EXPECT_FALSE(Door("0a").ok());
  // A publication that read after the revocation, and found it released
  // (not there): the set follows the database.
  trust_->ReplaceOwnRevocations({}, trust_->OwnRevocationsMark());
  EXPECT_TRUE(Door("0a").ok());
}

TEST_F(OwnRevocationsTest, AReplacementHoldsWhatTheDatabaseSaid) {
  trust_->AddOwnRevocations({{"0a", kHold}});
  trust_->ReplaceOwnRevocations({{"0b", kCompromise}}, trust_->OwnRevocationsMark());
  EXPECT_TRUE(Door("0a").ok());
  absl::Status refused = Door("0b");
  EXPECT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(std::string(refused.message()), "reason keyCompromise")) << refused;
}

TEST_F(OwnRevocationsTest, AReleasedHoldLeavesUnlessRevokedAgainSinceTheRelease) {
  trust_->AddOwnRevocations({{"0a", kHold}, {"0b", kHold}});
  EXPECT_FALSE(Door("0a").ok());
  // 0a: released, nothing else happened.
  trust_->ReleaseOwnRevocation("0a", trust_->OwnRevocationsMark());
  EXPECT_TRUE(Door("0a").ok());
  // 0b: the release starts (mark), then 0b is revoked again before the
  // release reaches the door: the new revocation stays.
  const uint64_t mark = trust_->OwnRevocationsMark();
  trust_->AddOwnRevocations({{"0b", kCompromise}});
  trust_->ReleaseOwnRevocation("0b", mark);
  absl::Status refused = Door("0b");
  EXPECT_FALSE(refused.ok());
  // Releasing what is not there changes nothing.
  trust_->ReleaseOwnRevocation("0c", trust_->OwnRevocationsMark());
  EXPECT_TRUE(Door("0c").ok());
  EXPECT_FALSE(Door("0b").ok());
}

}  // namespace
}  // namespace keywarden::service
