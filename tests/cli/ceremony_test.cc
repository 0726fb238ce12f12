// The keywarden binary run as an operator would, against fixture tokens.
#include <gtest/gtest.h>

#include "softhsm-fixtures/fixture.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

class CeremonyCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
  }

  CommandResult Keywarden(const std::string& args) {
    return RunCommand("KEYWARDEN_PKCS11_MODULE=" + SoftHsmFixture::module_path() + " " +
                      KEYWARDEN_CLI + " " + args);
  }

  std::string Root(const std::string& label, const std::string& out,
                   const std::string& extra = "") {
    return "ceremony root --token pkcs11:token=keywarden-ca --pin-source file:" +
           fixture_->PinFile(SoftHsmFixture::kCaToken) + " --key-label " + label + " --out " + out +
           " " + extra;
  }

  // Objects with this label on the CA token, as pkcs11-tool (independent) sees them.
  int ObjectsLabelled(const std::string& label) {
    auto r = RunCommand("pkcs11-tool --module " + SoftHsmFixture::module_path() +
                        " --token-label keywarden-ca --login --pin ca-user-pin-1 --list-objects");
    int n = 0;
    for (size_t at = 0;
         (at = r.output.find("label:      " + label + "\n", at)) != std::string::npos; ++at)
      ++n;
    return n;
  }

  std::unique_ptr<SoftHsmFixture> fixture_;
  TempDir tmp_;
};

