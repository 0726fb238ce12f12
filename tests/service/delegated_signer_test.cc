// signing::DelegatedSigner on real SoftHSM2 tokens, without gRPC: keys by
// alias on the CA token and on a second token, signatures checked in
// software, refusals and usage counters as audit records.
#include "service/signing/delegated_signer.h"

#include <atomic>
#include <mutex>
#include <thread>

#include <gtest/gtest.h>
#include <openssl/rsa.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "pki/certificate.h"
#include "service/errors.h"
#include "tests/hsm/token_fixture.h"

namespace keywarden::testing {
namespace {

using service::Config;
using service::SigningKeyConfig;
using service::signing::Algorithm;
using service::signing::DelegatedSigner;
using service::signing::Info;
using service::signing::kAlgorithms;
using service::signing::Scheme;

constexpr char kAlice[] = "CN=alice,O=Example";
constexpr char kBob[] = "CN=bob,O=Example";

struct AuditEntry {
  std::string principal, event;
  nlohmann::json details;
};

class DelegatedSignerTest : public TokenTest {
 protected:
  void SetUp() override {
    TokenTest::SetUp();
    config_.hsm.module = SoftHsmFixture::module_path();
    config_.hsm.max_sessions = 8;
  }

  void TearDown() override {
    signer_.reset();
    TokenTest::TearDown();
  }

  SigningKeyConfig Key(const std::string& alias, const std::string& uri,
                       std::vector<std::string> algorithms,
                       std::vector<std::string> principals = {kAlice}) {
    SigningKeyConfig k;
    k.alias = alias;
    k.key = uri;
    k.algorithms = std::move(algorithms);
    k.principals = std::move(principals);
    return k;
  }

  // A key made on the token under `label` and its self-signed CA
  // certificate (CN=`cn`, signed on the token) in `cert`; nullptr if either
  // could not be made.
  std::shared_ptr<hsm::TokenKey> TokenCa(hsm::KeyAlgorithm algorithm, const std::string& label,
                                         const std::string& cn, ossl::UniquePtr<X509>* cert) {
    auto key = Generate(algorithm, label);
    if (key == nullptr) return nullptr;
    auto pkey = Load(key);
    *cert = SelfSignedCa(crypto_->libctx(), pkey.get(), cn);
    return *cert ? key : nullptr;
  }

  // The "Device" template of the issuing tests: RSA or EC of at least 256
  // bits, one day.
  static service::TemplateConfig DeviceTemplate() {
    service::TemplateConfig t;
    t.name = "Device";
    t.key_types = {"rsa", "ec"};
    t.min_key_bits = 256;
    t.validity = std::chrono::hours(24);
    return t;
  }

  absl::Status Open() {
    auto signer = DelegatedSigner::Open(
        config_, crypto_, {ca_},
        [this](const std::string& p, const std::string& e, const std::string& d) {
          std::lock_guard<std::mutex> lock(audit_mu_);
          audit_.push_back({p, e, nlohmann::json::parse(d)});
        },
        [this] { return now_.load(); });
    if (!signer.ok()) return signer.status();
    signer_ = std::move(*signer);
    return absl::OkStatus();
  }

  std::vector<AuditEntry> Events(const std::string& event) {
    std::lock_guard<std::mutex> lock(audit_mu_);
    std::vector<AuditEntry> out;
    for (const auto& a : audit_) {
      if (a.event == event) out.push_back(a);
    }
    return out;
  }

  // The RSA and EC keys most tests use, on the CA token.
  void OpenRsaAndEc() {
    ASSERT_NE(Generate(hsm::KeyAlgorithm::kRsa2048, "rsa-key"), nullptr);
    ASSERT_NE(Generate(hsm::KeyAlgorithm::kEcP256, "ec-key"), nullptr);
    config_.signing.keys = {
        Key("rsa", "pkcs11:token=keywarden-ca;object=rsa-key",
            {"rsa-pkcs1-sha256", "rsa-pkcs1-sha384", "rsa-pkcs1-sha512", "rsa-pss-sha256",
             "rsa-pss-sha384", "rsa-pss-sha512"}),
        Key("ec", "pkcs11:token=keywarden-ca;object=ec-key",
            {"ecdsa-sha256", "ecdsa-sha384", "ecdsa-sha512"}, {kAlice, kBob}),
    };
    ASSERT_TRUE(Open().ok());
  }

