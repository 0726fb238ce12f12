// KRA rollover of threshold archives and batch recovery of threshold
// archives (issue 17, items 3 and 4; docs/THRESHOLD.md, "Rewrap" and
// "Batches"). Five SoftHSM2 KRA cards; archives made 2 of 3 on cards 1-3.
//   - The CA moves to cards 3, 4, 5 (2 of 3): card 1 seals its share to
//     card 2 (`kra rewrap --contribute-to`), card 2 rewraps
//     (`kra rewrap --shares-dir`); openssl reads the same
//     encryptedContentInfo before and after and verifies the new blob; every
//     pair of the new cards recovers the enrolled key (openssl decrypts with
//     it), the old cards 1 and 2 no longer can; the old envelope is in the
//     history, the scheme and audit name the new form.
//   - The CA moves to card 4 alone (k = 1): the rewrap makes plain
//     key-transport recipients and card 4 recovers alone.
//   - Every refusal of the CA (wrong k, duplicate index, index outside 1..n,
//     a non-KRA share holder, too few shares, altered content, a k = 1
//     envelope while threshold is configured) is audited and stores nothing.
//   - recoverkey --batch over three threshold blobs with --contribute-to /
//     --shares-dir; a contribution renamed to another archive's name is
//     refused as a share of another archive.
// Runs on SQLite and (postgresql.*) PostgreSQL.
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <gtest/gtest.h>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/rewrap.h"
#include "pki/threshold.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/kra_cards.h"
#include "tests/service/rewrap_test_util.h"
#include "tests/service/rpc_test_util.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;
namespace th = pki::threshold;

struct Archived {
  std::string name, cert, p7m, serial;
  int64_t request_id = 0;
};

class ThresholdRewrapTest : public ::testing::Test {
 protected:
  void SetUp() override {
    DaemonHarness::Options options;
    options.role_separation = true;
    options.extra_toml = kKraTemplateToml;
    options.tokens = SoftHsmFixture::FiveKraCards();
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    for (const char* card :
         {SoftHsmFixture::kKraCard1, SoftHsmFixture::kKraCard2, SoftHsmFixture::kKraCard3,
          SoftHsmFixture::kKraCard4, SoftHsmFixture::kKraCard5}) {
      auto cert = EnrollKraCard(*daemon_, card);
      ASSERT_TRUE(cert.ok()) << cert.status();
      kra_sha1_.push_back(pki::Sha1Thumbprint(cert->get()));
      kra_certs_.push_back(std::move(*cert));
      cards_.push_back(card);
    }
    // Archives: 2 of 3 on cards 1, 2, 3.
    ASSERT_TRUE(UseKras(*daemon_, {kra_sha1_[0], kra_sha1_[1], kra_sha1_[2]}, 3, 2).ok());
  }

  void SwitchKras(const std::vector<size_t>& cards, int count, int threshold) {
    std::ifstream in(daemon_->config_path());
    std::stringstream buf;
    buf << in.rdbuf();
    std::string config = buf.str();
    const size_t at = config.rfind("\n[kra]\n");
    ASSERT_NE(at, std::string::npos);
    config.resize(at);
    WriteFile(daemon_->config_path(), config);
    std::vector<std::string> sha1;
    for (size_t c : cards) sha1.push_back(kra_sha1_[c]);
    ASSERT_TRUE(UseKras(*daemon_, sha1, count, threshold).ok());
  }