TEST_F(CeremonyCliTest, RootCeremonyMakesAVerifyingRootAndKeepsTheKeyOnTheToken) {
  auto r = Keywarden(
      Root("root-1", tmp_.File("ca.pem"),
           "--subject 'CN=CLI Root,O=keywarden' --key-algorithm ec-p384 --digest SHA384"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("signature verified"), std::string::npos) << r.output;
  auto v = RunCommand("openssl verify -CAfile " + tmp_.File("ca.pem") + " " + tmp_.File("ca.pem"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  // private key, public key and certificate share the label.
  EXPECT_EQ(ObjectsLabelled("root-1"), 3);
  auto text = RunCommand("openssl x509 -noout -subject -text -in " + tmp_.File("ca.pem"));
  EXPECT_NE(text.output.find("CN = CLI Root"), std::string::npos) << text.output;
  EXPECT_NE(text.output.find("ecdsa-with-SHA384"), std::string::npos) << text.output;
}

TEST_F(CeremonyCliTest, JsonOutputIsOneObjectWithTheThumbprints) {
  auto r = Keywarden("--json " + Root("root-json", tmp_.File("ca.pem"), "--subject CN=J"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output.front(), '{');
  EXPECT_NE(r.output.find("\"sha256\""), std::string::npos);
  auto fp = RunCommand("openssl x509 -noout -fingerprint -sha1 -in " + tmp_.File("ca.pem"));
  std::string hex;
  for (char c : fp.output.substr(fp.output.find('=') + 1)) {
    if (std::isxdigit(static_cast<unsigned char>(c))) hex += static_cast<char>(std::tolower(c));
  }
  EXPECT_NE(r.output.find("\"sha1\": \"" + hex + "\""), std::string::npos) << r.output << hex;
}

TEST_F(CeremonyCliTest, ExistingLabelIsRefusedWithExitCode3) {
  ASSERT_EQ(Keywarden(Root("root-dup", tmp_.File("a.pem"), "--subject CN=A")).exit_code, 0);
  auto r = Keywarden(Root("root-dup", tmp_.File("b.pem"), "--subject CN=B"));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("already used"), std::string::npos) << r.output;
  EXPECT_EQ(ObjectsLabelled("root-dup"), 3);
}

TEST_F(CeremonyCliTest, RefusalsBeforeTheTokenCreateNothing) {
  WriteFile(tmp_.File("exists.pem"), std::string("keep me"));
  auto exists = Keywarden(Root("root-x", tmp_.File("exists.pem"), "--subject CN=X"));
  EXPECT_EQ(exists.exit_code, 3) << exists.output;
  auto bad_subject = Keywarden(Root("root-x", tmp_.File("new.pem"), "--subject XX=1"));
  EXPECT_EQ(bad_subject.exit_code, 2) << bad_subject.output;
  auto bad_alg =
      Keywarden(Root("root-x", tmp_.File("new.pem"), "--subject CN=X --key-algorithm dsa"));
  EXPECT_EQ(bad_alg.exit_code, 2) << bad_alg.output;
  EXPECT_EQ(ObjectsLabelled("root-x"), 0);
  auto kept = ReadFile(tmp_.File("exists.pem"));
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "keep me");
}

TEST_F(CeremonyCliTest, WrongPinAndUnknownTokenAreClear) {
  WriteFile(tmp_.File("wrong.pin"), std::string("0000\n"));
  auto wrong = Keywarden("ceremony root --token pkcs11:token=keywarden-ca --pin-source file:" +
                         tmp_.File("wrong.pin") + " --key-label k --subject CN=k --out " +
                         tmp_.File("k.pem"));
  EXPECT_EQ(wrong.exit_code, 3) << wrong.output;
  EXPECT_NE(wrong.output.find("CKR_PIN_INCORRECT"), std::string::npos) << wrong.output;
  auto unknown = Keywarden(
      "ceremony root --token pkcs11:token=nope --pin-source file:" + tmp_.File("wrong.pin") +
      " --key-label k --subject CN=k --out " + tmp_.File("k.pem"));
  EXPECT_EQ(unknown.exit_code, 4) << unknown.output;
  EXPECT_NE(unknown.output.find("keywarden-ca"), std::string::npos) << unknown.output;
}

TEST_F(CeremonyCliTest, SubordinateRequestThenInstallOfTheParentsCertificate) {
  const std::string pin = "file:" + fixture_->PinFile(SoftHsmFixture::kCaToken);
  auto req = Keywarden("ceremony subordinate --token pkcs11:token=keywarden-ca --pin-source " +
                       pin + " --key-label issuing --subject 'CN=Issuing CA,O=keywarden' --out " +
                       tmp_.File("issuing.csr"));
  ASSERT_EQ(req.exit_code, 0) << req.output;
  auto check = RunCommand("openssl req -verify -noout -text -in " + tmp_.File("issuing.csr"));
  EXPECT_NE(check.output.find("CA:TRUE"), std::string::npos) << check.output;

  // The parent: a software root made with openssl, which issues the subordinate.
  ASSERT_EQ(RunCommand("openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=Parent -days 30 "
                       "-addext basicConstraints=critical,CA:TRUE -keyout " +
                       tmp_.File("parent.key") + " -out " + tmp_.File("parent.pem"))
                .exit_code,
            0);
  WriteFile(
      tmp_.File("ext.cnf"),
      std::string("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\n"));
  ASSERT_EQ(RunCommand("openssl x509 -req -in " + tmp_.File("issuing.csr") + " -CA " +
                       tmp_.File("parent.pem") + " -CAkey " + tmp_.File("parent.key") +
                       " -CAcreateserial -days 20 -extfile " + tmp_.File("ext.cnf") + " -out " +
                       tmp_.File("issuing.pem"))
                .exit_code,
            0);
  // A leaf (not a CA) for the same key, and a CA cert for another key: both refused.
  WriteFile(tmp_.File("leaf.cnf"), std::string("basicConstraints=critical,CA:FALSE\n"));
  ASSERT_EQ(RunCommand("openssl x509 -req -in " + tmp_.File("issuing.csr") + " -CA " +
                       tmp_.File("parent.pem") + " -CAkey " + tmp_.File("parent.key") +
                       " -CAcreateserial -days 20 -extfile " + tmp_.File("leaf.cnf") + " -out " +
                       tmp_.File("leaf.pem"))
                .exit_code,
            0);
  auto not_ca = Keywarden("ceremony install --token pkcs11:token=keywarden-ca --pin-source " + pin +
                          " --key-label issuing --certificate " + tmp_.File("leaf.pem") +
                          " --chain " + tmp_.File("parent.pem") + " --out " + tmp_.File("x.pem"));
  EXPECT_EQ(not_ca.exit_code, 2) << not_ca.output;
  EXPECT_NE(not_ca.output.find("not a CA certificate"), std::string::npos) << not_ca.output;
  auto wrong_key =
      Keywarden("ceremony install --token pkcs11:token=keywarden-ca --pin-source " + pin +
                " --key-label issuing --certificate " + tmp_.File("parent.pem") + " --chain " +
                tmp_.File("parent.pem") + " --out " + tmp_.File("x.pem"));
  EXPECT_EQ(wrong_key.exit_code, 2) << wrong_key.output;
  EXPECT_NE(wrong_key.output.find("not for the key"), std::string::npos) << wrong_key.output;

  auto install =
      Keywarden("ceremony install --token pkcs11:token=keywarden-ca --pin-source " + pin +
                " --key-label issuing --certificate " + tmp_.File("issuing.pem") + " --chain " +
                tmp_.File("parent.pem") + " --out " + tmp_.File("issuing-chain.pem"));
  ASSERT_EQ(install.exit_code, 0) << install.output;
  auto v = RunCommand("openssl verify -CAfile " + tmp_.File("parent.pem") + " " +
                      tmp_.File("issuing-chain.pem"));
  EXPECT_EQ(v.exit_code, 0) << v.output;
  EXPECT_EQ(ObjectsLabelled("issuing"), 3);  // key pair + the installed certificate
}

TEST_F(CeremonyCliTest, TokenListShowsTheFixtureTokens) {
  auto r = Keywarden("--json token list");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* label : {"keywarden-ca", "kra-card-1", "kra-card-2", "kra-card-3"}) {
    EXPECT_NE(r.output.find(std::string("\"label\": \"") + label + "\""), std::string::npos)
        << r.output;
  }
}

TEST_F(CeremonyCliTest, UsageErrorsExitWith2AndHelpWith0) {
  EXPECT_EQ(Keywarden("ceremony root").exit_code, 2);
  EXPECT_EQ(Keywarden("no-such-verb").exit_code, 2);
  auto help = Keywarden("ceremony root --help");
  EXPECT_EQ(help.exit_code, 0);
  EXPECT_NE(help.output.find("--key-label"), std::string::npos);
}

}  // namespace
}  // namespace keywarden::testing
