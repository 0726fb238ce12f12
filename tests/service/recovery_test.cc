// Key recovery end to end, with role separation on: KRA keys generated on
// three SoftHSM2 "smart cards", their KRA certificates issued by the daemon
// CA and configured by thumbprint (N=2); a user enrols with archival through
// `keywarden request`, encrypts data to the certificate, loses the key; the
// Certificate Manager retrieves the blob with `keywarden getkey` (but gets
// no plaintext by any RPC); each chosen KRA recovers it offline with
// `keywarden recoverkey` and its card; openssl opens the PFX and decrypts
// the data from before the loss.
#include <openssl/bn.h>
#include <openssl/x509.h>

#include <openssl/rand.h>

#include <cctype>
#include <fstream>
#include <map>
#include <set>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/recovery_blob.h"
#include "pki/threshold.h"
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
    if (card_labels_.size() > 3) options.tokens = SoftHsmFixture::FiveKraCards();
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);

    // Each KRA makes its key on its own card and enrols for a KRA certificate.
    for (const std::string& card : card_labels_) {
      auto cert = EnrollKraCard(*daemon_, card);
      ASSERT_TRUE(cert.ok()) << cert.status();
      kra_sha1_.push_back(pki::Sha1Thumbprint(cert->get()));
      kra_serial_.push_back(SerialOf(cert->get()));
      kra_certs_.push_back(std::move(*cert));
      cards_.push_back(card);
    }
    ASSERT_TRUE(UseKras(*daemon_, kra_sha1_, count_, threshold_).ok());
  }

  std::string Connection(const std::string& who) const { return daemon_->CliConnection(who); }
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

  // Lower-case hex of the certificate's serial number.
  static std::string SerialOf(X509* cert) {
    ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert), nullptr));
    char* hex = BN_bn2hex(bn.get());
    std::string out = hex != nullptr ? hex : "";
    OPENSSL_free(hex);
    for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (out.size() % 2 != 0) out = "0" + out;
    return out;
  }

  // The database's own command-line client (sqlite3 or psql) on the
  // daemon's live database (a reader or a short writer beside the daemon),
  // its output trimmed.
  std::string Sql(const std::string& sql) const {
    auto r = RunCommand(daemon_->SqlCommand(sql));
    EXPECT_EQ(r.exit_code, 0) << sql << "\n" << r.output;
    std::string out = r.output;
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
    return out;
  }
  // The SQL for a field of the audit record's JSON details, "$.a[0].b"
  // style, in the backend's dialect.
  std::string J(const std::string& path) const {
    if (!daemon_->postgres()) return StrCat("json_extract(details, '", path, "')");
    std::string keys;
    for (char c : path.substr(2)) {
      if (c == '.' || c == '[') {
        keys += ',';
      } else if (c != ']') {
        keys += c;
      }
    }
    return StrCat("(details::json #>> '{", keys, "}')");
  }
  int AuditCount(const std::string& event, const std::string& principal = "") const {
    const std::string where = principal.empty() ? "" : StrCat(" AND principal = '", principal, "'");
    return std::stoi(Sql(StrCat("SELECT count(*) FROM audit WHERE event = '", event, "'", where)));
  }

  int count_ = 2;
  int threshold_ = 1;
  std::vector<std::string> card_labels_ = {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2,
                                           SoftHsmFixture::kKraCard3};
  std::vector<ossl::UniquePtr<X509>> kra_certs_;
  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::vector<std::string> cards_;
  std::vector<std::string> kra_sha1_;
  std::vector<std::string> kra_serial_;
};

