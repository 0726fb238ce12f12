// Tokens, sessions and keys on real SoftHSM2 tokens, checked where possible
// with independent tools (pkcs11-tool from OpenSC).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include <openssl/rand.h>

#include "hsm/selftest.h"
#include "tests/hsm/token_fixture.h"

namespace keywarden::testing {
namespace {

using hsm::KeyAlgorithm;

class TokenKeysTest : public TokenTest {
 protected:
  CommandResult ListObjects(const std::string& label) {
    return RunCommand("pkcs11-tool --module " + SoftHsmFixture::module_path() + " --token-label " +
                      label + " --login --pin " + fixture_->token(label).user_pin +
                      " --list-objects");
  }
};

TEST_F(TokenKeysTest, GeneratedKeysAreSensitiveAndNeverExtractableForPkcs11Tool) {
  auto rsa = Generate(KeyAlgorithm::kRsa2048, "ca-signing-key");
  auto ec = Generate(KeyAlgorithm::kEcP256, "ec-signing-key");
  ASSERT_NE(rsa, nullptr);
  ASSERT_NE(ec, nullptr);
  auto r = ListObjects(SoftHsmFixture::kCaToken);
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // pkcs11-tool prints one block per object, headed by an unindented line.
  std::vector<std::string> blocks;
  size_t pos = 0;
  while (pos < r.output.size()) {
    size_t eol = r.output.find('\n', pos);
    if (eol == std::string::npos) eol = r.output.size();
    std::string line = r.output.substr(pos, eol - pos);
    if (!line.empty() && line[0] != ' ' && line[0] != '\t') blocks.emplace_back();
    if (!blocks.empty()) blocks.back() += line + "\n";
    pos = eol + 1;
  }
  for (const auto& key : {rsa, ec}) {
    const std::string* found = nullptr;
    for (const auto& b : blocks) {
      if (b.starts_with("Private Key Object") &&
          b.find("label:      " + key->label + "\n") != std::string::npos) {
        found = &b;
      }
    }
    ASSERT_NE(found, nullptr) << key->label << " not in:\n" << r.output;
    const std::string& block = *found;
    EXPECT_NE(block.find("ID:         " + HexString(key->id)), std::string::npos) << block;
    EXPECT_NE(block.find("Access:     sensitive, always sensitive, never extractable, local"),
              std::string::npos)
        << block;
    EXPECT_NE(block.find("Usage:      sign"), std::string::npos) << block;
  }
}

TEST_F(TokenKeysTest, KeyIdIsTheSha1OfThePublicKey) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "id-check");
  auto sha1 = hsm::PublicKeySha1(key->public_key.get());
  ASSERT_TRUE(sha1.ok());
  EXPECT_EQ(key->id, *sha1);
}

TEST_F(TokenKeysTest, DuplicateLabelIsRefused) {
  ASSERT_NE(Generate(KeyAlgorithm::kRsa2048, "only-once"), nullptr);
  hsm::KeySpec spec;
  spec.label = "only-once";
  auto again = hsm::GenerateKeyPair(ca_, spec);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_NE(again.status().message().find("only-once"), absl::string_view::npos);
}

