// keywarden token selftest on real SoftHSM2 tokens: every check passes on
// a full token and writes no object to it (pkcs11-tool lists the same
// objects before and after); a token whose configuration disables 3DES
// (SoftHSM2's slots.mechanisms) fails the Windows archival scheme, naming
// the mechanism and CKR_MECHANISM_INVALID, and passes the AES scheme.
#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "softhsm-fixtures/fixture.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

class TokenSelfTestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
  }

  CommandResult Keywarden(const std::string& args, const std::string& conf = "") {
    return RunCommand("SOFTHSM2_CONF=" + (conf.empty() ? fixture_->conf_path() : conf) +
                      " KEYWARDEN_PKCS11_MODULE=" + SoftHsmFixture::module_path() + " " +
                      KEYWARDEN_CLI + " " + args + " </dev/null");
  }

  std::string CaPin() const {
    return "--pin-source file:" + fixture_->PinFile(SoftHsmFixture::kCaToken);
  }

  CommandResult ListObjects() {
    return RunCommand("SOFTHSM2_CONF=" + fixture_->conf_path() + " pkcs11-tool --module " +
                      SoftHsmFixture::module_path() +
                      " --token-label keywarden-ca --login --pin ca-user-pin-1 --list-objects");
  }

  // The fixture's configuration with `line` added.
  std::string ConfWith(const std::string& line) {
    const std::string path = tmp_.File("softhsm2.conf");
    std::ifstream in(fixture_->conf_path());
    std::ofstream out(path);
    out << in.rdbuf() << "\n" << line << "\n";
    return path;
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  TempDir tmp_;
};

TEST_F(TokenSelfTestTest, EveryCheckPassesOnSoftHsmAndNothingIsWrittenToTheToken) {
  auto before = ListObjects();
  ASSERT_EQ(before.exit_code, 0) << before.output;
  auto r = Keywarden("--json token selftest --token pkcs11:token=keywarden-ca " + CaPin());
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  EXPECT_TRUE(j.at("passed").get<bool>());
  EXPECT_EQ(j.at("token"), "keywarden-ca");
  std::set<std::string> names;
  for (const auto& c : j.at("checks")) {
    EXPECT_EQ(c.at("result"), "pass") << c.dump();
    names.insert(c.at("role").get<std::string>() + ": " + c.at("check").get<std::string>());
  }
  // What archival and CA signing need, live and in the mechanism list.
  for (const char* want : {
           "archival: CKM_DES3_KEY_GEN generate key",
           "archival: CKM_DES3_CBC_PAD encrypt",
           "archival: CKM_RSA_PKCS wrap",
           "exchange key: CKM_RSA_PKCS decrypt",
           "exchange key: CKM_RSA_PKCS decrypt",
           "archival: 3DES content key, CBC encrypt, PKCS#1 wrap (round trip)",
           "archival: AES-256 content key, CBC encrypt, OAEP wrap (round trip)",
           "CA signing: CKM_RSA_PKCS signature (SHA-256 DigestInfo)",
           "CA signing: CKM_RSA_PKCS_PSS signature (SHA-256)",
           "CA signing: CKM_ECDSA signature (P-256)",
           "token: logged in as the user",
           "token: key visible from another session",
       }) {
    EXPECT_TRUE(names.count(want)) << want;
  }
  auto after = ListObjects();
  ASSERT_EQ(after.exit_code, 0) << after.output;
  EXPECT_EQ(after.output, before.output) << "the self-test left objects on the token";
}

TEST_F(TokenSelfTestTest, ATokenWithoutTripleDesFailsTheWindowsSchemeNamingTheMechanism) {
  // SoftHSM2 2.6.1 skips the first name of a "-" list: CKM_MD5 stands there.
  const std::string conf = ConfWith("slots.mechanisms = -CKM_MD5,CKM_DES3_CBC_PAD,CKM_DES3_CBC");
  auto r = Keywarden("token selftest --archival-only --token pkcs11:token=keywarden-ca " + CaPin(),
                     conf);
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_TRUE(Contains(r.output, "CKM_DES3_CBC_PAD encrypt -> CKR_MECHANISM_INVALID")) << r.output;
  EXPECT_TRUE(Contains(r.output, "A required check failed")) << r.output;
  // Only archival checks were run.
  EXPECT_FALSE(Contains(r.output, "CA signing")) << r.output;

  auto aes = Keywarden(
      "--json token selftest --archival-only --archival-scheme aes256-rsa-oaep "
      "--token pkcs11:token=keywarden-ca " +
          CaPin(),
      conf);
  ASSERT_EQ(aes.exit_code, 0) << aes.output;
  const auto j = nlohmann::json::parse(aes.output);
  EXPECT_TRUE(j.at("passed").get<bool>());
  bool des3_optional_failure = false;
  for (const auto& c : j.at("checks")) {
    if (c.at("check") == "CKM_DES3_CBC_PAD encrypt") {
      des3_optional_failure = c.at("result") == "fail" && !c.at("required").get<bool>() &&
                              c.at("rv") == "CKR_MECHANISM_INVALID";
    }
  }
  EXPECT_TRUE(des3_optional_failure) << aes.output;
}

TEST_F(TokenSelfTestTest, MechanismsOnlyNeedsNoPinAndRunsNothingLive) {
  auto r = Keywarden("--json token selftest --mechanisms-only --token pkcs11:token=keywarden-ca");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto j = nlohmann::json::parse(r.output);
  for (const auto& c : j.at("checks")) {
    EXPECT_NE(c.at("check"), "logged in as the user");
    EXPECT_EQ(c.at("check").get<std::string>().find("round trip"), std::string::npos);
  }
  EXPECT_GE(j.at("checks").size(), 10u);
}

}  // namespace
}  // namespace keywarden::testing