// Revoking a configured KRA's certificate (issued by this CA) takes it out of
// use at once: no reload, no restart. 3 KRAs, 2 per archival.
TEST_F(RecoveryTest, RevokedKraReceivesNoFurtherArchivesWithoutAReload) {
  auto first =
      Kw("enrollee", StrCat("request --template ArchivalUser --key-out ", tmp_.File("k0.pem")));
  ASSERT_EQ(first.exit_code, 0) << first.output;
  const int reloads_before = AuditCount("kra.reload_requested");

  auto revoke = Kw("officer", StrCat("officer revoke ", kra_serial_[0], " --reason keyCompromise"));
  ASSERT_EQ(revoke.exit_code, 0) << revoke.output;

  // `kra list` shows it revoked and the other two valid.
  auto list = Kw("admin", "kra list");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  EXPECT_TRUE(Contains(list.output, "2 of 3 valid")) << list.output;
  EXPECT_TRUE(Contains(list.output, "archival requests are accepted")) << list.output;
  auto json = Kw("admin", "--json kra list");
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_TRUE(Contains(json.output, "\"revoked\"")) << json.output;
  EXPECT_EQ(Sql(StrCat("SELECT ", J("$.serial"), " FROM audit WHERE event = 'kra.revoked'")),
            kra_serial_[0]);
  EXPECT_EQ(AuditCount("kra.revoked", daemon_->client("officer").principal), 1);
  // The re-validation, audited with who caused it, found it revoked.
  EXPECT_EQ(Sql(StrCat("SELECT ", J("$.kras[0].state"),
                       " FROM audit WHERE event = "
                       "'kra.loaded' ORDER BY seq DESC LIMIT 1")),
            "revoked");
  EXPECT_TRUE(Contains(Sql(StrCat("SELECT ", J("$.by"),
                                  " FROM audit WHERE event = "
                                  "'kra.loaded' ORDER BY seq DESC LIMIT 1")),
                       daemon_->client("officer").principal));
  EXPECT_EQ(Sql(StrCat("SELECT ", J("$.sha1"),
                       " FROM audit WHERE event = 'kra.unusable' "
                       "ORDER BY seq DESC LIMIT 1")),
            kra_sha1_[0]);

  // The next archivals go to the two KRAs left, never to the revoked one.
  for (const char* n : {"1", "2", "3"}) {
    auto enrol = Kw("enrollee", StrCat("request --template ArchivalUser --key-out ",
                                       tmp_.File(StrCat("k", n, ".pem"))));
    ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
    const std::string used = Sql(
        "SELECT kra_sha1 FROM requests WHERE archived_key IS NOT NULL ORDER BY id DESC LIMIT 1");
    EXPECT_FALSE(Contains(used, kra_sha1_[0])) << n << ": archived to the revoked KRA: " << used;
    EXPECT_TRUE(Contains(used, kra_sha1_[1])) << used;
    EXPECT_TRUE(Contains(used, kra_sha1_[2])) << used;
  }

  // A second revocation leaves one valid KRA for two per archival: refused.
  revoke = Kw("officer", StrCat("officer revoke ", kra_serial_[1], " --reason keyCompromise"));
  ASSERT_EQ(revoke.exit_code, 0) << revoke.output;
  const std::string archived_before =
      Sql("SELECT count(*) FROM requests WHERE archived_key IS NOT NULL");
  auto refused =
      Kw("enrollee", StrCat("request --template ArchivalUser --key-out ", tmp_.File("k4.pem")));
  EXPECT_NE(refused.exit_code, 0) << refused.output;
  EXPECT_TRUE(Contains(refused.output, "0x8009400b")) << refused.output;
  EXPECT_EQ(Sql("SELECT count(*) FROM requests WHERE archived_key IS NOT NULL"), archived_before);
  list = Kw("admin", "kra list");
  EXPECT_TRUE(Contains(list.output, "1 of 3 valid")) << list.output;
  EXPECT_TRUE(Contains(list.output, "archival requests are refused")) << list.output;
  // All of it without a reload.
  EXPECT_EQ(AuditCount("kra.reload_requested"), reloads_before);
}