  Config config_;
  std::unique_ptr<DelegatedSigner> signer_;
  std::mutex audit_mu_;
  std::vector<AuditEntry> audit_;
  std::atomic<int64_t> now_{1700000000};
};

std::vector<uint8_t> Hash(const char* md, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, EVP_get_digestbyname(md), nullptr);
  return std::vector<uint8_t>(out, out + len);
}

std::span<const uint8_t> Span(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

bool Verifies(EVP_PKEY* pub, Algorithm a, std::span<const uint8_t> digest, const std::string& sig,
              int salt = -1) {
  const auto& info = Info(a);
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pub, nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1) return false;
  if (info.scheme != Scheme::kEcdsa &&
      EVP_PKEY_CTX_set_rsa_padding(
          ctx.get(), info.scheme == Scheme::kRsaPss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) !=
          1) {
    return false;
  }
  if (info.scheme == Scheme::kRsaPss &&
      EVP_PKEY_CTX_set_rsa_pss_saltlen(
          ctx.get(), salt >= 0 ? salt : static_cast<int>(info.digest_size)) != 1) {
    return false;
  }
  if (EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_get_digestbyname(info.digest)) != 1)
    return false;
  const bool ok = EVP_PKEY_verify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()),
                                  sig.size(), digest.data(), digest.size()) == 1;
  ERR_clear_error();
  return ok;
}

TEST_F(DelegatedSignerTest, EveryAlgorithmSignsDigestsAndDataThatVerifyInSoftware) {
  OpenRsaAndEc();
  constexpr std::string_view kData = "delegated signing unit test";
  for (const auto& a : kAlgorithms) {
    SCOPED_TRACE(a.name);
    const bool ec = a.scheme == Scheme::kEcdsa;
    const auto* key = signer_->Find(ec ? "ec" : "rsa");
    ASSERT_NE(key, nullptr);
    EVP_PKEY* pub = key->token_key->public_key.get();
    const auto digest = Hash(a.digest, kData);
    std::string by_digest, by_data;
    ASSERT_TRUE(
        signer_->SignDigest(kAlice, key->alias, a.id, digest, std::nullopt, &by_digest).ok());
    ASSERT_TRUE(
        signer_->SignData(kAlice, key->alias, a.id, Span(kData), std::nullopt, &by_data).ok());
    EXPECT_TRUE(Verifies(pub, a.id, digest, by_digest));
    EXPECT_TRUE(Verifies(pub, a.id, digest, by_data));
    // The checks can fail: another digest does not verify.
    EXPECT_FALSE(Verifies(pub, a.id, Hash(a.digest, "other data"), by_digest));
    if (a.scheme == Scheme::kRsaPss) {
      std::string salted;
      ASSERT_TRUE(signer_->SignDigest(kAlice, "rsa", a.id, digest, 7, &salted).ok());
      EXPECT_TRUE(Verifies(pub, a.id, digest, salted, 7));
      EXPECT_FALSE(Verifies(pub, a.id, digest, salted));  // not with the default salt
    }
  }
}