TEST_F(TokenKeysTest, EcKeysCannotBeMadeForDecryption) {
  hsm::KeySpec spec;
  spec.algorithm = KeyAlgorithm::kEcP384;
  spec.label = "ec-decrypt";
  spec.usage.decrypt = true;
  auto key = hsm::GenerateKeyPair(ca_, spec);
  EXPECT_EQ(key.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TokenKeysTest, KeyIsFoundByUriLabelAndId) {
  auto made = Generate(KeyAlgorithm::kRsa3072, "find-me");
  auto by_label = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca;object=find-me;type=private");
  ASSERT_TRUE(by_label.ok()) << by_label.status();
  auto found = hsm::FindPrivateKey(ca_, *by_label);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ((*found)->private_handle, made->private_handle);
  EXPECT_EQ((*found)->bits, 3072u);

  std::string id_uri = "pkcs11:token=keywarden-ca;id=";
  for (uint8_t b : made->id) {
    char hex[4];
    std::snprintf(hex, sizeof hex, "%%%02x", b);
    id_uri += hex;
  }
  auto by_id = hsm::Pkcs11Uri::Parse(id_uri);
  ASSERT_TRUE(by_id.ok()) << by_id.status();
  auto found_id = hsm::FindPrivateKey(ca_, *by_id);
  ASSERT_TRUE(found_id.ok()) << found_id.status();
  EXPECT_EQ((*found_id)->private_handle, made->private_handle);
}

TEST_F(TokenKeysTest, EcKeyFoundAgainHasItsPublicPoint) {
  auto made = Generate(KeyAlgorithm::kEcP384, "ec-again");
  auto found = hsm::FindPrivateKey(ca_, "ec-again");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(EVP_PKEY_eq((*found)->public_key.get(), made->public_key.get()), 1);
}

TEST_F(TokenKeysTest, CertificateAndPublicKeyImportAsTokenObjects) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "with-cert");
  auto pkey = Load(key);
  auto cert = SelfSignedCa(crypto_->libctx(), pkey.get(), "Imported");
  auto h = hsm::ImportCertificate(*ca_, cert.get(), "with-cert-cert", key->id);
  ASSERT_TRUE(h.ok()) << h.status();
  auto soft = SoftwareRsaKey();
  auto pub = hsm::ImportPublicKey(*ca_, soft.get(), "kra-public", {});
  ASSERT_TRUE(pub.ok()) << pub.status();

  auto certs = hsm::FindCertificates(*ca_, "with-cert-cert", {});
  ASSERT_TRUE(certs.ok()) << certs.status();
  ASSERT_EQ(certs->size(), 1u);
  EXPECT_EQ(X509_cmp(certs->front().get(), cert.get()), 0);

  auto r = ListObjects(SoftHsmFixture::kCaToken);
  EXPECT_NE(r.output.find("Certificate Object; type = X.509 cert"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("label:      with-cert-cert"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("label:      kra-public"), std::string::npos) << r.output;

  auto dup = hsm::ImportCertificate(*ca_, cert.get(), "with-cert-cert", {});
  EXPECT_EQ(dup.status().code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(TokenKeysTest, EightThreadsSignFiveHundredTimesEachAllValid) {
  auto key = Generate(KeyAlgorithm::kRsa2048, "concurrent");
  auto pkey = Load(key);
  std::atomic<int> valid{0}, invalid{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        std::string msg = "thread " + std::to_string(t) + " message " + std::to_string(i);
        auto* m = reinterpret_cast<const unsigned char*>(msg.data());
        ossl::UniquePtr<EVP_MD_CTX> sctx(EVP_MD_CTX_new());
        size_t len = 512;
        std::vector<uint8_t> sig(len);
        if (EVP_DigestSignInit_ex(sctx.get(), nullptr, "SHA256", crypto_->libctx(), nullptr,
                                  pkey.get(), nullptr) != 1 ||
            EVP_DigestSign(sctx.get(), sig.data(), &len, m, msg.size()) != 1) {
          ++invalid;
          continue;
        }
        ossl::UniquePtr<EVP_MD_CTX> vctx(EVP_MD_CTX_new());
        bool ok = EVP_DigestVerifyInit_ex(vctx.get(), nullptr, "SHA256", nullptr, nullptr,
                                          key->public_key.get(), nullptr) == 1 &&
                  EVP_DigestVerify(vctx.get(), sig.data(), len, m, msg.size()) == 1;
        ++(ok ? valid : invalid);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(valid.load(), 4000);
  EXPECT_EQ(invalid.load(), 0);
  EXPECT_LE(ca_->open_sessions(), 32u);
}

TEST_F(TokenKeysTest, SessionPoolNeverExceedsItsBound) {
  ca_.reset();
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  options.pin = hsm::PinSource::File(fixture_->PinFile(SoftHsmFixture::kCaToken));
  options.token.max_sessions = 2;
  auto token = hsm::OpenToken(*uri, options);
  ASSERT_TRUE(token.ok()) << token.status();
  std::atomic<size_t> peak{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        {
          auto s = (*token)->Acquire();
          ASSERT_TRUE(s.ok());
          size_t now = (*token)->open_sessions();
          size_t prev = peak.load();
          while (now > prev && !peak.compare_exchange_weak(prev, now)) {
          }
        }
        // A token call leases its own session; holding one while making it
        // could deadlock a bounded pool, so the lease above is released first.
        auto random = (*token)->GenerateRandom(16);
        ASSERT_TRUE(random.ok());
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_LE(peak.load(), 2u);
  EXPECT_GE(peak.load(), 1u);
}

// --- bad input: each a clear error, never a crash -------------------------

TEST_F(TokenKeysTest, WrongPinIsPermissionDeniedAndNamesTheReason) {
  ca_.reset();
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=kra-card-1");
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  options.pin = hsm::PinSource::Value(hsm::SecretString("not-the-pin"));
  auto token = hsm::OpenToken(*uri, options);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_NE(token.status().message().find("CKR_PIN_INCORRECT"), absl::string_view::npos)
      << token.status();
  EXPECT_NE(token.status().message().find("kra-card-1"), absl::string_view::npos);
  EXPECT_EQ(token.status().message().find("not-the-pin"), absl::string_view::npos);
}

TEST_F(TokenKeysTest, UnknownTokenListsTheTokensPresent) {
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=no-such-token");
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  auto token = hsm::OpenToken(*uri, options);
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(token.status().message().find("no-such-token"), absl::string_view::npos);
  EXPECT_NE(token.status().message().find("kra-card-2"), absl::string_view::npos) << token.status();
}

TEST_F(TokenKeysTest, UnknownKeyIsNotFound) {
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca;object=missing-key");
  auto key = hsm::FindPrivateKey(ca_, *uri);
  ASSERT_FALSE(key.ok());
  EXPECT_EQ(key.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(key.status().message().find("missing-key"), absl::string_view::npos);
}

TEST_F(TokenKeysTest, UriWithoutObjectOrTokenIsRefused) {
  auto no_object = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
  EXPECT_EQ(hsm::FindPrivateKey(ca_, *no_object).status().code(),
            absl::StatusCode::kInvalidArgument);
  auto no_token = hsm::Pkcs11Uri::Parse("pkcs11:object=x");
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  EXPECT_EQ(hsm::OpenToken(*no_token, options).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TokenKeysTest, MissingModuleFileIsNotFound) {
  auto module = hsm::Module::Load("/nonexistent/libpkcs11.so");
  ASSERT_FALSE(module.ok());
  EXPECT_EQ(module.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(module.status().message().find("/nonexistent/libpkcs11.so"), absl::string_view::npos);
  auto by_name = hsm::Module::Load("no-such-p11kit-module");
  ASSERT_FALSE(by_name.ok());
  EXPECT_NE(by_name.status().message().find("no-such-p11kit-module"), absl::string_view::npos);
  auto not_a_module = hsm::Module::Load("/etc/hostname");
  ASSERT_FALSE(not_a_module.ok());
  EXPECT_NE(not_a_module.status().message().find("/etc/hostname"), absl::string_view::npos);
}

TEST_F(TokenKeysTest, ModuleLoadsByP11KitNameAsTheSameModule) {
  auto by_path = hsm::Module::Load(SoftHsmFixture::module_path());
  auto by_name = hsm::Module::Load("softhsm2");
  ASSERT_TRUE(by_path.ok()) << by_path.status();
  ASSERT_TRUE(by_name.ok()) << by_name.status();
  EXPECT_EQ(by_path->get(), by_name->get());
}

TEST_F(TokenKeysTest, TraceShowsCallsButNeverThePin) {
  ca_.reset();
  auto module = hsm::Module::Load(SoftHsmFixture::module_path());
  ASSERT_TRUE(module.ok());
  FILE* trace = std::tmpfile();
  (*module)->SetTrace(true, trace);
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=kra-card-3");
  auto token = hsm::Token::Open(*module, *uri);
  ASSERT_TRUE(token.ok());
  const std::string pin = fixture_->token(SoftHsmFixture::kKraCard3).user_pin;
  ASSERT_TRUE((*token)->Login(hsm::SecretString(pin)).ok());
  (*module)->SetTrace(false);
  std::fflush(trace);
  std::rewind(trace);
  std::string text;
  char buf[512];
  while (std::fgets(buf, sizeof buf, trace) != nullptr) text += buf;
  std::fclose(trace);
  EXPECT_NE(text.find("C_OpenSession = CKR_OK"), std::string::npos) << text;
  EXPECT_NE(text.find("C_Login = CKR_OK"), std::string::npos) << text;
  EXPECT_EQ(text.find(pin), std::string::npos) << text;
}

// hsm::Module's per-function statistics (the metrics keywardend exports):
// calls per function name, return values other than CKR_OK by CKR name,
// and latency buckets. The expected values are independent: PKCS#11's own
// return code for a slot that does not exist, and sleeps of a known length.
TEST_F(TokenKeysTest, PerFunctionStatsCountCallsErrorsByCkrAndLatency) {
  hsm::Module& module = ca_->module();
  auto stats_of = [&](const std::string& function) {
    for (const auto& f : module.function_stats()) {
      if (f.function == function) return f;
    }
    return hsm::Module::FunctionStats{function, 0, 0, {}, 0};
  };
  auto errors_of = [&](const std::string& function, const std::string& rv) -> uint64_t {
    for (const auto& e : module.error_counts()) {
      if (e.function == function && e.rv == rv) return e.count;
    }
    return 0;
  };
  // Signatures through the provider: C_SignInit once each.
  auto key = Generate(KeyAlgorithm::kRsa2048, "stats");
  auto pkey = Load(key);
  const auto init_before = stats_of("C_SignInit");
  const auto sign_before = stats_of("C_Sign");
  for (int i = 0; i < 10; ++i) {
    ossl::UniquePtr<EVP_MD_CTX> ctx(EVP_MD_CTX_new());
    size_t len = 512;
    std::vector<uint8_t> sig(len);
    const unsigned char msg[] = "stats";
    ASSERT_EQ(EVP_DigestSignInit_ex(ctx.get(), nullptr, "SHA256", crypto_->libctx(), nullptr,
                                    pkey.get(), nullptr),
              1);
    ASSERT_EQ(EVP_DigestSign(ctx.get(), sig.data(), &len, msg, sizeof msg), 1);
  }
  const auto init_after = stats_of("C_SignInit");
  const auto sign_after = stats_of("C_Sign");
  EXPECT_EQ(init_after.calls - init_before.calls, 10u);
  EXPECT_GE(sign_after.calls - sign_before.calls, 10u);
  EXPECT_EQ(sign_after.errors, sign_before.errors);
  // The histogram is cumulative and its last finite bucket never exceeds the count.
  ASSERT_EQ(sign_after.buckets.size(), hsm::Module::LatencyBuckets().size());
  for (size_t i = 1; i < sign_after.buckets.size(); ++i) {
    EXPECT_LE(sign_after.buckets[i - 1], sign_after.buckets[i]);
  }
  EXPECT_LE(sign_after.buckets.back(), sign_after.calls);
  EXPECT_GT(sign_after.seconds, sign_before.seconds);

  // An error by its CKR name: no token sits in slot 0xdeadbeef (PKCS#11:
  // CKR_SLOT_ID_INVALID, 0x03).
  const uint64_t slot_errors = errors_of("C_GetTokenInfo", "CKR_SLOT_ID_INVALID");
  CK_TOKEN_INFO info{};
  EXPECT_EQ(module.Call("C_GetTokenInfo", module.functions()->C_GetTokenInfo,
                        static_cast<CK_SLOT_ID>(0xdeadbeef), &info),
            static_cast<CK_RV>(0x03));
  EXPECT_EQ(errors_of("C_GetTokenInfo", "CKR_SLOT_ID_INVALID"), slot_errors + 1);

  // Latency: a call of ~30 ms lands above the 25 ms bound; a name PKCS#11
  // does not have is counted as "other".
  const auto& bounds = hsm::Module::LatencyBuckets();
  const size_t b25 =
      static_cast<size_t>(std::find(bounds.begin(), bounds.end(), 0.025) - bounds.begin());
  ASSERT_LT(b25, bounds.size());
  const auto other_before = stats_of("other");
  const CK_RV rv = module.Call("C_NotAFunction", [] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    return static_cast<CK_RV>(CKR_OK);
  });
  EXPECT_EQ(rv, static_cast<CK_RV>(CKR_OK));
  const auto other_after = stats_of("other");
  EXPECT_EQ(other_after.calls, other_before.calls + 1);
  EXPECT_GE(other_after.seconds - other_before.seconds, 0.030);
  const uint64_t fast_before = other_before.buckets.empty() ? 0 : other_before.buckets[b25];
  EXPECT_EQ(other_after.buckets[b25], fast_before) << "a 30 ms call counted at or below 25 ms";
}

// The daemon's archival self-test on a token whose pool lends one session
// ([hsm] max_sessions = 1): it passes (it never holds two sessions at once),
// and with RSA-3072 exchange keys the key pair it makes is 3072 bits.
TEST_F(TokenKeysTest, ArchivalSelfTestPassesWithOneSessionAndTheExchangeKeySize) {
  ca_.reset();
  auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
  hsm::OpenOptions options;
  options.default_module = SoftHsmFixture::module_path();
  options.pin = hsm::PinSource::File(fixture_->PinFile(SoftHsmFixture::kCaToken));
  options.token.max_sessions = 1;
  options.token.acquire_timeout = std::chrono::milliseconds(2000);
  auto token = hsm::OpenToken(*uri, options);
  ASSERT_TRUE(token.ok()) << token.status();
  hsm::SelfTestOptions st;
  st.archival_only = true;
  st.exchange_bits = 3072;
  const auto checks = hsm::RunSelfTest(*token, st);
  EXPECT_TRUE(hsm::SelfTestPassed(checks)) << hsm::SelfTestFailures(checks);
  EXPECT_EQ(hsm::SelfTestFailures(checks), "");
  bool pair_3072 = false, skipped_second_session = false;
  for (const auto& c : checks) {
    pair_3072 |=
        c.name == "RSA-3072 key pair (session object)" && c.result == hsm::CheckResult::kPass;
    skipped_second_session |=
        c.name == "key visible from another session" && c.result == hsm::CheckResult::kSkip;
  }
  EXPECT_TRUE(pair_3072);
  EXPECT_TRUE(skipped_second_session);
}

}  // namespace
}  // namespace keywarden::testing
