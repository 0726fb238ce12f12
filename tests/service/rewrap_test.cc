// KRA rollover end to end (issue 17 items 3 and 4): keys archived to KRA
// cards 1 and 2; the CA's KRA set becomes card 3 alone; `keywarden kra
// rewrap` with card 1 (as a Certificate Manager) re-encrypts the content key
// to card 3 on the card; card 3 alone then recovers the key (openssl
// decrypts data from before with it) and card 1 no longer can from the new
// blob; the encrypted content is byte for byte the old one (openssl's
// reading of both); the old envelope is in the archive history; tampered
// content and recipients that are not current KRAs are refused, audited,
// and change nothing. Runs on SQLite and (postgresql.*) PostgreSQL.
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"
#include "tests/service/rewrap_test_util.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

class RewrapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonHarness::Options options;
    options.role_separation = true;
    options.extra_toml = kKraTemplateToml;
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    for (const char* card :
         {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2, SoftHsmFixture::kKraCard3}) {
      auto cert = EnrollKraCard(*daemon_, card);
      ASSERT_TRUE(cert.ok()) << cert.status();
      kra_sha1_.push_back(pki::Sha1Thumbprint(cert->get()));
      // As `openssl cms -print` shows a recipient's serial: decimal.
      ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert->get()), nullptr));
      char* dec = BN_bn2dec(bn.get());
      kra_serial_.push_back(StrCat("serialNumber: ", dec));
      OPENSSL_free(dec);
      cards_.push_back(card);
    }
    // Archives go to cards 1 and 2.
    ASSERT_TRUE(UseKras(*daemon_, {kra_sha1_[0], kra_sha1_[1]}, 2).ok());
  }

  // Replaces the [kra] section UseKras appended and restarts the daemon.
  void SwitchKras(const std::vector<std::string>& sha1, int count) {
    std::ifstream in(daemon_->config_path());
    std::stringstream buf;
    buf << in.rdbuf();
    std::string config = buf.str();
    const size_t at = config.rfind("\n[kra]\n");
    ASSERT_NE(at, std::string::npos);
    config.resize(at);
    WriteFile(daemon_->config_path(), config);
    ASSERT_TRUE(UseKras(*daemon_, sha1, count).ok());
  }

  std::string Connection(const std::string& who) const { return daemon_->CliConnection(who); }
  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, Connection(who), args));
  }
  CommandResult Recover(const std::string& card, const std::string& args) const {
    return RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                             KEYWARDEN_CLI, " recoverkey --card pkcs11:token=", card,
                             " --pin-source file:", daemon_->tokens().PinFile(card), " --ca-cert ",
                             daemon_->ca_cert_path(), " ", args));
  }
  CommandResult Rewrap(const std::string& card, const std::string& args) const {
    return RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                             KEYWARDEN_CLI, Connection("officer"),
                             " kra rewrap --card pkcs11:token=", card,
                             " --pin-source file:", daemon_->tokens().PinFile(card), " --ca-cert ",
                             daemon_->ca_cert_path(), " ", args));
  }
  std::string Sql(const std::string& sql) const { return SqlValue(*daemon_, sql); }
  int AuditCount(const std::string& event) const { return AuditEventCount(*daemon_, event); }

  // Enrols "alice" with archival, encrypts a secret to her certificate and
  // loses the key. Sets cert_, serial_, p7m_.
  void ArchiveAlice() {
    cert_ = tmp_.File("alice.pem");
    const std::string key = tmp_.File("alice.key");
    auto enrol = Kw("enrollee", StrCat("request --template ArchivalUser --cert-out ", cert_,
                                       " --key-out ", key));
    ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
    WriteFile(tmp_.File("secret.txt"), "the quarterly numbers\n");
    p7m_ = tmp_.File("secret.p7m");
    auto enc = RunCommand(StrCat("openssl cms -encrypt -aes256 -in ", tmp_.File("secret.txt"),
                                 " -out ", p7m_, " ", cert_));
    ASSERT_EQ(enc.exit_code, 0) << enc.output;
    std::remove(key.c_str());
    serial_ = RunCommand(StrCat("openssl x509 -noout -serial -in ", cert_)).output;
    serial_ = TrimLine(serial_.substr(serial_.find('=') + 1));
    request_id_ = std::stoll(Sql(StrCat(
        "SELECT request_id FROM certificates WHERE lower(serial) = '", AsciiLower(serial_), "'")));
  }
  // getkey into `name`.rec; the verified inner envelope into `name`.der
  // (openssl cms -verify against the CA certificate).
  std::string Blob(const std::string& name) {
    return GetVerifiedBlob(*daemon_, tmp_, serial_, name);
  }
  std::string Print(const std::string& name) { return CmsPrint(tmp_, name); }
  void ExpectRecovers(const std::string& card, const std::string& blob) {
    const std::string pfx = tmp_.File(card + ".pfx");
    auto r = Recover(card, StrCat(blob, " ", pfx, " -p 'pfx pw'"));
    ASSERT_EQ(r.exit_code, 0) << card << ": " << r.output;
    auto key = RunCommand(StrCat("openssl pkcs12 -in ", pfx,
                                 " -passin 'pass:pfx pw' -nodes -nocerts -out ",
                                 tmp_.File("recovered.key")));
    ASSERT_EQ(key.exit_code, 0) << key.output;
    auto dec = RunCommand(StrCat("openssl cms -decrypt -in ", p7m_, " -inkey ",
                                 tmp_.File("recovered.key"), " -recip ", cert_));
    ASSERT_EQ(dec.exit_code, 0) << dec.output;
    EXPECT_TRUE(Contains(dec.output, "the quarterly numbers")) << dec.output;
  }
  grpc::Status SendRewrap(const std::vector<uint8_t>& previous,
                          const std::vector<uint8_t>& envelope) {
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::RewrapArchivedKeyRequest in;
    in.set_request_id(request_id_);
    in.set_previous_sha256(Sha256Raw(previous));
    in.set_enveloped_data(std::string(envelope.begin(), envelope.end()));
    v1::RewrapArchivedKeyResponse out;
    return stub->RewrapArchivedKey(&ctx, in, &out);
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::vector<std::string> cards_;
  std::vector<std::string> kra_sha1_;
  std::vector<std::string> kra_serial_;
  std::string cert_, serial_, p7m_;
  int64_t request_id_ = 0;
};