// `keywarden kra reload` calls the reload RPC (audited under the caller's
// name); `kra` and `kra list` only list.
TEST_F(RecoveryTest, KraReloadFromTheCliReloadsAndIsAudited) {
  const std::string admin = daemon_->client("admin").principal;
  const int loaded_before = AuditCount("kra.loaded");
  for (const char* args : {"kra", "kra list"}) {
    auto r = Kw("admin", args);
    ASSERT_EQ(r.exit_code, 0) << args << ": " << r.output;
    EXPECT_FALSE(Contains(r.output, "validated again")) << args << ": " << r.output;
  }
  EXPECT_EQ(AuditCount("kra.reload_requested"), 0);
  EXPECT_EQ(AuditCount("kra.loaded"), loaded_before);

  auto reload = Kw("admin", "kra reload");
  ASSERT_EQ(reload.exit_code, 0) << reload.output;
  EXPECT_TRUE(Contains(reload.output, "validated again")) << reload.output;
  EXPECT_TRUE(Contains(reload.output, "3 of 3 valid")) << reload.output;
  EXPECT_EQ(AuditCount("kra.reload_requested", admin), 1);
  EXPECT_EQ(AuditCount("kra.loaded"), loaded_before + 1);
  EXPECT_EQ(Sql(StrCat("SELECT ", J("$.by"),
                       " FROM audit WHERE event = 'kra.loaded' "
                       "ORDER BY seq DESC LIMIT 1")),
            admin);

  // Only a CA Administrator may reload.
  auto officer = Kw("officer", "kra reload");
  EXPECT_EQ(officer.exit_code, 3) << officer.output;
  EXPECT_EQ(AuditCount("kra.reload_requested"), 1);
}

// A recovery blob leaves only once its audit record is committed: with the
// audit insert failing in the database, the Certificate Manager gets an
// error naming the CA's fault and no blob.
TEST_F(RecoveryTest, RetrievalWhoseAuditRecordCannotBeWrittenReleasesNoBlob) {
  auto enrol =
      Kw("enrollee", StrCat("request --template ArchivalUser --key-out ", tmp_.File("alice.key")));
  ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
  // A real database fault, added behind the daemon's back: this record
  // cannot be inserted (as with a full disk or a failing device).
  if (daemon_->postgres()) {
    Sql("CREATE FUNCTION test_audit_fault() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN IF NEW.event = 'archival.key_retrieved' THEN "
        "RAISE EXCEPTION 'audit write fault injected by the test'; END IF; RETURN NEW; END "
        "$$; CREATE TRIGGER test_audit_fault BEFORE INSERT ON audit "
        "FOR EACH ROW EXECUTE FUNCTION test_audit_fault()");
  } else {
    Sql("CREATE TRIGGER test_audit_fault BEFORE INSERT ON audit "
        "WHEN NEW.event = 'archival.key_retrieved' "
        "BEGIN SELECT RAISE(ABORT, 'audit write fault injected by the test'); END;");
  }
  const std::string blob = tmp_.File("alice.rec");
  auto get = Kw("officer", StrCat("getkey alice ", blob));
  EXPECT_EQ(get.exit_code, 1) << get.output;  // a CA-side fault, not usage (2) or refusal (3)
  EXPECT_TRUE(Contains(get.output, "was not released")) << get.output;
  EXPECT_TRUE(Contains(get.output, "audit record")) << get.output;
  EXPECT_FALSE(std::ifstream(blob).good()) << "a blob was written without its audit record";
  EXPECT_EQ(AuditCount("archival.key_retrieved"), 0);

  // Directly over gRPC too: an error status and an empty blob.
  {
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::GetArchivedKeyRequest in;
    in.set_search("alice");
    in.set_blob(true);
    v1::GetArchivedKeyResponse out;
    grpc::Status st = stub->GetArchivedKey(&ctx, in, &out);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_TRUE(out.recovery_blob().empty());
  }

  Sql(daemon_->postgres() ? "DROP TRIGGER test_audit_fault ON audit"
                          : "DROP TRIGGER test_audit_fault");
  auto ok = Kw("officer", StrCat("getkey alice ", blob));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  EXPECT_TRUE(std::ifstream(blob).good());
  EXPECT_EQ(AuditCount("archival.key_retrieved", daemon_->client("officer").principal), 1);
}

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