  CommandResult Kw(const std::string& who, const std::string& args) const {
    return RunCommand(StrCat(KEYWARDEN_CLI, daemon_->CliConnection(who), args));
  }
  std::string CardArgs(size_t card) const {
    return StrCat(" --card pkcs11:token=", cards_[card],
                  " --pin-source file:", daemon_->tokens().PinFile(cards_[card]), " --ca-cert ",
                  daemon_->ca_cert_path(), " ");
  }
  CommandResult Recover(size_t card, const std::string& args) const {
    return RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                             KEYWARDEN_CLI, " recoverkey", CardArgs(card), args));
  }
  CommandResult Rewrap(size_t card, const std::string& args) const {
    return RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", SoftHsmFixture::module_path(), " ",
                             KEYWARDEN_CLI, daemon_->CliConnection("officer"), " kra rewrap",
                             CardArgs(card), args));
  }
  std::string Sql(const std::string& sql) const { return SqlValue(*daemon_, sql); }
  int AuditCount(const std::string& event) const { return AuditEventCount(*daemon_, event); }

  Archived Archive(const std::string& name) {
    Archived a;
    a.name = name;
    a.cert = tmp_.File(name + ".pem");
    const std::string key = tmp_.File(name + ".key");
    auto enrol = Kw("enrollee", StrCat("request --template ArchivalUser --cert-out ", a.cert,
                                       " --key-out ", key));
    EXPECT_EQ(enrol.exit_code, 0) << enrol.output;
    WriteFile(tmp_.File(name + ".txt"), "the quarterly numbers of " + name + "\n");
    a.p7m = tmp_.File(name + ".p7m");
    auto enc = RunCommand(StrCat("openssl cms -encrypt -aes256 -in ", tmp_.File(name + ".txt"),
                                 " -out ", a.p7m, " ", a.cert));
    EXPECT_EQ(enc.exit_code, 0) << enc.output;
    std::remove(key.c_str());
    a.serial = RunCommand(StrCat("openssl x509 -noout -serial -in ", a.cert)).output;
    a.serial = TrimLine(a.serial.substr(a.serial.find('=') + 1));
    a.request_id = std::stoll(Sql(StrCat(
        "SELECT request_id FROM certificates WHERE lower(serial) = '", AsciiLower(a.serial), "'")));
    return a;
  }
  // getkey into `file`.rec; the inner envelope, verified by openssl cms
  // -verify against the CA certificate, into `file`.der.
  std::string Blob(const Archived& a, const std::string& file) {
    return GetVerifiedBlob(*daemon_, tmp_, a.serial, file);
  }
  std::string Print(const std::string& file) { return CmsPrint(tmp_, file); }
  // The PFX's key decrypts what was encrypted to the user (openssl).
  void ExpectDecrypts(const std::string& pfx, const Archived& a) {
    const std::string key = tmp_.File("recovered.key");
    std::remove(key.c_str());
    auto k = RunCommand(
        StrCat("openssl pkcs12 -in ", pfx, " -passin 'pass:pfx pw' -nodes -nocerts -out ", key));
    ASSERT_EQ(k.exit_code, 0) << k.output;
    auto dec =
        RunCommand(StrCat("openssl cms -decrypt -in ", a.p7m, " -inkey ", key, " -recip ", a.cert));
    ASSERT_EQ(dec.exit_code, 0) << dec.output;
    EXPECT_TRUE(Contains(dec.output, "the quarterly numbers of " + a.name)) << dec.output;
  }
  // Card `from` seals its share of `blob` to card `to`; card `to` recovers.
  CommandResult RecoverPair(const std::string& blob, size_t from, size_t to,
                            const std::string& pfx) {
    const std::string share = tmp_.File(StrCat("share-", ++counter_));
    auto give = Recover(from, StrCat(blob, " --contribute-to ", kra_sha1_[to], " --out ", share));
    if (give.exit_code != 0) return give;
    return Recover(to, StrCat(blob, " ", pfx, " --shares ", share, " -p 'pfx pw'"));
  }
  // Each of `from` seals its share of `blob` to card `to`; card `to`
  // recovers with them.
  CommandResult RecoverWith(const std::string& blob, const std::vector<size_t>& from, size_t to,
                            const std::string& pfx) {
    std::vector<std::string> files;
    for (size_t c : from) {
      files.push_back(tmp_.File(StrCat("share-", ++counter_)));
      auto give =
          Recover(c, StrCat(blob, " --contribute-to ", kra_sha1_[to], " --out ", files.back()));
      if (give.exit_code != 0) return give;
    }
    return Recover(to, StrCat(blob, " ", pfx, " --shares ", StrJoin(files, ","), " -p 'pfx pw'"));
  }
  std::string NewDir(const std::string& name) {
    const std::string dir = tmp_.File(name);
    std::filesystem::create_directories(dir);
    return dir;
  }
  grpc::Status SendRewrap(const Archived& a, const std::vector<uint8_t>& previous,
                          const std::vector<uint8_t>& envelope) {
    auto stub = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::RewrapArchivedKeyRequest in;
    in.set_request_id(a.request_id);
    in.set_previous_sha256(Sha256Raw(previous));
    in.set_enveloped_data(std::string(envelope.begin(), envelope.end()));
    v1::RewrapArchivedKeyResponse out;
    return stub->RewrapArchivedKey(&ctx, in, &out);
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
  std::vector<std::string> cards_;
  std::vector<std::string> kra_sha1_;
  std::vector<ossl::UniquePtr<X509>> kra_certs_;
  int counter_ = 0;
};