TEST_F(RewrapTest, RewrappedArchiveRecoversWithTheNewKraAloneAndNotWithTheOld) {
  ArchiveAlice();
  const std::string old_blob = Blob("old");
  const std::string old_print = Print("old");
  SwitchKras({kra_sha1_[2]}, 1);

  // Card 3 cannot recover the archive as it is.
  auto before = Recover(cards_[2], StrCat(old_blob, " ", tmp_.File("early.pfx"), " -p x"));
  EXPECT_NE(before.exit_code, 0) << before.output;

  auto rewrap = Rewrap(cards_[0], StrCat("--json --search ", serial_));
  ASSERT_EQ(rewrap.exit_code, 0) << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "\"rewrapped\"")) << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "\"unwrapped_on_card\": true") ||
              Contains(rewrap.output, "\"unwrapped_on_card\":true"))
      << "the content key never left card 1: " << rewrap.output;

  const std::string new_blob = Blob("new");
  const std::string new_print = Print("new");
  // openssl reads one recipient (card 3's certificate) and the same
  // encrypted content, IV and algorithm as before.
  EXPECT_EQ(EncryptedContentText(new_print), EncryptedContentText(old_print));
  EXPECT_FALSE(EncryptedContentText(new_print).empty()) << new_print;
  EXPECT_TRUE(Contains(new_print, kra_serial_[2])) << new_print;
  EXPECT_FALSE(Contains(new_print, kra_serial_[0])) << new_print;
  EXPECT_FALSE(Contains(new_print, kra_serial_[1])) << new_print;
  EXPECT_TRUE(Contains(old_print, kra_serial_[0])) << old_print;
  EXPECT_TRUE(Contains(old_print, kra_serial_[1])) << old_print;
  EXPECT_NE(ReadFile(tmp_.File("new.der")), ReadFile(tmp_.File("old.der")));

  ExpectRecovers(cards_[2], new_blob);
  auto old_card = Recover(cards_[0], StrCat(new_blob, " ", tmp_.File("c1.pfx"), " -p x"));
  EXPECT_NE(old_card.exit_code, 0) << old_card.output;
  EXPECT_TRUE(Contains(old_card.output, "KRA kra-card-3")) << old_card.output;

  // The history keeps the old envelope and its KRAs; the row names the new KRA.
  const std::string where = StrCat(" FROM archive_history WHERE request_id = ", request_id_);
  EXPECT_EQ(Sql("SELECT count(*)" + where), "1");
  EXPECT_EQ(Sql("SELECT version" + where), "1");
  EXPECT_EQ(Sql("SELECT replaced_by" + where), "CN=officer,O=keywarden test");
  const std::string old_kras = Sql("SELECT kra_sha1" + where);
  EXPECT_TRUE(Contains(old_kras, kra_sha1_[0]) && Contains(old_kras, kra_sha1_[1])) << old_kras;
  EXPECT_EQ(Sql(StrCat("SELECT kra_sha1 FROM requests WHERE id = ", request_id_)), kra_sha1_[2]);
  EXPECT_EQ(Sql(StrCat("SELECT length(archived_key)", where)),
            std::to_string(ReadFile(tmp_.File("old.der")).size()));
  EXPECT_EQ(AuditCount("archival.key_rewrapped"), 1);

  // Run again: already current, nothing changes.
  auto again = Rewrap(cards_[2], StrCat("--search ", serial_));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(Contains(again.output, "already encrypted to the current KRAs")) << again.output;
  EXPECT_EQ(Sql("SELECT count(*)" + where), "1");
}

