// keywarden recoverkey / mergepfx / verifykeys run as a KRA would, against
// real SoftHSM2 KRA cards, with the results checked by openssl (and, for
// the login count, by OpenSC's pkcs11-spy between keywarden and SoftHSM2).
//
// The blobs are made the way keywardend makes them: the user's PKCS#8
// encrypted with a 3DES key generated on the CA token and wrapped there to
// 2 of the 3 KRA certificates, and the CA key on the token signing the blob.
#include <filesystem>
#include <set>

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "tests/recovery_fixture.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of the keywarden binary"
#endif

namespace keywarden::testing {
namespace {

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = 0; (at = text.find(what, at)) != std::string::npos; at += what.size()) ++n;
  return n;
}

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

class RecoverKeyCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto f = SoftHsmFixture::Create();
    ASSERT_TRUE(f.ok()) << f.status();
    fixture_ = std::move(*f);
    RecoveryPki::Options options;
    options.kra_validity = kra_validity_;
    auto pki = RecoveryPki::Create(*fixture_, options);
    ASSERT_TRUE(pki.ok()) << pki.status();
    pki_ = std::move(*pki);
    WriteFile(tmp_.File("ca.pem"), ToPem(pki_->ca_cert()));
    alice_ = MakeUser("Alice", "alice");
    ASSERT_TRUE(Blob(alice_, {0, 1}, tmp_.File("alice.rec")));
  }

  void TearDown() override {
    pki_.reset();
    fixture_.reset();
  }

  RecoveryUser MakeUser(const std::string& cn, const std::string& file) {
    auto user = pki_->MakeUser(cn);
    EXPECT_TRUE(user.ok()) << user.status();
    WriteFile(tmp_.File(file + ".pem"), ToPem(user->cert.get()));
    WriteFile(tmp_.File(file + ".key"), PrivateKeyPem(user->key.get()));
    return std::move(*user);
  }

  bool Blob(const RecoveryUser& user, const std::vector<size_t>& kras, const std::string& path) {
    auto envelope = pki_->Archive(user, kras);
    EXPECT_TRUE(envelope.ok()) << envelope.status();
    if (!envelope.ok()) return false;
    auto blob = pki_->Blob(user, *envelope, kras);
    EXPECT_TRUE(blob.ok()) << blob.status();
    if (!blob.ok()) return false;
    WriteFile(path, *blob);
    return true;
  }

  CommandResult Keywarden(const std::string& args, const std::string& env = "") {
    return RunCommand(env + " KEYWARDEN_PKCS11_MODULE=" + SoftHsmFixture::module_path() + " " +
                      KEYWARDEN_CLI + " " + args);
  }

  std::string CardArgs(const std::string& card) {
    return "--card pkcs11:token=" + card + " --pin-source file:" + fixture_->PinFile(card) +
           " --ca-cert " + tmp_.File("ca.pem");
  }

  CommandResult Recover(const std::string& blob, const std::string& out, const std::string& card,
                        const std::string& extra = "-p 'pfx pass'", const std::string& env = "") {
    return Keywarden("recoverkey " + blob + " " + out + " " + CardArgs(card) + " " + extra, env);
  }

  // The key in a PFX as PEM (via openssl, not keywarden).
  std::string PfxKey(const std::string& pfx, const std::string& pass, const std::string& key_out) {
    auto r = RunCommand("openssl pkcs12 -in " + pfx + " -nocerts -nodes -passin pass:'" + pass +
                        "' -out " + key_out);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return key_out;
  }

  std::string Modulus(const std::string& cmd) {
    auto r = RunCommand(cmd);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return Trimmed(r.output);
  }

  // pkcs11-spy (OpenSC) between keywarden and SoftHSM2: an independent log
  // of every PKCS#11 call keywarden makes.
  std::string SpyModule() {
    auto r = RunCommand("ls /usr/lib/*/pkcs11-spy.so /usr/lib/pkcs11-spy.so 2>/dev/null | head -1");
    return Trimmed(r.output);
  }
  std::string SpyEnv(const std::string& log) {
    return "PKCS11SPY=" + SoftHsmFixture::module_path() + " PKCS11SPY_OUTPUT=" + log;
  }

  std::vector<Validity> kra_validity_;
  std::unique_ptr<SoftHsmFixture> fixture_;
  std::unique_ptr<RecoveryPki> pki_;
  RecoveryUser alice_;
  TempDir tmp_;
};