TEST_F(ThresholdRewrapTest, TwoOldCardsRewrapToANewSetEveryNewPairRecoversAndOldCardsDoNot) {
  const Archived alice = Archive("alice");
  const std::string old_blob = Blob(alice, "old");
  const std::string old_print = Print("old");
  SwitchKras({2, 3, 4}, 3, 2);  // cards 3, 4, 5; 2 of 3

  // Card 1 seals its share to card 2, the coordinator; card 2 rewraps.
  const std::string d1 = NewDir("from-card-1");
  auto give = Rewrap(0, StrCat("--json --search ", alice.serial, " --contribute-to ", kra_sha1_[1],
                               " --out-dir ", d1));
  ASSERT_EQ(give.exit_code, 0) << give.output;
  EXPECT_TRUE(Contains(give.output, "\"contributed\"")) << give.output;
  // Coordinating with no contribution: refused, naming how many more.
  auto alone = Rewrap(1, StrCat("--search ", alice.serial));
  EXPECT_NE(alone.exit_code, 0) << alone.output;
  EXPECT_TRUE(Contains(alone.output, "needs 2 shares and 1 were given")) << alone.output;
  EXPECT_EQ(AuditCount("archival.key_rewrapped"), 0);

  auto rewrap = Rewrap(1, StrCat("--json --search ", alice.serial, " --shares-dir ", d1));
  ASSERT_EQ(rewrap.exit_code, 0) << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "\"rewrapped\"")) << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "\"shares_combined\": 2") ||
              Contains(rewrap.output, "\"shares_combined\":2"))
      << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "-threshold-2of3")) << rewrap.output;

  // openssl: the new blob verifies (in Blob) and the encrypted content, IV
  // and algorithm are the old ones; the recipients are keywarden shares.
  const std::string new_blob = Blob(alice, "new");
  const std::string new_print = Print("new");
  EXPECT_FALSE(EncryptedContentText(old_print).empty()) << old_print;
  EXPECT_EQ(EncryptedContentText(new_print), EncryptedContentText(old_print));
  EXPECT_TRUE(Contains(new_print, th::kThresholdShareOid)) << new_print;
  EXPECT_NE(ReadFile(tmp_.File("new.der")), ReadFile(tmp_.File("old.der")));
  // Its shares: 2 of 3, indexes 1..3, to cards 3, 4, 5.
  auto env = th::ParseThresholdEnvelope(ReadFile(tmp_.File("new.der")));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->k, 2);
  EXPECT_EQ(env->n, 3);
  std::set<int> indexes;
  std::set<size_t> holders;
  for (const auto& e : env->shares) {
    indexes.insert(e.index);
    for (size_t c = 0; c < kra_certs_.size(); ++c) {
      if (e.Names(kra_certs_[c].get())) holders.insert(c);
    }
  }
  EXPECT_EQ(indexes, (std::set<int>{1, 2, 3}));
  EXPECT_EQ(holders, (std::set<size_t>{2, 3, 4}));

  // Every pair of the new cards recovers the enrolled key.
  for (auto [from, to] : std::vector<std::pair<size_t, size_t>>{{2, 3}, {4, 2}, {3, 4}}) {
    const std::string pfx = tmp_.File(StrCat("new-", from, "-", to, ".pfx"));
    auto r = RecoverPair(new_blob, from, to, pfx);
    ASSERT_EQ(r.exit_code, 0) << cards_[from] << " -> " << cards_[to] << ": " << r.output;
    ExpectDecrypts(pfx, alice);
  }
  // One new card alone does not.
  auto one = Recover(3, StrCat(new_blob, " ", tmp_.File("one.pfx"), " -p 'pfx pw'"));
  EXPECT_NE(one.exit_code, 0) << one.output;
  // The old cards 1 and 2 hold no share of the new blob.
  auto old_pair = RecoverPair(new_blob, 0, 1, tmp_.File("old-pair.pfx"));
  EXPECT_NE(old_pair.exit_code, 0) << old_pair.output;
  EXPECT_FALSE(std::ifstream(tmp_.File("old-pair.pfx")).good());

  // The history keeps the old envelope; the row has the new scheme and KRAs.
  const std::string where = StrCat(" FROM archive_history WHERE request_id = ", alice.request_id);
  EXPECT_EQ(Sql("SELECT count(*)" + where), "1");
  EXPECT_EQ(Sql(StrCat("SELECT length(archived_key)", where)),
            std::to_string(ReadFile(tmp_.File("old.der")).size()));
  const std::string scheme =
      Sql(StrCat("SELECT archival_scheme FROM requests WHERE id = ", alice.request_id));
  EXPECT_TRUE(scheme.ends_with("-threshold-2of3")) << scheme;
  const std::string kras =
      Sql(StrCat("SELECT kra_sha1 FROM requests WHERE id = ", alice.request_id));
  for (size_t c : {2, 3, 4}) EXPECT_TRUE(Contains(kras, kra_sha1_[c])) << kras;
  EXPECT_FALSE(Contains(kras, kra_sha1_[0])) << kras;
  EXPECT_EQ(AuditCount("archival.key_rewrapped"), 1);

  // Run again: already current.
  auto again = Rewrap(2, StrCat("--search ", alice.serial));
  EXPECT_EQ(again.exit_code, 0) << again.output;
  EXPECT_TRUE(Contains(again.output, "already encrypted to the current KRAs")) << again.output;
}