TEST_F(DelegatedSignerTest, RefusalsCarryTheirHresultAndAreAuditedOneByOne) {
  OpenRsaAndEc();
  const auto digest = Hash("SHA256", "x");
  std::string sig;
  struct Case {
    std::string principal, alias;
    std::optional<Algorithm> alg;
    std::vector<uint8_t> digest;
    std::optional<int> salt;
    uint32_t hresult;
  };
  const std::vector<Case> cases = {
      {kAlice, "missing", Algorithm::kEcdsaSha256, digest, std::nullopt, 0x80090016},
      {"CN=mallory", "ec", Algorithm::kEcdsaSha256, digest, std::nullopt, 0x80070005},
      {kBob, "rsa", Algorithm::kRsaPkcs1Sha256, digest, std::nullopt, 0x80070005},
      {kAlice, "ec", Algorithm::kRsaPkcs1Sha256, digest, std::nullopt, 0x80090008},
      {kAlice, "ec", std::nullopt, digest, std::nullopt, 0x80090008},
      {kAlice, "ec", Algorithm::kEcdsaSha384, digest, std::nullopt, 0x80090004},
      {kAlice, "ec", Algorithm::kEcdsaSha256, {}, std::nullopt, 0x80090004},
      {kAlice, "rsa", Algorithm::kRsaPkcs1Sha256, digest, 20, 0x80070057},
      {kAlice, "rsa", Algorithm::kRsaPssSha256, digest, -1, 0x80070057},
  };
  for (const Case& c : cases) {
    absl::Status st = signer_->SignDigest(c.principal, c.alias, c.alg, c.digest, c.salt, &sig);
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(service::HResultOf(st), c.hresult) << st;
  }
  auto refused = Events("signing.refused");
  ASSERT_EQ(refused.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(refused[i].principal, cases[i].principal);
    EXPECT_EQ(refused[i].details["alias"], cases[i].alias);
    EXPECT_EQ(refused[i].details["hresult"].get<uint32_t>(), cases[i].hresult);
    EXPECT_EQ(refused[i].details["rpc"], "SignDigest");
  }
  // Nothing was signed, so nothing is counted.
  signer_->FlushUsage();
  EXPECT_TRUE(Events("signing.usage").empty());
}

TEST_F(DelegatedSignerTest, UsageIsCountedPerPrincipalKeyAndAlgorithmAndFlushedOnce) {
  OpenRsaAndEc();
  std::string sig;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(signer_
                    ->SignDigest(kAlice, "ec", Algorithm::kEcdsaSha256, Hash("SHA256", "a"),
                                 std::nullopt, &sig)
                    .ok());
  }
  ASSERT_TRUE(
      signer_->SignData(kAlice, "ec", Algorithm::kEcdsaSha512, Span("b"), std::nullopt, &sig).ok());
  ASSERT_TRUE(
      signer_->SignData(kBob, "ec", Algorithm::kEcdsaSha256, Span("c"), std::nullopt, &sig).ok());
  ASSERT_TRUE(
      signer_->SignDigest(kAlice, "rsa", Algorithm::kRsaPssSha256, Hash("SHA256", "d"), 0, &sig)
          .ok());
  EXPECT_TRUE(Events("signing.usage").empty());  // not one record per signature
  now_ += 60;
  signer_->FlushUsage();
  auto usage = Events("signing.usage");
  ASSERT_EQ(usage.size(), 3u);  // (alice, rsa), (alice, ec), (bob, ec)
  std::map<std::pair<std::string, std::string>, nlohmann::json> by;
  for (const auto& u : usage) by[{u.principal, u.details["alias"].get<std::string>()}] = u.details;
  const auto key = [](const char* who, const char* alias) {
    return std::pair<std::string, std::string>(who, alias);
  };
  const auto& alice_ec = by[key(kAlice, "ec")];
  EXPECT_EQ(alice_ec["signatures"], 4);
  EXPECT_EQ(alice_ec["algorithms"]["ecdsa-sha256"], 3);
  EXPECT_EQ(alice_ec["algorithms"]["ecdsa-sha512"], 1);
  EXPECT_EQ(alice_ec["from"], 1700000000);
  EXPECT_EQ(alice_ec["to"], 1700000060);
  EXPECT_EQ(by[key(kBob, "ec")]["signatures"], 1);
  EXPECT_EQ(by[key(kAlice, "rsa")]["algorithms"]["rsa-pss-sha256"], 1);
  // The counters start again from zero.
  signer_->FlushUsage();
  EXPECT_EQ(Events("signing.usage").size(), 3u);
}