TEST_F(RecoverKeyCliTest, EachChosenCardRecoversAKeyThatOpensMailSentBeforeTheLoss) {
  // Before the loss: a message encrypted to Alice's certificate.
  WriteFile(tmp_.File("secret.txt"), std::string("quarterly numbers, for Alice only\n"));
  auto enc = RunCommand("openssl cms -encrypt -binary -aes256 -outform DER -in " +
                        tmp_.File("secret.txt") + " -out " + tmp_.File("mail.der") + " -recip " +
                        tmp_.File("alice.pem"));
  ASSERT_EQ(enc.exit_code, 0) << enc.output;
  const std::string cert_modulus =
      Modulus("openssl x509 -noout -modulus -in " + tmp_.File("alice.pem"));
  ASSERT_NE(cert_modulus.find("Modulus="), std::string::npos);

  for (const char* card : {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2}) {
    const std::string pfx = tmp_.File(std::string(card) + ".pfx");
    auto r = Recover(tmp_.File("alice.rec"), pfx, card);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("user:         \"CN=Alice,O=keywarden\""), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("\"CN=KRA 1,O=keywarden\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("\"CN=KRA 2,O=keywarden\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find(std::string("Card \"") + card + "\": KRA"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("signature verified"), std::string::npos) << r.output;

    auto info = RunCommand("openssl pkcs12 -info -nokeys -passin pass:'pfx pass' -in " + pfx);
    ASSERT_EQ(info.exit_code, 0) << info.output;
    EXPECT_NE(info.output.find("PBES2, PBKDF2, AES-256-CBC"), std::string::npos) << info.output;
    EXPECT_NE(info.output.find("subject=O = keywarden, CN = Alice"), std::string::npos);
    EXPECT_NE(info.output.find("subject=O = keywarden, CN = Recovery Test CA"),
              std::string::npos);  // chain
    const std::string key = PfxKey(pfx, "pfx pass", tmp_.File(std::string(card) + ".key"));
    EXPECT_EQ(Modulus("openssl rsa -noout -modulus -in " + key), cert_modulus);
    auto dec = RunCommand("openssl cms -decrypt -binary -inform DER -in " + tmp_.File("mail.der") +
                          " -inkey " + key + " -recip " + tmp_.File("alice.pem") + " -out " +
                          tmp_.File("read.txt"));
    ASSERT_EQ(dec.exit_code, 0) << dec.output;
    EXPECT_EQ(ReadFile(tmp_.File("read.txt")), ReadFile(tmp_.File("secret.txt")));
    auto mode = RunCommand("stat -c %a " + pfx);
    EXPECT_EQ(Trimmed(mode.output), "600");
  }
}

TEST_F(RecoverKeyCliTest, LegacyPfxUsesTripleDesAndASha1Mac) {
  auto r = Recover(tmp_.File("alice.rec"), tmp_.File("legacy.pfx"), SoftHsmFixture::kKraCard2,
                   "-p legacypw --legacy");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto info = RunCommand("openssl pkcs12 -info -nokeys -passin pass:legacypw -in " +
                         tmp_.File("legacy.pfx"));
  ASSERT_EQ(info.exit_code, 0) << info.output;
  EXPECT_NE(info.output.find("pbeWithSHA1And3-KeyTripleDES-CBC"), std::string::npos) << info.output;
  EXPECT_NE(info.output.find("MAC: sha1"), std::string::npos) << info.output;
  EXPECT_EQ(info.output.find("PBES2"), std::string::npos) << info.output;
}