// [kra] threshold = 2 of count = 3 (issue 17): the daemon archives to all
// three KRAs as a threshold archive; no card alone recovers; every pair
// does, through a share one KRA seals to the other; the recovered key
// decrypts what was encrypted to the user (checked with openssl).
class ThresholdRecoveryTest : public RecoveryTest {
 protected:
  ThresholdRecoveryTest() {
    count_ = 3;
    threshold_ = 2;
  }
  // Enrols with archival, encrypts a secret to the certificate, loses the
  // key, and retrieves the recovery blob as the Certificate Manager.
  void ArchiveAndRetrieve(const std::string& name, std::string* blob, std::string* secret_p7m,
                          std::string* cert) {
    *cert = tmp_.File(name + ".pem");
    const std::string key = tmp_.File(name + ".key");
    auto enrol = Kw("enrollee", StrCat("request --template ArchivalUser --cert-out ", *cert,
                                       " --key-out ", key));
    ASSERT_EQ(enrol.exit_code, 0) << enrol.output;
    WriteFile(tmp_.File(name + ".txt"), "the quarterly numbers of " + name + "\n");
    *secret_p7m = tmp_.File(name + ".p7m");
    auto enc = RunCommand(StrCat("openssl cms -encrypt -aes256 -in ", tmp_.File(name + ".txt"),
                                 " -out ", *secret_p7m, " ", *cert));
    ASSERT_EQ(enc.exit_code, 0) << enc.output;
    std::remove(key.c_str());
    std::string serial = RunCommand(StrCat("openssl x509 -noout -serial -in ", *cert)).output;
    serial = serial.substr(serial.find('=') + 1);
    while (!serial.empty() && serial.back() == '\n') serial.pop_back();
    *blob = tmp_.File(name + ".rec");
    auto get = Kw("officer", StrCat("getkey ", serial, " ", *blob));
    ASSERT_EQ(get.exit_code, 0) << get.output;
  }
  // The PFX's key decrypts the secret (openssl, independently of keywarden).
  void ExpectDecrypts(const std::string& pfx, const std::string& secret_p7m,
                      const std::string& cert, const std::string& name) {
    auto key = RunCommand(StrCat("openssl pkcs12 -in ", pfx,
                                 " -passin 'pass:pfx pw' -nodes -nocerts -out ",
                                 tmp_.File("recovered.key")));
    ASSERT_EQ(key.exit_code, 0) << key.output;
    auto dec = RunCommand(StrCat("openssl cms -decrypt -in ", secret_p7m, " -inkey ",
                                 tmp_.File("recovered.key"), " -recip ", cert));
    ASSERT_EQ(dec.exit_code, 0) << dec.output;
    EXPECT_TRUE(Contains(dec.output, "the quarterly numbers of " + name)) << dec.output;
  }

  // The share card `from` seals to card `to` for `blob`, made once per
  // blob and pair (a card login each time) and reused.
  std::string Share(const std::string& blob, size_t from, size_t to) {
    const std::string key = StrCat(blob, "|", from, "|", to);
    if (auto it = shares_.find(key); it != shares_.end()) return it->second;
    const std::string file = tmp_.File(StrCat("share-", shares_.size(), "-", from, "-to-", to));
    auto give =
        Recover(cards_[from], StrCat(blob, " --contribute-to ", kra_sha1_[to], " --out ", file));
    EXPECT_EQ(give.exit_code, 0) << cards_[from] << " to " << cards_[to] << ": " << give.output;
    shares_[key] = file;
    return file;
  }

  // Recovery by the card `coordinator` with the shares of `contributors`
  // sealed to it; "" for no --shares at all.
  CommandResult RecoverWith(const std::string& blob, size_t coordinator,
                            const std::vector<size_t>& contributors, const std::string& pfx) {
    std::vector<std::string> files;
    for (size_t c : contributors) files.push_back(Share(blob, c, coordinator));
    return Recover(cards_[coordinator], StrCat(blob, " ", pfx, files.empty() ? "" : " --shares ",
                                               StrJoin(files, ","), " -p 'pfx pw'"));
  }