TEST_F(ThresholdRewrapTest, ToOneKraTheRewrapMakesKeyTransportRecipients) {
  const Archived alice = Archive("alice");
  Blob(alice, "old");
  const std::string old_print = Print("old");
  SwitchKras({3}, 1, 1);  // card 4 alone, any one KRA recovers
  const std::string share = tmp_.File("card3-to-card1");
  auto give =
      Recover(2, StrCat(tmp_.File("old.rec"), " --contribute-to ", kra_sha1_[0], " --out ", share));
  ASSERT_EQ(give.exit_code, 0) << give.output;
  auto rewrap = Rewrap(0, StrCat("--search ", alice.serial, " --shares ", share));
  ASSERT_EQ(rewrap.exit_code, 0) << rewrap.output;
  const std::string new_blob = Blob(alice, "new");
  const std::string new_print = Print("new");
  EXPECT_EQ(EncryptedContentText(new_print), EncryptedContentText(old_print));
  EXPECT_FALSE(Contains(new_print, th::kThresholdShareOid)) << new_print;
  auto parsed = pki::ParseArchiveEnvelope(ReadFile(tmp_.File("new.der")));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->threshold);
  ASSERT_EQ(parsed->recipients.size(), 1u);
  EXPECT_TRUE(parsed->recipients[0].Names(kra_certs_[3].get()));
  const std::string pfx = tmp_.File("card4.pfx");
  auto r = Recover(3, StrCat(new_blob, " ", pfx, " -p 'pfx pw'"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ExpectDecrypts(pfx, alice);
  const std::string scheme =
      Sql(StrCat("SELECT archival_scheme FROM requests WHERE id = ", alice.request_id));
  EXPECT_FALSE(Contains(scheme, "threshold")) << scheme;
}

// k = 1 -> threshold: a Windows-form archive (card 1 alone) moves to 3 of 5
// when the CA's [kra] threshold is raised; one card does it, and afterwards
// three cards are needed.
TEST_F(ThresholdRewrapTest, AnArchiveOfOneKraMovesToThreeOfFive) {
  SwitchKras({0}, 1, 1);
  const Archived alice = Archive("alice");
  Blob(alice, "old");
  const std::string old_print = Print("old");
  ASSERT_FALSE(Contains(old_print, th::kThresholdShareOid)) << old_print;
  SwitchKras({0, 1, 2, 3, 4}, 5, 3);

  auto rewrap = Rewrap(0, StrCat("--search ", alice.serial));
  ASSERT_EQ(rewrap.exit_code, 0) << rewrap.output;
  EXPECT_TRUE(Contains(rewrap.output, "split afresh, 3 of 5 needed")) << rewrap.output;
  const std::string new_blob = Blob(alice, "new");
  const std::string new_print = Print("new");
  EXPECT_EQ(EncryptedContentText(new_print), EncryptedContentText(old_print));
  EXPECT_TRUE(Contains(new_print, th::kThresholdShareOid)) << new_print;
  auto env = th::ParseThresholdEnvelope(ReadFile(tmp_.File("new.der")));
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->k, 3);
  EXPECT_EQ(env->n, 5);

  // Card 1 alone no longer recovers from the new blob; two cards do not
  // either; three do (two different triples).
  auto alone = Recover(0, StrCat(new_blob, " ", tmp_.File("alone.pfx"), " -p 'pfx pw'"));
  EXPECT_NE(alone.exit_code, 0) << alone.output;
  auto two = RecoverWith(new_blob, {1}, 0, tmp_.File("two.pfx"));
  EXPECT_NE(two.exit_code, 0) << two.output;
  EXPECT_TRUE(Contains(two.output, "needs 3 shares and 2 were given")) << two.output;
  for (auto [from, to] :
       std::vector<std::pair<std::vector<size_t>, size_t>>{{{2, 3}, 4}, {{0, 4}, 1}}) {
    const std::string pfx = tmp_.File(StrCat("three-", to, ".pfx"));
    auto r = RecoverWith(new_blob, from, to, pfx);
    ASSERT_EQ(r.exit_code, 0) << cards_[to] << ": " << r.output;
    ExpectDecrypts(pfx, alice);
  }
  EXPECT_TRUE(Sql(StrCat("SELECT archival_scheme FROM requests WHERE id = ", alice.request_id))
                  .ends_with("-threshold-3of5"));
  // The history keeps the k = 1 envelope: card 1 still opens that one
  // (docs/THRESHOLD.md: retire the old cards for the upgrade to count).
  EXPECT_EQ(
      Sql(StrCat("SELECT count(*) FROM archive_history WHERE request_id = ", alice.request_id)),
      "1");
}