TEST_F(RecoverKeyCliTest, WithoutAnOutputFileTheBlobIsOnlyVerifiedAndShown) {
  auto r = Keywarden("recoverkey " + tmp_.File("alice.rec") + " --ca-cert " + tmp_.File("ca.pem"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("CN=Alice,O=keywarden"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("encrypted to 2 KRA(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(pki::Sha1Thumbprint(pki_->kras()[0].cert.get())), std::string::npos);
  EXPECT_NE(r.output.find("des-ede3-cbc"), std::string::npos) << r.output;
  auto json = Keywarden("--json recoverkey " + tmp_.File("alice.rec") + " --ca-cert " +
                        tmp_.File("ca.pem"));
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_NE(json.output.find("\"sha1\": \"" + pki::Sha1Thumbprint(alice_.cert.get()) + "\""),
            std::string::npos)
      << json.output;
}

TEST_F(RecoverKeyCliTest, WrongCardNamesTheKrasThatWouldWorkAndAsksNoPin) {
  auto r = Recover(tmp_.File("alice.rec"), tmp_.File("x.pfx"), SoftHsmFixture::kKraCard3, "-p pw",
                   "KEYWARDEN_PKCS11_TRACE=1");
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("no KRA certificate on card \"kra-card-3\" can decrypt this blob"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\"CN=KRA 1,O=keywarden\" (SHA-1 " +
                          pki::Sha1Thumbprint(pki_->kras()[0].cert.get())),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("\"CN=KRA 2,O=keywarden\""), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("holds:\n  \"CN=KRA 3,O=keywarden\""), std::string::npos) << r.output;
  EXPECT_GT(Count(r.output, "pkcs11: C_"), 0u) << r.output;  // the trace is on
  EXPECT_EQ(Count(r.output, "C_Login"), 0u) << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("x.pfx")));
}

TEST_F(RecoverKeyCliTest, BlobEncryptedToOtherKrasOnlyIsRefusedByName) {
  auto bob = MakeUser("Bob", "bob");
  ASSERT_TRUE(Blob(bob, {2}, tmp_.File("bob.rec")));
  auto r = Recover(tmp_.File("bob.rec"), tmp_.File("bob.pfx"), SoftHsmFixture::kKraCard1);
  EXPECT_EQ(r.exit_code, 4) << r.output;
  EXPECT_NE(r.output.find("It is encrypted to:\n  \"CN=KRA 3,O=keywarden\""), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("bob.pfx")));
  // And the card it names does recover it.
  auto ok = Recover(tmp_.File("bob.rec"), tmp_.File("bob.pfx"), SoftHsmFixture::kKraCard3);
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST_F(RecoverKeyCliTest, WrongPinIsTriedExactlyOnceAndSaysSo) {
  const std::string spy = SpyModule();
  ASSERT_FALSE(spy.empty()) << "OpenSC's pkcs11-spy.so is needed (Debian package opensc-pkcs11)";
  WriteFile(tmp_.File("wrong.pin"), std::string("123456\n"));
  const std::string log = tmp_.File("spy.log");
  auto r = Keywarden("recoverkey " + tmp_.File("alice.rec") + " " + tmp_.File("x.pfx") +
                         " --card pkcs11:token=kra-card-1 --module " + spy + " --pin-source file:" +
                         tmp_.File("wrong.pin") + " --ca-cert " + tmp_.File("ca.pem") + " -p pw",
                     SpyEnv(log));
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("card \"kra-card-1\" refused the login: wrong PIN (CKR_PIN_INCORRECT)"),
            std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("exactly one login attempt and does not retry"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("x.pfx")));
  auto bytes = ReadFile(log);
  const std::string calls(bytes.begin(), bytes.end());
  EXPECT_EQ(Count(calls, "C_Login"), 1u) << calls.substr(0, 4000);
  EXPECT_NE(calls.find("CKR_PIN_INCORRECT"), std::string::npos);

  // The same through the spy with the right PIN: the spy itself works.
  const std::string log2 = tmp_.File("spy2.log");
  auto ok = Keywarden("recoverkey " + tmp_.File("alice.rec") + " " + tmp_.File("y.pfx") +
                          " --card pkcs11:token=kra-card-1 --module " + spy +
                          " --pin-source file:" + fixture_->PinFile(SoftHsmFixture::kKraCard1) +
                          " --ca-cert " + tmp_.File("ca.pem") + " -p pw",
                      SpyEnv(log2));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  auto bytes2 = ReadFile(log2);
  const std::string calls2(bytes2.begin(), bytes2.end());
  EXPECT_EQ(Count(calls2, "C_Login"), 1u);
  EXPECT_GE(Count(calls2, "C_Decrypt"), 1u);  // the content key, decrypted on the card
}