  // A refusal for too few shares: it says how many are needed, how many
  // were given and how many more, and lists exactly the KRAs whose shares
  // are missing (by subject and SHA-1), none of those given; no PFX.
  void ExpectTooFew(const CommandResult& r, const std::set<size_t>& given, const std::string& pfx) {
    const int k = threshold_;
    const int have = static_cast<int>(given.size());
    EXPECT_NE(r.exit_code, 0) << r.output;
    EXPECT_FALSE(std::ifstream(pfx).good()) << pfx << " written with " << have << " shares";
    EXPECT_TRUE(Contains(r.output, StrCat("needs ", k, " shares and ", have, " were given")))
        << r.output;
    const std::string more = StrCat(k - have, " more needed, from any of:");
    const size_t at = r.output.find(more);
    ASSERT_NE(at, std::string::npos) << more << "\n" << r.output;
    const std::string list = r.output.substr(at);
    for (size_t i = 0; i < cards_.size(); ++i) {
      const bool missing = given.count(i) == 0;
      EXPECT_EQ(Contains(list, kra_sha1_[i]), missing)
          << cards_[i] << (missing ? " is missing but not named" : " was given but is named")
          << ":\n"
          << list;
      EXPECT_EQ(Contains(list, StrCat("CN=KRA ", cards_[i])), missing) << list;
    }
  }

  std::map<std::string, std::string> shares_;  // blob|from|to -> sealed share file
};

TEST_F(ThresholdRecoveryTest, NoCardAloneRecoversAndEveryPairDoes) {
  std::string blob, p7m, cert;
  ArchiveAndRetrieve("alice", &blob, &p7m, &cert);
  // The blob verifies with openssl, and its content is an EnvelopedData
  // whose recipients are keywarden threshold shares.
  auto verify =
      RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", blob,
                        " -CAfile ", daemon_->ca_cert_path(), " -out ", tmp_.File("inner.der")));
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  auto inner =
      RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", tmp_.File("inner.der")));
  EXPECT_TRUE(Contains(inner.output, "d.ori")) << inner.output;
  EXPECT_TRUE(Contains(inner.output, "2.25.56147068238476046464733690741334488612.1"))
      << inner.output;
  EXPECT_FALSE(Contains(inner.output, "d.ktri")) << "no KRA holds the whole content key";

  // One card alone: refused, naming how many more shares and from whom.
  for (size_t i = 0; i < cards_.size(); ++i) {
    const std::string pfx = tmp_.File(StrCat("alone", i, ".pfx"));
    auto alone = Recover(cards_[i], StrCat(blob, " ", pfx, " -p 'pfx pw'"));
    ExpectTooFew(alone, {i}, pfx);
  }

  // Every ordered pair: the contributor seals its share to the coordinator.
  for (size_t c = 0; c < cards_.size(); ++c) {
    for (size_t d = 0; d < cards_.size(); ++d) {
      if (c == d) continue;
      const std::string share = tmp_.File(StrCat("share-", d, "-to-", c, ".p7m"));
      auto give =
          Recover(cards_[d], StrCat(blob, " --contribute-to ", kra_sha1_[c], " --out ", share));
      ASSERT_EQ(give.exit_code, 0) << give.output;
      // Only the coordinator's card opens it: a third card's share
      // submitted with it is refused.
      const std::string pfx = tmp_.File(StrCat("pair-", c, "-", d, ".pfx"));
      auto r = Recover(cards_[c], StrCat(blob, " ", pfx, " --shares ", share, " -p 'pfx pw'"));
      ASSERT_EQ(r.exit_code, 0) << cards_[c] << " with " << cards_[d] << ": " << r.output;
      EXPECT_TRUE(Contains(r.output, "2 shares of 3 combined")) << r.output;
      ExpectDecrypts(pfx, p7m, cert, "alice");
      if (c == 0 && d == 1) {
        // The same share opened by another card: not sealed to it.
        auto wrong = Recover(cards_[2], StrCat(blob, " ", tmp_.File("wrong.pfx"), " --shares ",
                                               share, " -p 'pfx pw'"));
        EXPECT_NE(wrong.exit_code, 0) << wrong.output;
        EXPECT_TRUE(Contains(wrong.output, share)) << "names the share file: " << wrong.output;
        // A share given twice counts once.
        auto twice = Recover(cards_[c], StrCat(blob, " ", tmp_.File("twice.pfx"), " --shares ",
                                               share, ",", share, " -p 'pfx pw'"));
        EXPECT_NE(twice.exit_code, 0) << twice.output;
        EXPECT_TRUE(Contains(twice.output, "given twice")) << twice.output;
        // A damaged share file is named.
        std::vector<uint8_t> bytes = ReadFile(share);
        bytes[bytes.size() / 2] ^= 0x01;
        WriteFile(tmp_.File("damaged.p7m"), bytes);
        auto damaged = Recover(cards_[c], StrCat(blob, " ", tmp_.File("damaged.pfx"), " --shares ",
                                                 tmp_.File("damaged.p7m"), " -p 'pfx pw'"));
        EXPECT_NE(damaged.exit_code, 0) << damaged.output;
        EXPECT_TRUE(Contains(damaged.output, "damaged.p7m")) << damaged.output;
        // Contributing to oneself is refused.
        auto self = Recover(cards_[c], StrCat(blob, " --contribute-to ", kra_sha1_[c], " --out ",
                                              tmp_.File("self.p7m")));
        EXPECT_NE(self.exit_code, 0) << self.output;
      }
    }
  }
}

