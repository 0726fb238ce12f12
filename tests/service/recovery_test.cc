// Key recovery end to end, with role separation on: KRA keys generated on
// three SoftHSM2 "smart cards", their KRA certificates issued by the daemon
// CA and configured by thumbprint (N=2); a user enrols with archival through
// `keywarden request`, encrypts data to the certificate, loses the key; the
// Certificate Manager retrieves the blob with `keywarden getkey` (but gets
// no plaintext by any RPC); each chosen KRA recovers it offline with
// `keywarden recoverkey` and its card; openssl opens the PFX and decrypts
// the data from before the loss.
#include <fstream>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

class RecoveryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonHarness::Options options;
    options.role_separation = true;
    options.extra_toml = kKraTemplateToml;
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);

    // Each KRA makes its key on its own card and enrols for a KRA certificate.
    for (const char* card :
         {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2, SoftHsmFixture::kKraCard3}) {
      auto cert = EnrollKraCard(*daemon_, card);
      ASSERT_TRUE(cert.ok()) << cert.status();
      kra_sha1_.push_back(pki::Sha1Thumbprint(cert->get()));
      cards_.push_back(card);
    }
    ASSERT_TRUE(UseKras(*daemon_, kra_sha1_, 2).ok());
  }

  std::string Connection(const std::string& who) const {
    const ClientIdentity& id = daemon_->client(who);
    return StrCat(" --server ", daemon_->target(), " --client-cert ", id.cert_path,
                  " --client-key ", id.key_path, " --server-ca ", daemon_->tls_ca_path(),
                  " --server-name localhost ");
  }
  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, Connection(who), args));
  }
  // recoverkey needs no daemon: no connection options at all.
  CommandResult Recover(const std::string& card, const std::string& args) const {
    return RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                             KEYWARDEN_CLI, " recoverkey --card pkcs11:token=", card,
                             " --pin-source file:", daemon_->tokens().PinFile(card), " --ca-cert ",
                             daemon_->ca_cert_path(), " ", args));
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::vector<std::string> cards_;
  std::vector<std::string> kra_sha1_;
};