TEST_F(RecoverKeyCliTest, TamperedBlobIsRefusedAndNothingIsWritten) {
  auto blob = ReadFile(tmp_.File("alice.rec"));
  struct Case {
    size_t at;
    const char* says;
  };
  // Byte 200 is inside the signed content (the EnvelopedData starts at 64);
  // the middle is in the certificates; the last bytes are the signature.
  for (const Case& c : {Case{200, "the archived key does not match the signed digest"},
                        Case{blob.size() / 2, "recovery blob: "},
                        Case{blob.size() - 3, "does not verify: the blob was altered"}}) {
    auto bad = blob;
    bad[c.at] ^= 0x20;
    WriteFile(tmp_.File("bad.rec"), bad);
    auto r = Recover(tmp_.File("bad.rec"), tmp_.File("bad.pfx"), SoftHsmFixture::kKraCard1);
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(c.says), std::string::npos) << r.output;
    EXPECT_FALSE(std::filesystem::exists(tmp_.File("bad.pfx")));
  }
  WriteFile(tmp_.File("bad.rec"), std::string("not a blob at all"));
  auto junk = Recover(tmp_.File("bad.rec"), tmp_.File("bad.pfx"), SoftHsmFixture::kKraCard1);
  EXPECT_EQ(junk.exit_code, 1) << junk.output;
  EXPECT_NE(junk.output.find("not a DER CMS ContentInfo"), std::string::npos) << junk.output;
}

TEST_F(RecoverKeyCliTest, BlobFromAnUntrustedCaIsRefused) {
  auto other_key = SoftwareRsaKey();
  auto other = SelfSignedCa(nullptr, other_key.get(), "Some Other CA");
  WriteFile(tmp_.File("other.pem"), ToPem(other.get()));
  auto r = Keywarden("recoverkey " + tmp_.File("alice.rec") + " " + tmp_.File("x.pfx") +
                     " --card pkcs11:token=kra-card-1 --pin-source file:" +
                     fixture_->PinFile(SoftHsmFixture::kKraCard1) + " --ca-cert " +
                     tmp_.File("other.pem") + " -p pw");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_NE(r.output.find("does not chain to a trusted CA certificate"), std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("x.pfx")));
  auto none = Keywarden("recoverkey " + tmp_.File("alice.rec") + " " + tmp_.File("x.pfx") +
                        " --card pkcs11:token=kra-card-1 -p pw");
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_NE(none.output.find("--ca-cert"), std::string::npos) << none.output;
}

TEST_F(RecoverKeyCliTest, ExistingOutputIsRefusedBeforeTheCardIsTouched) {
  WriteFile(tmp_.File("taken.pfx"), std::string("keep me"));
  auto r = Recover(tmp_.File("alice.rec"), tmp_.File("taken.pfx"), SoftHsmFixture::kKraCard1,
                   "-p pw", "KEYWARDEN_PKCS11_TRACE=1");
  EXPECT_EQ(r.exit_code, 3) << r.output;
  EXPECT_EQ(Count(r.output, "C_Login"), 0u) << r.output;
  auto kept = ReadFile(tmp_.File("taken.pfx"));
  EXPECT_EQ(std::string(kept.begin(), kept.end()), "keep me");
}

TEST_F(RecoverKeyCliTest, GeneratedPasswordIsPrintedAndOpensThePfx) {
  auto r = Recover(tmp_.File("alice.rec"), tmp_.File("gen.pfx"), SoftHsmFixture::kKraCard1,
                   "--generate-password");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string marker = "PFX password (give it to the user out of band): ";
  const size_t at = r.output.find(marker);
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string pw = r.output.substr(at + marker.size(), 20);
  EXPECT_EQ(pw.find_first_of(" \n'"), std::string::npos) << pw;
  auto info = RunCommand("openssl pkcs12 -info -nokeys -passin pass:'" + pw + "' -in " +
                         tmp_.File("gen.pfx"));
  EXPECT_EQ(info.exit_code, 0) << info.output;
  // From a file, too.
  WriteFile(tmp_.File("pfx.pw"), std::string("from a file\n"));
  auto f = Recover(tmp_.File("alice.rec"), tmp_.File("file.pfx"), SoftHsmFixture::kKraCard1,
                   "--password-source file:" + tmp_.File("pfx.pw"));
  ASSERT_EQ(f.exit_code, 0) << f.output;
  EXPECT_EQ(RunCommand("openssl pkcs12 -info -nokeys -passin pass:'from a file' -in " +
                       tmp_.File("file.pfx"))
                .exit_code,
            0);
  // No password and no terminal: refused before the card.
  auto none = Recover(tmp_.File("alice.rec"), tmp_.File("none.pfx"), SoftHsmFixture::kKraCard1,
                      "< /dev/null");
  EXPECT_EQ(none.exit_code, 2) << none.output;
  EXPECT_NE(none.output.find("no PFX password"), std::string::npos) << none.output;
}