TEST_F(ThresholdRecoveryTest, AShareOfAnotherArchiveIsRefused) {
  std::string blob1, p7m1, cert1, blob2, p7m2, cert2;
  ArchiveAndRetrieve("alice", &blob1, &p7m1, &cert1);
  ArchiveAndRetrieve("alice2", &blob2, &p7m2, &cert2);
  const std::string share = tmp_.File("share-of-2.p7m");
  auto give =
      Recover(cards_[1], StrCat(blob2, " --contribute-to ", kra_sha1_[0], " --out ", share));
  ASSERT_EQ(give.exit_code, 0) << give.output;
  auto r = Recover(cards_[0],
                   StrCat(blob1, " ", tmp_.File("x.pfx"), " --shares ", share, " -p 'pfx pw'"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "another archive")) << r.output;
  // With the right blob the same share works.
  auto ok = Recover(cards_[0],
                    StrCat(blob2, " ", tmp_.File("y.pfx"), " --shares ", share, " -p 'pfx pw'"));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  ExpectDecrypts(tmp_.File("y.pfx"), p7m2, cert2, "alice2");
}

// A contribution sealed to the coordinator as the protocol says but whose
// share is not the one the archive committed to (a malicious or broken
// contributor) is refused, naming the share by its index and the file; so
// is a share relabelled with another KRA's index. The contribution is made
// here with pki::threshold::SealContribution, from the blob as any holder
// of it reads it; the genuine contribution from the same card then works.
TEST_F(ThresholdRecoveryTest, ATamperedContributionIsNamedByItsIndex) {
  std::string blob, p7m, cert;
  ArchiveAndRetrieve("dave", &blob, &p7m, &cert);
  auto anchors = pki::ReadPemCertificates(daemon_->ca_cert_path());
  ASSERT_TRUE(anchors.ok()) << anchors.status();
  auto der = pki::RecoveryBlobDer(ReadFile(blob));
  ASSERT_TRUE(der.ok()) << der.status();
  auto parsed = pki::ParseRecoveryBlob(*der, *anchors);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  ASSERT_TRUE(parsed->threshold.has_value());
  const pki::threshold::ThresholdEnvelope& env = *parsed->threshold;
  auto entry_of = [&](size_t card) -> const pki::threshold::ShareEntry* {
    for (const auto& e : env.shares) {
      if (e.Names(kra_certs_[card].get())) return &e;
    }
    return nullptr;
  };
  const pki::threshold::ShareEntry* theirs = entry_of(1);
  const pki::threshold::ShareEntry* other = entry_of(2);
  ASSERT_NE(theirs, nullptr);
  ASSERT_NE(other, nullptr);

  pki::threshold::Contribution forged;
  forged.archive_digest = pki::threshold::ArchiveDigest(parsed->enveloped_data);
  forged.index = theirs->index;
  forged.contributor_issuer = theirs->issuer;
  forged.contributor_serial = theirs->serial;
  forged.share = hsm::SecretBytes(pki::threshold::ContentKeyLength(env.content.cipher));
  ASSERT_EQ(RAND_bytes(forged.share.data(), static_cast<int>(forged.share.size())), 1);
  auto sealed = pki::threshold::SealContribution(forged, kra_certs_[0].get(), theirs->transport);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  const std::string bad = tmp_.File("forged-share.p7m");
  WriteFile(bad, *sealed);
  const std::string index = StrCat("share ", static_cast<int>(theirs->index), " (KRA");
  auto r = Recover(cards_[0],
                   StrCat(blob, " ", tmp_.File("forged.pfx"), " --shares ", bad, " -p 'pfx pw'"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "forged-share.p7m")) << r.output;
  EXPECT_TRUE(Contains(r.output, index)) << index << "\n" << r.output;
  EXPECT_TRUE(Contains(r.output, "does not match its commitment")) << r.output;
  EXPECT_FALSE(std::ifstream(tmp_.File("forged.pfx")).good());

  // The same contributor claiming another KRA's share index.
  forged.index = other->index;
  sealed = pki::threshold::SealContribution(forged, kra_certs_[0].get(), theirs->transport);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  WriteFile(tmp_.File("relabelled.p7m"), *sealed);
  r = Recover(cards_[0], StrCat(blob, " ", tmp_.File("relabelled.pfx"), " --shares ",
                                tmp_.File("relabelled.p7m"), " -p 'pfx pw'"));
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, StrCat("share ", static_cast<int>(other->index),
                                        " is not held by the KRA that sealed it")))
      << r.output;
  EXPECT_FALSE(std::ifstream(tmp_.File("relabelled.pfx")).good());

  // The genuine contribution of that card recovers.
  auto ok = RecoverWith(blob, 0, {1}, tmp_.File("genuine.pfx"));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  ExpectDecrypts(tmp_.File("genuine.pfx"), p7m, cert, "dave");
}