// The archive history is readable through getkey: --history lists the
// replaced envelope with its KRAs and SHA-256 (checked with openssl dgst);
// --from-history 1 releases a CA-signed blob of the old envelope that the
// old KRA's card still recovers; a version that does not exist is refused.
TEST_F(RewrapTest, GetkeyListsTheHistoryAndReleasesTheReplacedEnvelopeForTheOldKras) {
  ArchiveAlice();
  Blob("old");
  SwitchKras({kra_sha1_[2]}, 1);
  auto rewrap = Rewrap(cards_[0], StrCat("--search ", serial_));
  ASSERT_EQ(rewrap.exit_code, 0) << rewrap.output;

  auto dgst = RunCommand(StrCat("openssl dgst -sha256 -r ", tmp_.File("old.der")));
  ASSERT_EQ(dgst.exit_code, 0) << dgst.output;
  const std::string old_sha256 = dgst.output.substr(0, 64);

  auto listed = Kw("officer", StrCat("--json getkey --history ", serial_));
  ASSERT_EQ(listed.exit_code, 0) << listed.output;
  auto j = nlohmann::json::parse(listed.output.substr(listed.output.find('{')));
  ASSERT_EQ(j["candidates"].size(), 1u) << listed.output;
  const auto& history = j["candidates"][0]["history"];
  ASSERT_EQ(history.size(), 1u) << listed.output;
  EXPECT_EQ(history[0]["version"], 1);
  EXPECT_EQ(history[0]["replaced_by"], "CN=officer,O=keywarden test");
  EXPECT_EQ(history[0]["envelope_sha256"], old_sha256);
  const auto old_kras = history[0]["kra_sha1"].get<std::vector<std::string>>();
  EXPECT_EQ(old_kras.size(), 2u);
  EXPECT_TRUE(std::find(old_kras.begin(), old_kras.end(), kra_sha1_[0]) != old_kras.end());
  EXPECT_TRUE(std::find(old_kras.begin(), old_kras.end(), kra_sha1_[1]) != old_kras.end());
  EXPECT_EQ(j["candidates"][0]["kra_sha1"], nlohmann::json::array({kra_sha1_[2]}));
  auto text = Kw("officer", StrCat("getkey --history ", serial_));
  EXPECT_TRUE(Contains(text.output, "Replaced envelope 1")) << text.output;
  EXPECT_TRUE(Contains(text.output, old_sha256)) << text.output;

  // The replaced envelope, signed by the CA, for the old KRAs.
  const std::string hist_blob = tmp_.File("hist.rec");
  auto get = Kw("officer", StrCat("getkey --from-history 1 ", serial_, " ", hist_blob));
  ASSERT_EQ(get.exit_code, 0) << get.output;
  auto verify =
      RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", hist_blob,
                        " -CAfile ", daemon_->ca_cert_path(), " -out ", tmp_.File("hist.der")));
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  EXPECT_EQ(ReadFile(tmp_.File("hist.der")), ReadFile(tmp_.File("old.der")));
  ExpectRecovers(cards_[1], hist_blob);

  // No version 2; --from-history without a file; a Recovery Agent may not.
  auto missing =
      Kw("officer", StrCat("getkey --from-history 2 ", serial_, " ", tmp_.File("none.rec")));
  EXPECT_NE(missing.exit_code, 0) << missing.output;
  EXPECT_TRUE(Contains(missing.output, "no history version 2")) << missing.output;
  EXPECT_FALSE(std::ifstream(tmp_.File("none.rec")).good());
  auto no_file = Kw("officer", StrCat("getkey --from-history 1 ", serial_));
  EXPECT_NE(no_file.exit_code, 0) << no_file.output;
  EXPECT_TRUE(Contains(no_file.output, "give the blob file")) << no_file.output;

  const std::string audit = Sql(
      "SELECT details FROM audit WHERE event = 'archival.key_retrieved' ORDER BY seq DESC LIMIT 1");
  EXPECT_TRUE(Contains(audit, "\"history_version\":1")) << audit;

  // Card 1 is compromised: once its KRA certificate is revoked the envelope
  // it could open is never released again; the current one still is.
  const std::string card1_serial =
      Sql(StrCat("SELECT serial FROM certificates WHERE sha1 = '", kra_sha1_[0], "'"));
  ASSERT_FALSE(card1_serial.empty());
  auto revoke = Kw("officer", StrCat("officer revoke ", card1_serial, " --reason keyCompromise"));
  ASSERT_EQ(revoke.exit_code, 0) << revoke.output;
  const int failed_before = AuditCount("archival.key_retrieval_failed");
  auto refused =
      Kw("officer", StrCat("getkey --from-history 1 ", serial_, " ", tmp_.File("gone.rec")));
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "0x800b010c")) << refused.output;
  EXPECT_TRUE(Contains(refused.output, kra_sha1_[0])) << refused.output;
  EXPECT_FALSE(std::ifstream(tmp_.File("gone.rec")).good());
  EXPECT_EQ(AuditCount("archival.key_retrieval_failed"), failed_before + 1);
  ExpectRecovers(cards_[2], Blob("current"));
}