TEST_F(RecoverKeyCliTest, BatchRecoversADirectoryWithOneLoginAndListsFailures) {
  std::filesystem::create_directory(tmp_.File("blobs"));
  std::filesystem::create_directory(tmp_.File("out"));
  std::vector<RecoveryUser> users;
  for (const char* name : {"u1", "u2", "u3"}) {
    users.push_back(MakeUser(std::string("User ") + name, name));
    ASSERT_TRUE(Blob(users.back(), {0, 1}, tmp_.File(std::string("blobs/") + name + ".rec")));
  }
  auto other = MakeUser("Other KRA user", "u4");
  ASSERT_TRUE(Blob(other, {2}, tmp_.File("blobs/u4.rec")));
  auto good = ReadFile(tmp_.File("blobs/u1.rec"));
  good[good.size() / 2] ^= 1;
  WriteFile(tmp_.File("blobs/u5.rec"), good);

  auto r = Keywarden("recoverkey --batch " + tmp_.File("blobs") + " --out-dir " + tmp_.File("out") +
                         " " + CardArgs(SoftHsmFixture::kKraCard1) + " -p batchpw",
                     "KEYWARDEN_PKCS11_TRACE=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_NE(r.output.find("Recovered 3 of 5 blob(s)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("2 failed:"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("u4.rec: no KRA certificate on card"), std::string::npos) << r.output;
  // The flipped byte is in the encrypted key or a certificate: either way, altered.
  const size_t u5 = r.output.find("u5.rec: recovery blob: ");
  ASSERT_NE(u5, std::string::npos) << r.output;
  EXPECT_NE(r.output.find("altered", u5), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("keys/s"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("card decrypt"), std::string::npos) << r.output;
  EXPECT_EQ(Count(r.output, "C_Login"), 1u) << r.output;
  for (size_t i = 0; i < 3; ++i) {
    const std::string n = "u" + std::to_string(i + 1);
    const std::string pfx = tmp_.File("out/" + n + ".pfx");
    ASSERT_TRUE(std::filesystem::exists(pfx)) << pfx;
    const std::string key = PfxKey(pfx, "batchpw", tmp_.File(n + ".recovered.key"));
    EXPECT_EQ(Modulus("openssl rsa -noout -modulus -in " + key),
              Modulus("openssl x509 -noout -modulus -in " + tmp_.File(n + ".pem")));
  }
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("out/u4.pfx")));
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("out/u5.pfx")));

  // Run again: every output exists, so nothing starts.
  auto again = Keywarden("recoverkey --batch " + tmp_.File("blobs") + " --out-dir " +
                         tmp_.File("out") + " " + CardArgs(SoftHsmFixture::kKraCard1) + " -p pw");
  EXPECT_EQ(again.exit_code, 3) << again.output;
  EXPECT_NE(again.output.find("refusing to start"), std::string::npos) << again.output;
}

TEST_F(RecoverKeyCliTest, BatchKeyFailingInAPfxWorkerIsNamedAndTheOthersAreWritten) {
  // The card stage of u2 succeeds; its PFX cannot be written (a dangling
  // symlink takes the name after the up-front check saw nothing there), so
  // it fails on a worker thread while u1 and u3 are written.
  std::filesystem::create_directory(tmp_.File("blobs"));
  std::filesystem::create_directory(tmp_.File("out"));
  std::vector<RecoveryUser> users;
  for (const char* name : {"u1", "u2", "u3"}) {
    users.push_back(MakeUser(std::string("User ") + name, name));
    ASSERT_TRUE(Blob(users.back(), {0}, tmp_.File(std::string("blobs/") + name + ".rec")));
  }
  std::filesystem::create_symlink(tmp_.File("nowhere/u2.pfx"), tmp_.File("out/u2.pfx"));

  auto r = Keywarden("--json recoverkey --batch " + tmp_.File("blobs") + " --out-dir " +
                     tmp_.File("out") + " " + CardArgs(SoftHsmFixture::kKraCard1) + " -p batchpw");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  const size_t json_at = r.output.find('{');
  ASSERT_NE(json_at, std::string::npos) << r.output;
  const auto j = nlohmann::json::parse(r.output.substr(json_at), nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.output;
  ASSERT_EQ(j["recovered"].size(), 2u) << r.output;
  EXPECT_EQ(j["recovered"][0]["output"], tmp_.File("out/u1.pfx"));
  EXPECT_EQ(j["recovered"][1]["output"], tmp_.File("out/u3.pfx"));
  ASSERT_EQ(j["failed"].size(), 1u) << r.output;
  EXPECT_EQ(j["failed"][0]["blob"], tmp_.File("blobs/u2.rec"));
  // The message names the blob and the file that could not be written.
  const std::string error = j["failed"][0]["error"].get<std::string>();
  EXPECT_NE(error.find("u2.rec: "), std::string::npos) << r.output;
  EXPECT_NE(error.find("u2.pfx"), std::string::npos) << r.output;
  EXPECT_EQ(j["not_attempted"], 0);
  EXPECT_GE(j["pfx_workers"].get<int>(), 1);
  for (const char* n : {"u1", "u3"}) {
    const std::string pfx = tmp_.File(std::string("out/") + n + ".pfx");
    ASSERT_TRUE(std::filesystem::exists(pfx)) << pfx;
    const std::string key = PfxKey(pfx, "batchpw", tmp_.File(std::string(n) + ".recovered.key"));
    EXPECT_EQ(Modulus("openssl rsa -noout -modulus -in " + key),
              Modulus("openssl x509 -noout -modulus -in " + tmp_.File(std::string(n) + ".pem")));
  }
  // Nothing was written through the link, and no temporary file is left.
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("nowhere/u2.pfx")));
  size_t files = 0;
  for (const auto& e : std::filesystem::directory_iterator(tmp_.File("out"))) {
    (void)e;
    ++files;
  }
  EXPECT_EQ(files, 3u);  // u1.pfx, u3.pfx and the symlink
}