// [kra] threshold = 3 of count = 5, on five SoftHSM2 cards: every 3 of the
// 5 cards recover the key (checked with openssl against a secret encrypted
// to the user certificate); every 2 of them and every card alone are
// refused, naming how many more shares are needed and exactly the KRAs
// whose shares are missing. The coordinator rotates within each subset so
// that every card coordinates and contributes; each sealed share is made
// once and reused (card logins are slow).
class ThresholdThreeOfFiveTest : public ThresholdRecoveryTest {
 protected:
  ThresholdThreeOfFiveTest() {
    count_ = 5;
    threshold_ = 3;
    card_labels_ = {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2, SoftHsmFixture::kKraCard3,
                    SoftHsmFixture::kKraCard4, SoftHsmFixture::kKraCard5};
  }
};

TEST_F(ThresholdThreeOfFiveTest, EveryThreeCardsRecoverAndNoTwoDo) {
  ASSERT_EQ(cards_.size(), 5u);
  std::string blob, p7m, cert;
  ArchiveAndRetrieve("erin", &blob, &p7m, &cert);
  // openssl verifies the CA signature of the blob and reads the archive
  // inside: five keywarden ThresholdShare recipients, no KRA with the
  // whole content key.
  auto verify =
      RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", blob,
                        " -CAfile ", daemon_->ca_cert_path(), " -out ", tmp_.File("inner.der")));
  ASSERT_EQ(verify.exit_code, 0) << verify.output;
  auto inner =
      RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", tmp_.File("inner.der")));
  ASSERT_EQ(inner.exit_code, 0) << inner.output;
  size_t ori = 0;
  for (size_t at = 0; (at = inner.output.find("d.ori:", at)) != std::string::npos; ++at) ++ori;
  EXPECT_EQ(ori, 5u) << inner.output;
  EXPECT_FALSE(Contains(inner.output, "d.ktri")) << inner.output;
  EXPECT_TRUE(Contains(inner.output, pki::threshold::kThresholdShareOid)) << inner.output;
  // Without a card, recoverkey shows k and n and the five share holders.
  auto show = RunCommand(
      StrCat(KEYWARDEN_CLI, " recoverkey ", blob, " --ca-cert ", daemon_->ca_cert_path()));
  ASSERT_EQ(show.exit_code, 0) << show.output;
  EXPECT_TRUE(Contains(show.output, "a threshold archive: 3 of these 5 KRAs' cards are needed"))
      << show.output;
  for (const std::string& sha1 : kra_sha1_) {
    EXPECT_TRUE(Contains(show.output, sha1)) << show.output;
  }
  auto show_json = RunCommand(
      StrCat(KEYWARDEN_CLI, " --json recoverkey ", blob, " --ca-cert ", daemon_->ca_cert_path()));
  ASSERT_EQ(show_json.exit_code, 0) << show_json.output;
  EXPECT_TRUE(Contains(show_json.output, "\"threshold\":{\"k\":3,\"n\":5}") ||
              Contains(show_json.output, "\"threshold\": {\n"))
      << show_json.output;

  const size_t n = cards_.size();
  // Alone.
  for (size_t a = 0; a < n; ++a) {
    const std::string pfx = tmp_.File(StrCat("one-", a, ".pfx"));
    ExpectTooFew(RecoverWith(blob, a, {}, pfx), {a}, pfx);
  }
  // Every 2-subset: one coordinator and one contribution.
  int turn = 0;
  for (size_t a = 0; a < n; ++a) {
    for (size_t b = a + 1; b < n; ++b) {
      const std::vector<size_t> subset = {a, b};
      const size_t coordinator = subset[static_cast<size_t>(turn++) % 2];
      const size_t contributor = coordinator == a ? b : a;
      const std::string pfx = tmp_.File(StrCat("two-", a, b, ".pfx"));
      ExpectTooFew(RecoverWith(blob, coordinator, {contributor}, pfx), {a, b}, pfx);
    }
  }
  // Every 3-subset recovers.
  int recovered = 0;
  for (size_t a = 0; a < n; ++a) {
    for (size_t b = a + 1; b < n; ++b) {
      for (size_t c = b + 1; c < n; ++c) {
        const std::vector<size_t> subset = {a, b, c};
        const size_t coordinator = subset[static_cast<size_t>(turn++) % 3];
        std::vector<size_t> contributors;
        for (size_t x : subset) {
          if (x != coordinator) contributors.push_back(x);
        }
        const std::string pfx = tmp_.File(StrCat("three-", a, b, c, ".pfx"));
        auto r = RecoverWith(blob, coordinator, contributors, pfx);
        ASSERT_EQ(r.exit_code, 0) << cards_[a] << ", " << cards_[b] << ", " << cards_[c]
                                  << " (coordinator " << cards_[coordinator] << "): " << r.output;
        EXPECT_TRUE(Contains(r.output, "3 shares of 5 combined (3 needed)")) << r.output;
        ExpectDecrypts(pfx, p7m, cert, "erin");
        ++recovered;
      }
    }
  }
  EXPECT_EQ(recovered, 10);
}

}  // namespace
}  // namespace keywarden::testing