TEST_F(DelegatedSignerTest, ConcurrentSignaturesAreAllValidAndAllCounted) {
  OpenRsaAndEc();
  constexpr int kThreads = 8, kEach = 150;
  EVP_PKEY* pub = signer_->Find("ec")->token_key->public_key.get();
  std::atomic<int> good{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const char* who = t % 2 == 0 ? kAlice : kBob;
      for (int i = 0; i < kEach; ++i) {
        const auto digest = Hash("SHA256", StrCat(t, "/", i));
        std::string sig;
        if (signer_->SignDigest(who, "ec", Algorithm::kEcdsaSha256, digest, std::nullopt, &sig)
                .ok() &&
            Verifies(pub, Algorithm::kEcdsaSha256, digest, sig)) {
          ++good;
        }
      }
    });
  }
  // Flushing while they sign loses nothing.
  for (int i = 0; i < 20; ++i) {
    signer_->FlushUsage();
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  for (auto& t : threads) t.join();
  signer_->Stop();
  EXPECT_EQ(good.load(), kThreads * kEach);
  int64_t counted = 0;
  for (const auto& u : Events("signing.usage")) counted += u.details["signatures"].get<int64_t>();
  EXPECT_EQ(counted, kThreads * kEach);
}

// Batches from several threads at once, more threads than helpers (four
// helpers configured whatever the machine's cores): every signature is in
// its digest's place and verifies, each is counted once, and a stop while
// batches run loses none of them.
TEST_F(DelegatedSignerTest, ConcurrentBatchesSignEveryDigestInPlaceAndCountEach) {
  config_.server.threads = 5;
  OpenRsaAndEc();
  constexpr int kThreads = 6, kBatches = 6, kDigests = 40;
  std::atomic<int> good{0}, bad{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const bool rsa = t % 3 == 0;
      const char* alias = rsa ? "rsa" : "ec";
      const Algorithm alg = rsa ? Algorithm::kRsaPssSha384 : Algorithm::kEcdsaSha256;
      EVP_PKEY* pub = signer_->Find(alias)->token_key->public_key.get();
      for (int b = 0; b < kBatches; ++b) {
        std::vector<std::vector<uint8_t>> digests;
        for (int i = 0; i < kDigests; ++i) {
          digests.push_back(Hash(Info(alg).digest, StrCat(t, "/", b, "/", i)));
        }
        std::vector<std::span<const uint8_t>> spans(digests.begin(), digests.end());
        std::vector<std::string> sigs;
        if (!signer_->SignDigests(kAlice, alias, alg, spans, std::nullopt, 256, &sigs).ok() ||
            sigs.size() != digests.size()) {
          ++failed;
          continue;
        }
        for (size_t i = 0; i < sigs.size(); ++i) {
          (Verifies(pub, alg, digests[i], sigs[i]) ? good : bad)++;
        }
        // A signature in another digest's place does not verify.
        if (Verifies(pub, alg, digests[0], sigs[1])) ++bad;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(failed.load(), 0);
  EXPECT_EQ(bad.load(), 0);
  EXPECT_EQ(good.load(), kThreads * kBatches * kDigests);

  // Stop while two batches run: they finish on their callers' threads.
  std::vector<std::thread> late;
  std::atomic<int> late_good{0};
  for (int t = 0; t < 2; ++t) {
    late.emplace_back([&] {
      std::vector<std::vector<uint8_t>> digests(100, Hash("SHA256", "late"));
      std::vector<std::span<const uint8_t>> spans(digests.begin(), digests.end());
      std::vector<std::string> sigs;
      if (signer_
              ->SignDigests(kAlice, "ec", Algorithm::kEcdsaSha256, spans, std::nullopt, 256, &sigs)
              .ok() &&
          sigs.size() == 100) {
        ++late_good;
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(2));
  signer_->Stop();
  for (auto& t : late) t.join();
  EXPECT_EQ(late_good.load(), 2);
  signer_->FlushUsage();
  int64_t counted = 0;
  for (const auto& u : Events("signing.usage")) counted += u.details["signatures"].get<int64_t>();
  EXPECT_EQ(counted, kThreads * kBatches * kDigests + 2 * 100);
}

TEST_F(DelegatedSignerTest, KeysShareTheCaTokenAndAnotherTokenLogsInOnce) {
  ASSERT_NE(Generate(hsm::KeyAlgorithm::kEcP256, "on-ca"), nullptr);
  auto card = OpenToken(SoftHsmFixture::kKraCard1);
  ASSERT_NE(card, nullptr);
  for (const char* label : {"card-a", "card-b"}) {
    hsm::KeySpec spec;
    spec.algorithm = hsm::KeyAlgorithm::kEcP256;
    spec.label = label;
    ASSERT_TRUE(hsm::GenerateKeyPair(card, spec).ok());
  }
  card.reset();
  SigningKeyConfig a = Key("a", "pkcs11:token=kra-card-1;object=card-a", {"ecdsa-sha256"});
  a.pin_source = "file:" + fixture_->PinFile(SoftHsmFixture::kKraCard1);
  config_.signing.keys = {Key("ca", "pkcs11:token=keywarden-ca;object=on-ca", {"ecdsa-sha256"}), a,
                          // No PIN needed: the token is already open for "a".
                          Key("b", "pkcs11:token=kra-card-1;object=card-b", {"ecdsa-sha256"})};
  ASSERT_TRUE(Open().ok());
  ASSERT_EQ(signer_->tokens().size(), 2u);
  EXPECT_EQ(signer_->tokens()[0], ca_);
  EXPECT_EQ(signer_->tokens()[1]->label(), "kra-card-1");
  EXPECT_EQ(signer_->Find("a")->token_key->token, signer_->Find("b")->token_key->token);
  for (const char* alias : {"ca", "a", "b"}) {
    std::string sig;
    const auto digest = Hash("SHA256", alias);
    ASSERT_TRUE(
        signer_->SignDigest(kAlice, alias, Algorithm::kEcdsaSha256, digest, std::nullopt, &sig)
            .ok())
        << alias;
    EXPECT_TRUE(Verifies(signer_->Find(alias)->token_key->public_key.get(), Algorithm::kEcdsaSha256,
                         digest, sig));
  }
}

// A PKCS#10 request (DER) for a new EC P-256 key with subject CN=`cn`.
std::vector<uint8_t> DeviceCsr(const char* cn) {
  ossl::UniquePtr<EVP_PKEY> device(EVP_EC_gen("P-256"));
  ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
  if (!device || !req || X509_REQ_set_pubkey(req.get(), device.get()) != 1 ||
      X509_NAME_add_entry_by_txt(X509_REQ_get_subject_name(req.get()), "CN", MBSTRING_UTF8,
                                 reinterpret_cast<const unsigned char*>(cn), -1, -1, 0) != 1 ||
      X509_REQ_sign(req.get(), device.get(), EVP_sha256()) <= 0) {
    return {};
  }
  unsigned char* der = nullptr;
  const int len = i2d_X509_REQ(req.get(), &der);
  if (len <= 0) return {};
  std::vector<uint8_t> csr(der, der + len);
  OPENSSL_free(der);
  return csr;
}

TEST_F(DelegatedSignerTest, OpenRefusesWhatItCannotUseNamingTheAlias) {
  ASSERT_NE(Generate(hsm::KeyAlgorithm::kRsa2048, "rsa-key"), nullptr);
  struct Case {
    SigningKeyConfig key;
    std::string words;
  };
  SigningKeyConfig wrong_cert =
      Key("c", "pkcs11:token=keywarden-ca;object=rsa-key", {"rsa-pkcs1-sha256"});
  auto other = SoftwareRsaKey();
  auto other_cert = SelfSignedCa(nullptr, other.get(), "someone else");
  WriteFile(tmp_.File("other.pem"), ToPem(other_cert.get()));
  wrong_cert.certificate = tmp_.File("other.pem");
  SigningKeyConfig templates_no_cert =
      Key("t", "pkcs11:token=keywarden-ca;object=rsa-key", {"rsa-pkcs1-sha256"});
  templates_no_cert.templates = {"User"};
  config_.templates.push_back({});
  config_.templates.back().name = "User";
  const std::vector<Case> cases = {
      {Key("x", "pkcs11:token=keywarden-ca;object=no-such-key", {"rsa-pkcs1-sha256"}),
       "signing key \"x\""},
      {Key("y", "pkcs11:token=no-such-token;object=k", {"rsa-pkcs1-sha256"}),
       "signing key \"y\": no token matches"},
      {Key("z", "pkcs11:token=keywarden-ca;object=rsa-key", {"ecdsa-sha384"}),
       "algorithm ecdsa-sha384 needs an EC key"},
      {Key("p", "pkcs11:token=kra-card-2;object=k", {"ecdsa-sha256"}), "give the key a pin_source"},
      {wrong_cert, "is not for RSA-2048 key \"rsa-key\""},
      {templates_no_cert, "offers templates but has no certificate"},
  };
  for (const Case& c : cases) {
    config_.signing.keys = {c.key};
    absl::Status st = Open();
    EXPECT_FALSE(st.ok()) << c.words;
    EXPECT_NE(st.message().find(c.words), absl::string_view::npos) << st;
  }
}

TEST_F(DelegatedSignerTest, IssuesUnderATemplateWithTheAliasCertificateAsIssuer) {
  ossl::UniquePtr<X509> ca_cert;
  auto key = TokenCa(hsm::KeyAlgorithm::kEcP256, "issuing", "Delegated Issuing CA", &ca_cert);
  ASSERT_NE(key, nullptr);
  // On the token beside the key: the signer finds it there.
  ASSERT_TRUE(hsm::ImportCertificate(*ca_, ca_cert.get(), "issuing", key->id).ok());
  service::TemplateConfig t = DeviceTemplate();
  t.extended_key_usage = {"clientAuth"};
  config_.templates = {t};
  SigningKeyConfig k =
      Key("issuing", "pkcs11:token=keywarden-ca;object=issuing", {"ecdsa-sha384", "ecdsa-sha256"});
  k.templates = {"Device"};
  config_.signing.keys = {k};
  now_ = time(nullptr);
  ASSERT_TRUE(Open().ok());

  const std::vector<uint8_t> csr = DeviceCsr("device 7");
  ASSERT_FALSE(csr.empty());

  auto issued = signer_->IssueCertificate(kAlice, "issuing", "Device", csr, "");
  ASSERT_TRUE(issued.ok()) << issued.status();
  X509* cert = issued->certificate.get();
  EXPECT_EQ(X509_verify(cert, key->public_key.get()), 1);
  EXPECT_EQ(X509_NAME_cmp(X509_get_issuer_name(cert), X509_get_subject_name(ca_cert.get())), 0);
  // Signed with the alias's first algorithm.
  EXPECT_EQ(X509_get_signature_nid(cert), NID_ecdsa_with_SHA384);
  ASSERT_EQ(issued->chain.size(), 1u);
  EXPECT_EQ(issued->chain[0], pki::CertificateDer(ca_cert.get()));
  EXPECT_EQ(pki::FormatName(X509_get_subject_name(cert)), "CN=device 7");

  auto unknown = signer_->IssueCertificate(kAlice, "issuing", "User", csr, "");
  EXPECT_EQ(service::HResultOf(unknown.status()), 0x80094800u) << unknown.status();
  auto nobody = signer_->IssueCertificate(kBob, "issuing", "Device", csr, "");
  EXPECT_EQ(service::HResultOf(nobody.status()), 0x80070005u) << nobody.status();
  ASSERT_EQ(Events("signing.certificate_issued").size(), 1u);
  EXPECT_EQ(Events("signing.refused").size(), 2u);
}

// An alias of this CA's own key ([ca] certificate's key): never a raw
// signature (refused at load without templates, refused per call with
// E_ACCESSDENIED); it issues through templates only, and each certificate
// is handed to the recorder before it leaves -- without a recorder, or
// when the recorder fails, nothing is issued.
TEST_F(DelegatedSignerTest, TheCasOwnKeyNeverSignsRawAndWhatItIssuesIsRecordedFirst) {
  ossl::UniquePtr<X509> ca_cert;
  auto key = TokenCa(hsm::KeyAlgorithm::kRsa2048, "this-ca", "This CA", &ca_cert);
  ASSERT_NE(key, nullptr);
  WriteFile(tmp_.File("ca.pem"), ToPem(ca_cert.get()));
  config_.ca.certificate = tmp_.File("ca.pem");
  config_.templates = {DeviceTemplate()};
  SigningKeyConfig k = Key("ca", "pkcs11:token=keywarden-ca;object=this-ca", {"rsa-pkcs1-sha256"});
  config_.signing.keys = {k};
  absl::Status refused = Open();
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("is this CA's own signing key"), absl::string_view::npos)
      << refused;

  k.templates = {"Device"};
  k.certificate = tmp_.File("ca.pem");
  config_.signing.keys = {k};
  now_ = time(nullptr);
  ASSERT_TRUE(Open().ok());
  const std::vector<uint8_t> digest = Hash("SHA256", "a TBSCertificate, say");
  std::string sig;
  absl::Status raw =
      signer_->SignDigest(kAlice, "ca", Algorithm::kRsaPkcs1Sha256, digest, std::nullopt, &sig);
  EXPECT_EQ(service::HResultOf(raw), 0x80070005u) << raw;
  EXPECT_NE(raw.message().find("is this CA's own key"), absl::string_view::npos) << raw;
  EXPECT_TRUE(sig.empty());
  raw =
      signer_->SignData(kAlice, "ca", Algorithm::kRsaPkcs1Sha256, Span("data"), std::nullopt, &sig);
  EXPECT_EQ(service::HResultOf(raw), 0x80070005u) << raw;
  EXPECT_TRUE(sig.empty());

  const std::vector<uint8_t> csr = DeviceCsr("device 9");
  ASSERT_FALSE(csr.empty());

  // No recorder: refused before anything is signed.
  auto unrecorded = signer_->IssueCertificate(kAlice, "ca", "Device", csr, "");
  ASSERT_FALSE(unrecorded.ok());
  EXPECT_NE(unrecorded.status().message().find("nothing records"), absl::string_view::npos)
      << unrecorded.status();

  // The recorder sees each certificate before it is returned; its refusal
  // (with an HRESULT) is the caller's answer and audited, its fault is passed on.
  std::vector<std::string> recorded;
  absl::Status next = absl::OkStatus();
  signer_->SetIssuanceRecorder([&](const DelegatedSigner::Issuance& i) {
    recorded.push_back(StrCat(i.principal, " ", i.alias, " ", i.template_name, " ",
                              pki::FormatName(X509_get_subject_name(i.certificate)), " ",
                              i.request.size() == csr.size()));
    return next;
  });
  auto issued = signer_->IssueCertificate(kAlice, "ca", "Device", csr, "");
  ASSERT_TRUE(issued.ok()) << issued.status();
  EXPECT_EQ(X509_verify(issued->certificate.get(), key->public_key.get()), 1);
  ASSERT_EQ(recorded.size(), 1u);
  EXPECT_EQ(recorded[0], StrCat(kAlice, " ca Device CN=device 9 true"));
  // The audit record is the recorder's to write (in its transaction).
  EXPECT_TRUE(Events("signing.certificate_issued").empty());

  next = service::Error(service::hresult::kKeyExists, "held by someone else");
  auto owned = signer_->IssueCertificate(kAlice, "ca", "Device", csr, "");
  EXPECT_EQ(service::HResultOf(owned.status()), 0x80092005u) << owned.status();
  next = absl::UnavailableError("the CA database is down");
  auto down = signer_->IssueCertificate(kAlice, "ca", "Device", csr, "");
  EXPECT_EQ(down.status().code(), absl::StatusCode::kUnavailable) << down.status();
  EXPECT_EQ(recorded.size(), 3u);
  // Refused: the two raw signatures and the key held by someone else.
  EXPECT_EQ(Events("signing.refused").size(), 3u);
}

}  // namespace
}  // namespace keywarden::testing