TEST_F(RecoverKeyCliTest, BatchOfManyBlobsWritesEveryKeyToItsOwnFile) {
  // More blobs than workers and queue slots: every PFX holds the key of the
  // blob it is named after, whatever order the workers finish in.
  std::filesystem::create_directory(tmp_.File("blobs"));
  std::filesystem::create_directory(tmp_.File("out"));
  constexpr int kUsers = 9;
  for (int i = 0; i < kUsers; ++i) {
    const std::string n = "m" + std::to_string(i);
    auto u = MakeUser("Many " + n, n);
    ASSERT_TRUE(Blob(u, {0}, tmp_.File("blobs/" + n + ".rec")));
  }
  auto r = Keywarden("recoverkey --batch " + tmp_.File("blobs") + " --out-dir " + tmp_.File("out") +
                     " " + CardArgs(SoftHsmFixture::kKraCard1) + " -p manypw");
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Recovered 9 of 9"), std::string::npos) << r.output;
  for (int i = 0; i < kUsers; ++i) {
    const std::string n = "m" + std::to_string(i);
    const std::string key =
        PfxKey(tmp_.File("out/" + n + ".pfx"), "manypw", tmp_.File(n + ".recovered.key"));
    EXPECT_EQ(Modulus("openssl rsa -noout -modulus -in " + key),
              Modulus("openssl x509 -noout -modulus -in " + tmp_.File(n + ".pem")))
        << n;
  }
}

TEST_F(RecoverKeyCliTest, BatchShowsAProgressBarOnATerminalOnly) {
  std::filesystem::create_directory(tmp_.File("out"));
  std::filesystem::create_directory(tmp_.File("out2"));
  auto bob = MakeUser("Bob", "bob");
  ASSERT_TRUE(Blob(bob, {0}, tmp_.File("bob.rec")));
  const std::string cmd = "KEYWARDEN_PKCS11_MODULE=" + SoftHsmFixture::module_path() + " " +
                          KEYWARDEN_CLI + " recoverkey --batch " + tmp_.File("alice.rec") + " " +
                          tmp_.File("bob.rec") + " " + CardArgs(SoftHsmFixture::kKraCard1) +
                          " -p pw --out-dir ";
  // script(1) gives the command a pseudo-terminal.
  auto tty = RunCommand("script -qec \"" + cmd + tmp_.File("out") + "\" /dev/null");
  EXPECT_EQ(tty.exit_code, 0) << tty.output;
  EXPECT_NE(tty.output.find("[###############...............] 1/2  50% bob.rec"), std::string::npos)
      << tty.output;
  EXPECT_NE(tty.output.find("Recovered 2 of 2"), std::string::npos) << tty.output;
  auto pipe = RunCommand(cmd + tmp_.File("out2") + " 2>&1 | cat");
  EXPECT_EQ(pipe.output.find("[#"), std::string::npos) << pipe.output;
  EXPECT_NE(pipe.output.find("Recovered 2 of 2"), std::string::npos) << pipe.output;
}