TEST_F(RewrapTest, EncryptedToSelectsEveryArchiveOfThatKra) {
  ArchiveAlice();
  SwitchKras({kra_sha1_[2]}, 1);
  auto rewrap = Rewrap(cards_[1], StrCat("--encrypted-to ", kra_sha1_[1]));
  ASSERT_EQ(rewrap.exit_code, 0) << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "1 rewrapped")) << rewrap.output;
  ExpectRecovers(cards_[2], Blob("new"));
}

TEST_F(RewrapTest, TamperedContentAndRecipientsThatAreNotCurrentKrasAreRefused) {
  ArchiveAlice();
  Blob("old");
  const std::vector<uint8_t> stored = ReadFile(tmp_.File("old.der"));
  SwitchKras({kra_sha1_[2]}, 1);
  const int refused_before = AuditCount("archival.rewrap_refused");

  // The stored envelope itself: its recipients (cards 1, 2) are no longer KRAs of the CA.
  grpc::Status st = SendRewrap(stored, stored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "not a currently valid KRA")) << st.error_message();

  // The encrypted content changed (its last byte is the ciphertext's).
  std::vector<uint8_t> tampered = stored;
  tampered.back() ^= 0x01;
  st = SendRewrap(stored, tampered);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "encryptedContentInfo")) << st.error_message();

  // Not DER at all, and a stale previous hash.
  st = SendRewrap(stored, {0x30, 0x03, 0x02, 0x01});
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  st = SendRewrap(tampered, stored);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();

  EXPECT_EQ(AuditCount("archival.rewrap_refused"), refused_before + 4);
  EXPECT_EQ(AuditCount("archival.key_rewrapped"), 0);
  EXPECT_EQ(Sql(StrCat("SELECT count(*) FROM archive_history WHERE request_id = ", request_id_)),
            "0");
  Blob("after");
  EXPECT_EQ(ReadFile(tmp_.File("after.der")), stored) << "nothing was stored";
  ExpectRecovers(cards_[0], tmp_.File("after.rec"));

  // Another role may not rewrap.
  auto stub = v1::Officer::NewStub(daemon_->Channel("admin"));
  grpc::ClientContext ctx;
  v1::RewrapArchivedKeyRequest in;
  in.set_request_id(request_id_);
  v1::RewrapArchivedKeyResponse out;
  EXPECT_EQ(stub->RewrapArchivedKey(&ctx, in, &out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
}

}  // namespace
}  // namespace keywarden::testing