TEST_F(ThresholdRewrapTest, EveryMalformedThresholdRewrapIsRefusedAuditedAndStoresNothing) {
  const Archived alice = Archive("alice");
  Blob(alice, "old");
  const std::vector<uint8_t> stored = ReadFile(tmp_.File("old.der"));
  auto old_env = pki::ParseArchiveEnvelope(stored);
  ASSERT_TRUE(old_env.ok()) << old_env.status();
  ASSERT_TRUE(old_env->threshold);
  auto old_t = th::ParseThresholdEnvelope(stored);
  ASSERT_TRUE(old_t.ok()) << old_t.status();
  const pki::KeyTransport transport = old_t->shares[0].transport;
  const std::vector<uint8_t>& eci = old_env->encrypted_content_info;
  SwitchKras({2, 3, 4}, 3, 2);
  const int refused_before = AuditCount("archival.rewrap_refused");

  // A share (random bytes, encrypted for real) to each listed card with the
  // listed index: the CA cannot read shares, so these are well-formed
  // apart from what each case breaks.
  auto build = [&](int k, const std::vector<std::pair<size_t, uint8_t>>& to,
                   std::span<const uint8_t> content) {
    std::vector<th::ShareRecipient> rs;
    for (auto [card, index] : to) {
      th::ShareRecipient r;
      r.certificate = kra_certs_[card].get();
      r.transport = transport;
      r.index = index;
      std::vector<uint8_t> share(th::ContentKeyLength(old_t->content.cipher));
      EXPECT_EQ(RAND_bytes(share.data(), static_cast<int>(share.size())), 1);
      auto enc = th::EncryptShare(X509_get0_pubkey(r.certificate), transport, share);
      EXPECT_TRUE(enc.ok()) << enc.status();
      r.encrypted_share = *enc;
      r.commitment = th::CommitTo(k, static_cast<int>(to.size()), index, share);
      rs.push_back(std::move(r));
    }
    auto der = th::BuildThresholdEnvelopedDataAround(k, rs, content);
    EXPECT_TRUE(der.ok()) << der.status();
    return der.ok() ? *der : std::vector<uint8_t>{};
  };
  auto expect_refused = [&](const std::vector<uint8_t>& envelope, const std::string& why) {
    grpc::Status st = SendRewrap(alice, stored, envelope);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << why << ": " << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), why)) << st.error_message();
    EXPECT_TRUE(Contains(st.error_message(), "nothing was stored")) << st.error_message();
  };

  // The well-formed envelope these cases break would be accepted: checked
  // last, after every refusal.
  const std::vector<std::pair<size_t, uint8_t>> good = {{2, 1}, {3, 2}, {4, 3}};

  // Wrong k: 3 of 3 while the CA's threshold is 2.
  expect_refused(build(3, good, eci), "threshold 3 (of 3 shares); this CA's [kra] threshold is 2");
  // An index outside 1..n.
  expect_refused(build(2, {{2, 1}, {3, 2}, {4, 7}}, eci), "outside 1..3");
  // A duplicate index: share 3's index byte set to 2 in the DER.
  {
    std::vector<uint8_t> dup = build(2, good, eci);
    // ThresholdShare starts: version 1, k 2, n 3, index 3.
    const std::vector<uint8_t> pattern = {0x02, 0x01, 0x01, 0x02, 0x01, 0x02,
                                          0x02, 0x01, 0x03, 0x02, 0x01, 0x03};
    auto at = std::search(dup.begin(), dup.end(), pattern.begin(), pattern.end());
    ASSERT_NE(at, dup.end());
    *(at + 11) = 0x02;
    expect_refused(dup, "share index 2 appears twice");
  }
  // A share holder that is not a KRA of the CA now (card 1).
  expect_refused(build(2, {{0, 1}, {3, 2}, {4, 3}}, eci), "is not a currently valid KRA");
  // Too few shares: 2 of 2 while [kra] count is 3.
  expect_refused(build(2, {{2, 1}, {3, 2}}, eci), "has 2 share(s); this CA archives to 3 KRAs");
  // The encrypted content altered (its last byte).
  {
    std::vector<uint8_t> altered = eci;
    altered.back() ^= 0x01;
    expect_refused(build(2, good, altered), "encryptedContentInfo is not byte for byte");
  }
  // A k = 1 envelope (key transport to cards 3, 4, 5) while threshold is 2.
  {
    std::vector<pki::KeyTransRecipient> rs;
    for (size_t c : {2, 3, 4}) {
      std::vector<uint8_t> key(th::ContentKeyLength(old_t->content.cipher), 0x5a);
      auto enc = th::EncryptShare(X509_get0_pubkey(kra_certs_[c].get()), transport, key);
      ASSERT_TRUE(enc.ok()) << enc.status();
      rs.push_back(pki::KeyTransRecipient{kra_certs_[c].get(), transport, *enc});
    }
    auto plain = pki::BuildRewrappedEnvelope(eci, rs);
    ASSERT_TRUE(plain.ok()) << plain.status();
    expect_refused(*plain, "key-transport recipients, but this CA makes threshold archives");
  }

  EXPECT_EQ(AuditCount("archival.rewrap_refused"), refused_before + 7);
  EXPECT_EQ(AuditCount("archival.key_rewrapped"), 0);
  EXPECT_EQ(
      Sql(StrCat("SELECT count(*) FROM archive_history WHERE request_id = ", alice.request_id)),
      "0");
  Blob(alice, "after");
  EXPECT_EQ(ReadFile(tmp_.File("after.der")), stored) << "nothing was stored";

  // The CA takes the well-formed one (it cannot see that its shares are
  // random: docs/THRESHOLD.md, "What the CA cannot check").
  grpc::Status st = SendRewrap(alice, stored, build(2, good, eci));
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(AuditCount("archival.key_rewrapped"), 1);
}