TEST_F(RecoverKeyCliTest, BatchWithAWrongPinStopsAfterTheOneAttempt) {
  std::filesystem::create_directory(tmp_.File("blobs"));
  std::filesystem::create_directory(tmp_.File("out"));
  for (const char* name : {"a", "b", "c"}) {
    ASSERT_TRUE(Blob(alice_, {0, 1}, tmp_.File(std::string("blobs/") + name + ".rec")));
  }
  WriteFile(tmp_.File("wrong.pin"), std::string("000000\n"));
  auto r =
      Keywarden("recoverkey --batch " + tmp_.File("blobs") + " --out-dir " + tmp_.File("out") +
                    " --card pkcs11:token=kra-card-1 --pin-source file:" + tmp_.File("wrong.pin") +
                    " --ca-cert " + tmp_.File("ca.pem") + " -p pw",
                "KEYWARDEN_PKCS11_TRACE=1");
  EXPECT_EQ(r.exit_code, 1) << r.output;
  EXPECT_EQ(Count(r.output, "C_Login"), 1u) << r.output;
  EXPECT_NE(r.output.find("2 not attempted: the card login failed and is never retried"),
            std::string::npos)
      << r.output;
  EXPECT_TRUE(std::filesystem::is_empty(tmp_.File("out")));
}

class ExpiredKraCliTest : public RecoverKeyCliTest {
 protected:
  ExpiredKraCliTest() {
    // KRA 1's certificate expired yesterday.
    kra_validity_ = {Validity{-3 * 86400, -86400}};
  }
};

TEST_F(ExpiredKraCliTest, AnExpiredKraCertificateStillRecoversAndTheOutputSaysWhy) {
  ASSERT_LT(X509_cmp_current_time(X509_get0_notAfter(pki_->kras()[0].cert.get())), 0);
  auto r = Recover(tmp_.File("alice.rec"), tmp_.File("a.pfx"), SoftHsmFixture::kKraCard1);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("[certificate expired"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("note: this KRA certificate expired"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("not checked for expiry or revocation"), std::string::npos) << r.output;
  const std::string key = PfxKey(tmp_.File("a.pfx"), "pfx pass", tmp_.File("a.key"));
  EXPECT_EQ(Modulus("openssl rsa -noout -modulus -in " + key),
            Modulus("openssl x509 -noout -modulus -in " + tmp_.File("alice.pem")));
}

TEST_F(RecoverKeyCliTest, MergePfxPutsTwoRecoveredKeysInOneFile) {
  auto bob = MakeUser("Bob", "bob");
  ASSERT_TRUE(Blob(bob, {1}, tmp_.File("bob.rec")));
  ASSERT_EQ(Recover(tmp_.File("alice.rec"), tmp_.File("a.pfx"), SoftHsmFixture::kKraCard2, "-p apw")
                .exit_code,
            0);
  ASSERT_EQ(Recover(tmp_.File("bob.rec"), tmp_.File("b.pfx"), SoftHsmFixture::kKraCard2,
                    "-p bpw --legacy")
                .exit_code,
            0);
  const std::string in = tmp_.File("a.pfx") + "," + tmp_.File("b.pfx");
  auto r = Keywarden("mergepfx " + in + " " + tmp_.File("both.pfx") + " -p 'apw,bpw,outpw'");
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("Merged 2 key(s) from 2 file(s)"), std::string::npos) << r.output;
  auto all = RunCommand("openssl pkcs12 -in " + tmp_.File("both.pfx") +
                        " -nodes -passin pass:outpw -out " + tmp_.File("both.pem"));
  ASSERT_EQ(all.exit_code, 0) << all.output;
  auto pem = ReadFile(tmp_.File("both.pem"));
  const std::string text(pem.begin(), pem.end());
  EXPECT_EQ(Count(text, "BEGIN PRIVATE KEY"), 2u) << text;
  EXPECT_EQ(Count(text, "subject=O = keywarden, CN = Recovery Test CA"), 1u) << text;  // chain once
  EXPECT_EQ(Count(text, "subject=O = keywarden, CN = Alice"), 1u);
  EXPECT_EQ(Count(text, "subject=O = keywarden, CN = Bob"), 1u);
  // Each key is still the key of its certificate, as openssl sees them.
  std::set<std::string> key_moduli;
  for (size_t at = 0, n = 0;
       (at = text.find("-----BEGIN PRIVATE KEY-----", at)) != std::string::npos; ++n) {
    const std::string end = "-----END PRIVATE KEY-----";
    const size_t stop = text.find(end, at) + end.size();
    const std::string file = tmp_.File("k" + std::to_string(n) + ".pem");
    WriteFile(file, text.substr(at, stop - at) + "\n");
    key_moduli.insert(Modulus("openssl rsa -noout -modulus -in " + file));
    at = stop;
  }
  EXPECT_EQ(key_moduli, (std::set<std::string>{
                            Modulus("openssl x509 -noout -modulus -in " + tmp_.File("alice.pem")),
                            Modulus("openssl x509 -noout -modulus -in " + tmp_.File("bob.pem"))}));

  // A wrong input password names the file and writes nothing.
  auto bad = Keywarden("mergepfx " + in + " " + tmp_.File("bad.pfx") + " -p 'apw,nope,outpw'");
  EXPECT_EQ(bad.exit_code, 3) << bad.output;
  EXPECT_NE(bad.output.find(tmp_.File("b.pfx") + ": wrong password"), std::string::npos)
      << bad.output;
  EXPECT_FALSE(std::filesystem::exists(tmp_.File("bad.pfx")));
  // One input password for all inputs, from a file.
  ASSERT_EQ(Recover(tmp_.File("bob.rec"), tmp_.File("b2.pfx"), SoftHsmFixture::kKraCard2, "-p apw")
                .exit_code,
            0);
  WriteFile(tmp_.File("in.pw"), std::string("apw\n"));
  auto one = Keywarden("mergepfx " + tmp_.File("a.pfx") + "," + tmp_.File("b2.pfx") + " " +
                       tmp_.File("both2.pfx") + " --in-password file:" + tmp_.File("in.pw") +
                       " --generate-password");
  ASSERT_EQ(one.exit_code, 0) << one.output;
  EXPECT_NE(one.output.find("PFX password: "), std::string::npos) << one.output;
}

