// keywarden token backup: a copy of a file-backed SoftHSM2 token, checked
// by opening the copy with its own SOFTHSM2_CONF (pkcs11-tool, independent).
#include <filesystem>

#include <gtest/gtest.h>

#include "softhsm-fixtures/fixture.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

namespace fs = std::filesystem;

class TokenBackupTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
  }

  CommandResult Keywarden(const std::string& args) {
    return RunCommand("SOFTHSM2_CONF=" + fixture_->conf_path() + " KEYWARDEN_PKCS11_MODULE=" +
                      SoftHsmFixture::module_path() + " " + KEYWARDEN_CLI + " " + args);
  }

  // The CA token's objects as pkcs11-tool lists them (logged in), under `conf`.
  CommandResult ListObjects(const std::string& conf) {
    return RunCommand("SOFTHSM2_CONF=" + conf + " pkcs11-tool --module " +
                      SoftHsmFixture::module_path() +
                      " --token-label keywarden-ca --login --pin ca-user-pin-1 --list-objects");
  }

  // The CA token's own directory in the fixture.
  fs::path CaTokenDir() {
    for (const auto& e : fs::directory_iterator(fixture_->dir() + "/tokens")) {
      auto r = RunCommand("grep -c keywarden-ca " + (e.path() / "token.object").string());
      if (r.exit_code == 0) return e.path();
    }
    return {};
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  TempDir tmp_;
};

TEST_F(TokenBackupTest, CopyByUriOpensWithItsOwnConfigurationAndHoldsTheSameObjects) {
  // Something to keep: a key pair on the token.
  auto made = Keywarden("token keygen --token pkcs11:token=keywarden-ca --pin-source file:" +
                        fixture_->PinFile(SoftHsmFixture::kCaToken) + " --label backed-up");
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string out = tmp_.File("ca-token-backup");
  auto r = Keywarden("token backup pkcs11:token=keywarden-ca " + out);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("keywarden-ca"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out + ".partial"));
  auto original = ListObjects(fixture_->conf_path());
  auto copy = ListObjects(out + "/softhsm2.conf");
  ASSERT_EQ(original.exit_code, 0) << original.output;
  ASSERT_EQ(copy.exit_code, 0) << copy.output;
  EXPECT_NE(copy.output.find("backed-up"), std::string::npos) << copy.output;
  EXPECT_EQ(copy.output, original.output);
  // A second backup never overwrites the first.
  auto again = Keywarden("token backup pkcs11:token=keywarden-ca " + out);
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("exists"), std::string::npos) << again.output;
}

TEST_F(TokenBackupTest, DamagedTokenDirectoryIsRefusedAndNothingIsLeft) {
  const fs::path ca = CaTokenDir();
  ASSERT_FALSE(ca.empty());
  // What a kill during C_Login left behind: token.object empty.
  const fs::path damaged = tmp_.File("damaged");
  fs::create_directories(damaged);
  for (const auto& e : fs::directory_iterator(ca))
    fs::copy_file(e.path(), damaged / e.path().filename());
  fs::resize_file(damaged / "token.object", 0);
  const std::string out = tmp_.File("from-damaged");
  auto r = Keywarden("token backup " + damaged.string() + " " + out);
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("does not open"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(out));
  EXPECT_FALSE(fs::exists(out + ".partial"));
  // The undamaged directory, by path, is copied.
  auto good = Keywarden("token backup " + ca.string() + " " + tmp_.File("by-path"));
  EXPECT_EQ(good.exit_code, 0) << good.output;
}

}  // namespace
}  // namespace keywarden::testing