TEST_F(ThresholdRewrapTest, BatchOfThresholdBlobsRecoversWithContributionsByDirectory) {
  std::vector<Archived> users;
  const std::string blobs = NewDir("blobs");
  for (const char* name : {"alice", "bob", "carol"}) {
    users.push_back(Archive(name));
    auto get = Kw("officer", StrCat("getkey ", users.back().serial, " ", blobs, "/", name, ".rec"));
    ASSERT_EQ(get.exit_code, 0) << get.output;
  }
  // Card 1 seals its share of each blob to card 3.
  const std::string shares = NewDir("shares-from-card-1");
  auto give = Recover(
      0, StrCat("--batch ", blobs, " --contribute-to ", kra_sha1_[2], " --out-dir ", shares));
  ASSERT_EQ(give.exit_code, 0) << give.output;
  std::vector<std::string> files;
  for (const auto& e : std::filesystem::directory_iterator(shares)) {
    files.push_back(e.path().filename().string());
  }
  ASSERT_EQ(files.size(), 3u);
  for (const Archived& u : users) {
    // NAME.SHA256(archive).kwshare, the digest computed here from the blob.
    const std::string der = tmp_.File(u.name + ".der");
    auto verify =
        RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", blobs, "/",
                          u.name, ".rec -CAfile ", daemon_->ca_cert_path(), " -out ", der));
    ASSERT_EQ(verify.exit_code, 0) << verify.output;
    auto digest = RunCommand(StrCat("openssl dgst -sha256 -r ", der));
    const std::string hex = digest.output.substr(0, 64);
    EXPECT_TRUE(std::filesystem::exists(StrCat(shares, "/", u.name, ".", hex, ".kwshare")))
        << u.name << " " << hex;
  }

  // Card 3 recovers the batch with them.
  const std::string out = NewDir("pfx");
  auto r = Recover(
      2, StrCat("--batch ", blobs, " --out-dir ", out, " --shares-dir ", shares, " -p 'pfx pw'"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(Contains(r.output, "Recovered 3 of 3")) << r.output;
  for (const Archived& u : users) ExpectDecrypts(StrCat(out, "/", u.name, ".pfx"), u);

  // A contribution renamed to another archive's name is named as a share of
  // another archive; the others still recover.
  const std::string mixed = NewDir("mixed");
  std::sort(files.begin(), files.end());  // alice, bob, carol
  std::filesystem::copy_file(StrCat(shares, "/", files[0]), StrCat(mixed, "/", files[1]));
  std::filesystem::copy_file(StrCat(shares, "/", files[2]), StrCat(mixed, "/", files[2]));
  const std::string out2 = NewDir("pfx2");
  auto m = Recover(
      2, StrCat("--batch ", blobs, " --out-dir ", out2, " --shares-dir ", mixed, " -p 'pfx pw'"));
  EXPECT_NE(m.exit_code, 0) << m.output;
  EXPECT_TRUE(Contains(m.output, "Recovered 1 of 3")) << m.output;
  EXPECT_TRUE(Contains(m.output, StrCat(files[1], ": it is a share of another archive")))
      << m.output;
  EXPECT_TRUE(Contains(m.output, "needs 2 shares and 1 were given")) << m.output;  // alice
  EXPECT_TRUE(std::filesystem::exists(StrCat(out2, "/carol.pfx")));
  EXPECT_FALSE(std::filesystem::exists(StrCat(out2, "/bob.pfx")));
}

}  // namespace
}  // namespace keywarden::testing