TEST_F(RecoveryTest, ArchiveLoseRetrieveAndRecoverWithEachChosenCard) {
  // The user enrols with archival and encrypts something to the certificate.
  const std::string cert = tmp_.File("alice.pem"), key = tmp_.File("alice.key");
  auto enrol = Kw("enrollee",
                  StrCat("request --template ArchivalUser --cert-out ", cert, " --key-out ", key));
  ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
  WriteFile(tmp_.File("secret.txt"), "the quarterly numbers\n");
  auto enc = RunCommand(StrCat("openssl cms -encrypt -aes256 -in ", tmp_.File("secret.txt"),
                               " -out ", tmp_.File("secret.p7m"), " ", cert));
  ASSERT_EQ(enc.exit_code, 0) << enc.output;
  const std::string serial =
      RunCommand(StrCat("openssl x509 -noout -serial -in ", cert)).output.substr(7);
  // ... and loses the key.
  std::remove(key.c_str());

  // Who may retrieve: only the Certificate Manager (role separation is on).
  const std::string blob = tmp_.File("alice.rec");
  for (const char* who : {"admin", "enrollee", "nobody", "auditor"}) {
    auto denied = Kw(who, StrCat("getkey alice ", tmp_.File(StrCat(who, ".rec"))));
    EXPECT_EQ(denied.exit_code, 3) << who << ": " << denied.output;
    EXPECT_TRUE(Contains(denied.output, "0x80070005")) << who << ": " << denied.output;
  }
  auto conflict = Kw("admin-officer", "getkey alice");
  EXPECT_EQ(conflict.exit_code, 3) << conflict.output;
  EXPECT_TRUE(Contains(conflict.output, "0x80094008")) << conflict.output;

  // Listing: the candidate and the KRA certificates able to decrypt it.
  auto list = Kw("officer", "--json getkey alice");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_TRUE(Contains(list.output, "\"kra_sha1\"")) << list.output;
  std::vector<size_t> chosen;
  for (size_t i = 0; i < kra_sha1_.size(); ++i) {
    if (Contains(list.output, kra_sha1_[i])) chosen.push_back(i);
  }
  ASSERT_EQ(chosen.size(), 2u) << list.output;

  // Retrieval by serial with spaces, as an operator copies it from a viewer.
  std::string spaced;
  for (size_t i = 0; i + 1 < serial.size() && serial[i] != '\n'; i += 2) {
    spaced += (spaced.empty() ? "" : " ") + serial.substr(i, 2);
  }
  auto get = Kw("officer", StrCat("getkey '", spaced, "' ", blob));
  ASSERT_EQ(get.exit_code, 0) << get.output;
  // The blob is CA-signed and holds only ciphertext for the Certificate Manager.
  auto verify =
      RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", blob,
                        " -CAfile ", daemon_->ca_cert_path(), " -out ", tmp_.File("inner.der")));
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  auto inner =
      RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", tmp_.File("inner.der")));
  EXPECT_TRUE(Contains(inner.output, "envelopedData")) << inner.output;
  auto audit = Kw("auditor", "audit read");
  EXPECT_TRUE(Contains(audit.output, "archival.key_retrieved")) << audit.output;

  // Each chosen KRA recovers with its own card, offline; the other card cannot.
  for (size_t i = 0; i < cards_.size(); ++i) {
    const std::string pfx = tmp_.File(StrCat("alice-", i, ".pfx"));
    auto r = Recover(cards_[i], StrCat(blob, " ", pfx, " -p 'new pfx pw'"));
    const bool is_chosen = std::find(chosen.begin(), chosen.end(), i) != chosen.end();
    if (!is_chosen) {
      EXPECT_NE(r.exit_code, 0) << r.output;
      EXPECT_TRUE(Contains(r.output, kra_sha1_[chosen[0]]) ||
                  Contains(r.output, "KRA " + cards_[chosen[0]]))
          << "names the KRAs that would work: " << r.output;
      continue;
    }
    ASSERT_EQ(r.exit_code, 0) << cards_[i] << ": " << r.output;
    auto out = RunCommand(StrCat("openssl pkcs12 -in ", pfx, " -passin 'pass:new pfx pw' -nodes",
                                 " -nocerts -out ", tmp_.File("recovered.key")));
    ASSERT_EQ(out.exit_code, 0) << out.output;
    auto dec = RunCommand(StrCat("openssl cms -decrypt -in ", tmp_.File("secret.p7m"), " -inkey ",
                                 tmp_.File("recovered.key"), " -recip ", cert));
    ASSERT_EQ(dec.exit_code, 0) << dec.output;
    EXPECT_TRUE(Contains(dec.output, "the quarterly numbers")) << dec.output;
  }
}

TEST_F(RecoveryTest, SeveralMatchesAreAmbiguousAndVerboseWritesARecoveryScript) {
  for (const char* n : {"1", "2"}) {
    auto enrol = Kw("enrollee", StrCat("request --template ArchivalUser --key-out ",
                                       tmp_.File(StrCat("k", n, ".pem"))));
    ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
  }
  auto ambiguous = Kw("officer", StrCat("getkey alice ", tmp_.File("x.rec")));
  EXPECT_NE(ambiguous.exit_code, 0);
  EXPECT_TRUE(Contains(ambiguous.output, "0x8002802c")) << ambiguous.output;
  EXPECT_TRUE(Contains(ambiguous.output, "Ambiguous name")) << ambiguous.output;
  EXPECT_EQ(std::count(ambiguous.output.begin(), ambiguous.output.end(), '\n') >= 2, true);
  EXPECT_TRUE(Contains(ambiguous.output, "Serial Number:")) << ambiguous.output;
  EXPECT_FALSE(std::ifstream(tmp_.File("x.rec")).good()) << "no partial blob file";

  auto script = Kw("officer", "getkey -v alice");
  ASSERT_EQ(script.exit_code, 0) << script.output;
  EXPECT_EQ(std::count(script.output.begin(), script.output.end(), '\n') > 10, true);
  for (const char* step : {"keywarden getkey ", "keywarden recoverkey ", "keywarden mergepfx ",
                           "rm -f ", "PASSWORD: "}) {
    EXPECT_TRUE(Contains(script.output, step)) << step << "\n" << script.output;
  }
  auto missing = Kw("officer", StrCat("getkey nobody-here ", tmp_.File("y.rec")));
  EXPECT_NE(missing.exit_code, 0);
  EXPECT_TRUE(Contains(missing.output, "0x80092004")) << missing.output;
}

}  // namespace
}  // namespace keywarden::testing