TEST_F(RecoverKeyCliTest, VerifyKeysTellsAPairFromAMismatch) {
  auto ok = Keywarden("verifykeys " + tmp_.File("alice.key") + " " + tmp_.File("alice.pem"));
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_NE(ok.output.find("Keys match"), std::string::npos) << ok.output;
  auto bob = MakeUser("Bob", "bob");
  auto bad = Keywarden("verifykeys " + tmp_.File("bob.key") + " " + tmp_.File("alice.pem"));
  EXPECT_EQ(bad.exit_code, 1) << bad.output;
  EXPECT_NE(bad.output.find("keys do NOT match"), std::string::npos) << bad.output;
  // A recovered PFX against the certificate, and a DER public key.
  ASSERT_EQ(Recover(tmp_.File("alice.rec"), tmp_.File("a.pfx"), SoftHsmFixture::kKraCard1, "-p apw")
                .exit_code,
            0);
  WriteFile(tmp_.File("apw"), std::string("apw\n"));
  auto pfx = Keywarden("verifykeys " + tmp_.File("a.pfx") + " " + tmp_.File("alice.pem") +
                       " --password file:" + tmp_.File("apw"));
  EXPECT_EQ(pfx.exit_code, 0) << pfx.output;
  ASSERT_EQ(RunCommand("openssl x509 -pubkey -noout -in " + tmp_.File("alice.pem") +
                       " | openssl pkey -pubin -outform DER -out " + tmp_.File("alice.pub.der"))
                .exit_code,
            0);
  auto der = Keywarden("verifykeys " + tmp_.File("alice.key") + " " + tmp_.File("alice.pub.der"));
  EXPECT_EQ(der.exit_code, 0) << der.output;
  auto ec = RunCommand("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out " +
                       tmp_.File("ec.key") + " && openssl pkey -in " + tmp_.File("ec.key") +
                       " -pubout -out " + tmp_.File("ec.pub"));
  ASSERT_EQ(ec.exit_code, 0) << ec.output;
  auto ecok = Keywarden("verifykeys " + tmp_.File("ec.key") + " " + tmp_.File("ec.pub"));
  EXPECT_EQ(ecok.exit_code, 0) << ecok.output;
  EXPECT_NE(ecok.output.find("sign/verify"), std::string::npos) << ecok.output;
  auto junk = Keywarden("verifykeys " + tmp_.File("alice.pem") + " " + tmp_.File("alice.pem"));
  EXPECT_EQ(junk.exit_code, 2) << junk.output;
}

}  // namespace
}  // namespace keywarden::testing
