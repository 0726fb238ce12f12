// Delegated signing against a real keywardend: keys made by the real
// `keywarden ceremony root` on the CA token and on a second token (a KRA
// card), signatures checked with the openssl command line and in-process,
// certificates with `openssl verify`, every refusal and the usage counters
// read back from the audit log, and the Python grpcio client.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "keywarden/v1/signing.grpc.pb.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"

#ifndef KEYWARDEN_CLI
#error "KEYWARDEN_CLI must be the path of keywarden"
#endif
#ifndef KEYWARDEN_PROTO_DIR
#error "KEYWARDEN_PROTO_DIR must be the proto/ directory"
#endif
#ifndef KEYWARDEN_PY_SIGN
#error "KEYWARDEN_PY_SIGN must be the path of tests/python/keywarden_sign.py"
#endif

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

constexpr char kSigner[] = "CN=signer,O=keywarden test";
constexpr char kSigner2[] = "CN=signer2,O=keywarden test";

struct Alg {
  v1::SignatureAlgorithm id;
  const char* name;    // configuration / openssl digest suffix
  const char* digest;  // openssl digest name
  size_t size;
  bool pss;
  bool ec;
};
const Alg kRsaAlgs[] = {
    {v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256, "rsa-pkcs1-sha256", "sha256", 32, false, false},
    {v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA384, "rsa-pkcs1-sha384", "sha384", 48, false, false},
    {v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA512, "rsa-pkcs1-sha512", "sha512", 64, false, false},
    {v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256, "rsa-pss-sha256", "sha256", 32, true, false},
    {v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA384, "rsa-pss-sha384", "sha384", 48, true, false},
    {v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA512, "rsa-pss-sha512", "sha512", 64, true, false},
};
const Alg kEcAlgs[] = {
    {v1::SIGNATURE_ALGORITHM_ECDSA_SHA256, "ecdsa-sha256", "sha256", 32, false, true},
    {v1::SIGNATURE_ALGORITHM_ECDSA_SHA384, "ecdsa-sha384", "sha384", 48, false, true},
    {v1::SIGNATURE_ALGORITHM_ECDSA_SHA512, "ecdsa-sha512", "sha512", 64, false, true},
};

std::string Digest(const char* name, const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, EVP_get_digestbyname(name), nullptr);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string Slurp(const std::string& path) {
  auto bytes = ReadFile(path);
  return std::string(bytes.begin(), bytes.end());
}

std::string Base64Decode(const std::string& b64) {
  std::string out((b64.size() / 4 + 1) * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                reinterpret_cast<const unsigned char*>(b64.data()),
                                static_cast<int>(b64.size()));
  if (n < 0) return {};
  size_t len = static_cast<size_t>(n);
  if (!b64.empty() && b64.back() == '=') --len;
  if (b64.size() > 1 && b64[b64.size() - 2] == '=') --len;
  out.resize(len);
  return out;
}

ossl::UniquePtr<EVP_PKEY> PublicKeyFromDer(const std::string& der) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  return ossl::UniquePtr<EVP_PKEY>(d2i_PUBKEY(nullptr, &p, static_cast<long>(der.size())));
}

ossl::UniquePtr<X509> CertFromDer(const std::string& der) {
  const unsigned char* p = reinterpret_cast<const unsigned char*>(der.data());
  return ossl::UniquePtr<X509>(d2i_X509(nullptr, &p, static_cast<long>(der.size())));
}

// In-process check of a digest signature with OpenSSL's default provider.
bool VerifiesDigest(EVP_PKEY* pub, const Alg& a, const std::string& digest, const std::string& sig,
                    int salt = -1) {
  ossl::UniquePtr<EVP_PKEY_CTX> ctx(EVP_PKEY_CTX_new_from_pkey(nullptr, pub, nullptr));
  if (!ctx || EVP_PKEY_verify_init(ctx.get()) != 1) return false;
  if (!a.ec) {
    if (EVP_PKEY_CTX_set_rsa_padding(ctx.get(),
                                     a.pss ? RSA_PKCS1_PSS_PADDING : RSA_PKCS1_PADDING) != 1) {
      return false;
    }
    if (a.pss && EVP_PKEY_CTX_set_rsa_pss_saltlen(
                     ctx.get(), salt >= 0 ? salt : static_cast<int>(a.size)) != 1) {
      return false;
    }
  }
  if (EVP_PKEY_CTX_set_signature_md(ctx.get(), EVP_get_digestbyname(a.digest)) != 1) return false;
  return EVP_PKEY_verify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                         reinterpret_cast<const unsigned char*>(digest.data()), digest.size()) == 1;
}

// Makes the signing keys with the real ceremony and appends [signing] to
// the daemon's configuration:
//   rsa   RSA-2048 on the CA token, every RSA algorithm, signer; template User
//   ec    EC P-256 on the CA token, every ECDSA algorithm, signer + signer2;
//         template User; certificate from a file
//   card  RSA-2048 on KRA card 1 (its own PIN), rsa-pss-sha256 only, signer2
absl::Status MakeSigningKeys(DaemonHarness& h, const std::string& extra_key_toml) {
  const std::string module = SoftHsmFixture::module_path();
  auto ceremony = [&](const std::string& token, const std::string& label, const char* alg,
                      const std::string& cn) -> absl::Status {
    auto r = RunCommand(StrCat("KEYWARDEN_PKCS11_MODULE=", module, " ", KEYWARDEN_CLI,
                               " ceremony root --token pkcs11:token=", token,
                               " --pin-source file:", h.tokens().PinFile(token), " --key-label ",
                               label, " --key-algorithm ", alg, " --subject 'CN=", cn,
                               ",O=keywarden test' --out ", h.dir().File(label + ".pem")));
    if (r.exit_code != 0) return absl::InternalError("ceremony " + label + ": " + r.output);
    return absl::OkStatus();
  };
  if (auto st = ceremony("keywarden-ca", "sign-rsa", "rsa2048", "Delegated RSA CA"); !st.ok())
    return st;
  if (auto st = ceremony("keywarden-ca", "sign-ec", "ec-p256", "Delegated EC CA"); !st.ok())
    return st;
  if (auto st = ceremony("kra-card-1", "sign-card", "rsa2048", "Card Signer"); !st.ok()) return st;
  std::string toml =
      StrCat("\n[signing]\naudit_interval = \"1s\"\n\n", "[[signing.keys]]\nalias = \"rsa\"\n",
             "key = \"pkcs11:token=keywarden-ca;object=sign-rsa;type=private\"\n",
             "algorithms = [\"rsa-pkcs1-sha256\", \"rsa-pkcs1-sha384\", \"rsa-pkcs1-sha512\", ",
             "\"rsa-pss-sha256\", \"rsa-pss-sha384\", \"rsa-pss-sha512\"]\n", "principals = [\"",
             kSigner, "\"]\ntemplates = [\"User\"]\n\n", "[[signing.keys]]\nalias = \"ec\"\n",
             "key = \"pkcs11:token=keywarden-ca;object=sign-ec;type=private\"\n",
             "certificate = \"sign-ec.pem\"\n",
             "algorithms = [\"ecdsa-sha256\", \"ecdsa-sha384\", \"ecdsa-sha512\"]\n",
             "principals = [\"", kSigner, "\", \"", kSigner2, "\"]\ntemplates = [\"User\"]\n\n",
             "[[signing.keys]]\nalias = \"card\"\n",
             "key = \"pkcs11:token=kra-card-1;object=sign-card;type=private\"\n",
             "pin_source = \"file:", h.tokens().PinFile("kra-card-1"),
             "\"\nalgorithms = [\"rsa-pss-sha256\"]\n", "principals = [\"", kSigner2, "\"]\n",
             extra_key_toml);
  std::ofstream f(h.config_path(), std::ios::app);
  f << toml;
  return f.good() ? absl::OkStatus() : absl::InternalError("append to the configuration");
}

class SigningTest : public ::testing::Test {
 protected:
  void SetUp() override { Start(); }

  void Start(const std::string& extra_key_toml = "") {
    DaemonHarness::Options options;
    options.before_launch = [extra_key_toml](DaemonHarness& h) {
      return MakeSigningKeys(h, extra_key_toml);
    };
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  std::unique_ptr<v1::Signing::Stub> Stub(const std::string& who) {
    return v1::Signing::NewStub(daemon_->Channel(who));
  }

  grpc::Status SignDigest(v1::Signing::Stub& stub, const std::string& alias, const Alg& a,
                          const std::string& digest, std::string* sig, int salt = -1) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SignDigestRequest in;
    in.set_alias(alias);
    in.set_algorithm(a.id);
    in.set_digest(digest);
    if (salt >= 0) in.set_pss_salt_length(salt);
    v1::SignResponse out;
    grpc::Status st = stub.SignDigest(&ctx, in, &out);
    *sig = out.signature();
    return st;
  }

  grpc::Status SignData(v1::Signing::Stub& stub, const std::string& alias, const Alg& a,
                        const std::string& data, std::string* sig, int salt = -1) {
    grpc::ClientContext ctx;
    v1::SignDataRequest in;
    in.set_alias(alias);
    in.set_algorithm(a.id);
    in.set_data(data);
    if (salt >= 0) in.set_pss_salt_length(salt);
    v1::SignResponse out;
    grpc::Status st = stub.SignData(&ctx, in, &out);
    *sig = out.signature();
    return st;
  }

  v1::SigningKeyInfo KeyInfo(const std::string& who, const std::string& alias) {
    grpc::ClientContext ctx;
    v1::GetSigningKeyRequest in;
    in.set_alias(alias);
    v1::SigningKeyInfo out;
    grpc::Status st = Stub(who)->GetSigningKey(&ctx, in, &out);
    EXPECT_TRUE(st.ok()) << alias << ": " << st.error_message();
    return out;
  }

  // The alias's public key as a PEM file (from GetSigningKey).
  std::string PublicKeyFile(const std::string& who, const std::string& alias) {
    auto pub = PublicKeyFromDer(KeyInfo(who, alias).public_key());
    EXPECT_NE(pub, nullptr) << alias;
    const std::string path = tmp_.File(alias + ".pub.pem");
    if (pub) WriteFile(path, PublicKeyPem(pub.get()));
    return path;
  }

  // Signing/IssueCertificate as `who`; `subject` empty keeps the request's.
  grpc::Status Issue(const std::string& who, const std::string& alias,
                     const std::string& template_name, const std::string& csr_der,
                     const std::string& subject, v1::IssuedCertificate* out) {
    grpc::ClientContext ctx;
    v1::IssueCertificateRequest in;
    in.set_alias(alias);
    in.set_template_name(template_name);
    in.set_csr(csr_der);
    in.set_subject(subject);
    return Stub(who)->IssueCertificate(&ctx, in, out);
  }

  // A new RSA-2048 key and its PKCS#10 request for `subject` (openssl req,
  // files `name`.key and `name`.der in tmp_): the request's DER.
  std::string OpensslCsr(const std::string& name, const std::string& subject) {
    const std::string key = tmp_.File(name + ".key"), csr = tmp_.File(name + ".der");
    auto r = RunCommand(StrCat("openssl req -new -newkey rsa:2048 -nodes -subj '", subject,
                               "' -keyout ", key, " -outform DER -out ", csr));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return Slurp(csr);
  }

  // [[signing.keys]] "ca": this CA's own key under its certificate, for the
  // signer, issuing under template User.
  static std::string CaAliasToml() {
    return StrCat("\n[[signing.keys]]\nalias = \"ca\"\n",
                  "key = \"pkcs11:token=keywarden-ca;object=ca-signing;type=private\"\n",
                  "certificate = \"ca.pem\"\nalgorithms = [\"rsa-pkcs1-sha256\"]\n",
                  "principals = [\"", kSigner, "\"]\ntemplates = [\"User\"]\n");
  }

  std::vector<v1::AuditRecord> Audit() {
    auto stub = v1::Audit::NewStub(daemon_->Channel("auditor"));
    grpc::ClientContext ctx;
    v1::ReadAuditRequest in;
    in.set_limit(10000);
    v1::ReadAuditResponse out;
    grpc::Status st = stub->ReadAudit(&ctx, in, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return {out.records().begin(), out.records().end()};
  }

  // Signatures counted in signing.usage records for (principal, alias).
  int64_t Counted(const std::vector<v1::AuditRecord>& records, const std::string& principal,
                  const std::string& alias, int* record_count = nullptr) {
    int64_t total = 0;
    int n = 0;
    for (const auto& r : records) {
      if (r.event() != "signing.usage" || r.principal() != principal) continue;
      auto j = nlohmann::json::parse(r.details(), nullptr, false);
      if (j.is_discarded() || j.value("alias", "") != alias) continue;
      total += j.value("signatures", int64_t{0});
      int64_t by_algorithm = 0;
      for (const auto& [name, count] : j["algorithms"].items())
        by_algorithm += count.get<int64_t>();
      EXPECT_EQ(by_algorithm, j.value("signatures", int64_t{0})) << r.details();
      ++n;
    }
    if (record_count != nullptr) *record_count = n;
    return total;
  }

  // Stops the daemon (which flushes its counters) and starts it again.
  void Restart() {
    ASSERT_TRUE(daemon_->Stop().ok()) << Slurp(daemon_->log_path());
    ASSERT_TRUE(daemon_->Restart().ok()) << Slurp(daemon_->log_path());
  }

  TempDir tmp_;
  std::unique_ptr<DaemonHarness> daemon_;
};

// --- Every algorithm, checked with the openssl command line ------------------

TEST_F(SigningTest, EverySignatureVerifiesWithOpensslPkeyutlAndDgst) {
  const std::string data = "keywarden delegated signing: the data to sign\n";
  WriteFile(tmp_.File("data.bin"), data);
  struct Case {
    std::string alias, who;
    const Alg* alg;
    int salt;  // -1: default (hash length)
  };
  std::vector<Case> cases;
  for (const Alg& a : kRsaAlgs) cases.push_back({"rsa", "signer", &a, -1});
  cases.push_back({"rsa", "signer", &kRsaAlgs[3], 0});    // PSS, no salt
  cases.push_back({"rsa", "signer", &kRsaAlgs[4], 100});  // PSS, a long salt
  for (const Alg& a : kEcAlgs) cases.push_back({"ec", "signer2", &a, -1});
  cases.push_back({"card", "signer2", &kRsaAlgs[3], -1});  // the key on the other token

  int i = 0;
  for (const Case& c : cases) {
    SCOPED_TRACE(StrCat(c.alias, " ", c.alg->name, " salt ", c.salt));
    const std::string pub = PublicKeyFile(c.who, c.alias);
    auto stub = Stub(c.who);
    const std::string digest = Digest(c.alg->digest, data);
    WriteFile(tmp_.File("digest.bin"), digest);
    std::string by_digest, by_data;
    ASSERT_TRUE(SignDigest(*stub, c.alias, *c.alg, digest, &by_digest, c.salt).ok());
    ASSERT_TRUE(SignData(*stub, c.alias, *c.alg, data, &by_data, c.salt).ok());
    const std::string sig_digest = tmp_.File(StrCat("sig-digest-", i, ".bin"));
    const std::string sig_data = tmp_.File(StrCat("sig-data-", i, ".bin"));
    ++i;
    WriteFile(sig_digest, by_digest);
    WriteFile(sig_data, by_data);

    std::string pkeyopts = StrCat(" -pkeyopt digest:", c.alg->digest);
    std::string sigopts;
    if (c.alg->pss) {
      const std::string salt = StrCat(c.salt >= 0 ? c.salt : static_cast<int>(c.alg->size));
      pkeyopts += StrCat(" -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:", salt);
      sigopts = StrCat(" -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:", salt);
    }
    auto v1r = RunCommand(StrCat("openssl pkeyutl -verify -pubin -inkey ", pub, " -in ",
                                 tmp_.File("digest.bin"), " -sigfile ", sig_digest, pkeyopts));
    EXPECT_EQ(v1r.exit_code, 0) << v1r.output;
    EXPECT_NE(v1r.output.find("Signature Verified Successfully"), std::string::npos) << v1r.output;
    auto v2r = RunCommand(StrCat("openssl dgst -", c.alg->digest, " -verify ", pub, sigopts,
                                 " -signature ", sig_data, " ", tmp_.File("data.bin")));
    EXPECT_EQ(v2r.exit_code, 0) << v2r.output;
    EXPECT_NE(v2r.output.find("Verified OK"), std::string::npos) << v2r.output;

    // And a signature over other data does not verify (the check can fail).
    auto bad = RunCommand(StrCat("openssl dgst -", c.alg->digest, " -verify ", pub, sigopts,
                                 " -signature ", sig_data, " ", pub));
    EXPECT_NE(bad.exit_code, 0) << bad.output;
    if (c.alg->ec) {
      // ECDSA comes back as DER: SEQUENCE { INTEGER r, INTEGER s }.
      auto asn1 = RunCommand("openssl asn1parse -inform DER -in " + sig_digest);
      EXPECT_EQ(asn1.exit_code, 0) << asn1.output;
      EXPECT_NE(asn1.output.find("SEQUENCE"), std::string::npos) << asn1.output;
    } else {
      EXPECT_EQ(by_digest.size(), 256u);
    }
  }
}

TEST_F(SigningTest, TheKeyInfoMatchesTheCertificateAndListsWhatTheCallerMayUse) {
  v1::SigningKeyInfo rsa = KeyInfo("signer", "rsa");
  EXPECT_EQ(rsa.key_type(), "rsa");
  EXPECT_EQ(rsa.bits(), 2048);
  EXPECT_EQ(rsa.algorithms_size(), 6);
  EXPECT_EQ(rsa.templates_size(), 1);
  auto cert = CertFromDer(rsa.certificate());  // found on the token beside the key
  ASSERT_NE(cert, nullptr);
  auto pub = PublicKeyFromDer(rsa.public_key());
  ASSERT_NE(pub, nullptr);
  EXPECT_EQ(EVP_PKEY_eq(X509_get0_pubkey(cert.get()), pub.get()), 1);
  // The certificate is the one the ceremony wrote.
  WriteFile(tmp_.File("rsa-cert.pem"), ToPem(cert.get()));
  auto diff = RunCommand(
      StrCat("cmp ", tmp_.File("rsa-cert.pem"), " ", daemon_->dir().File("sign-rsa.pem")));
  EXPECT_EQ(diff.exit_code, 0) << diff.output;

  v1::SigningKeyInfo ec = KeyInfo("signer2", "ec");  // certificate from the configured file
  EXPECT_EQ(ec.key_type(), "ec");
  EXPECT_EQ(ec.bits(), 256);
  ASSERT_FALSE(ec.certificate().empty());
  v1::SigningKeyInfo card = KeyInfo("signer2", "card");
  EXPECT_EQ(card.algorithms_size(), 1);
  EXPECT_EQ(card.algorithms(0), v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256);

  const std::map<std::string, std::set<std::string>> expected = {{"signer", {"rsa", "ec"}},
                                                                 {"signer2", {"ec", "card"}}};
  for (const auto& [who, aliases] : expected) {
    grpc::ClientContext ctx;
    v1::ListSigningKeysResponse out;
    ASSERT_TRUE(Stub(who)->ListSigningKeys(&ctx, v1::ListSigningKeysRequest(), &out).ok());
    std::set<std::string> got;
    for (const auto& k : out.keys()) got.insert(k.alias());
    EXPECT_EQ(got, aliases) << who;
  }
}

// --- Refusals ----------------------------------------------------------------

TEST_F(SigningTest, EachRefusalIsAClearErrorAndIsAudited) {
  auto stub = Stub("signer");
  const std::string digest(32, '\x5a');
  std::string sig;
  struct Case {
    std::string alias;
    v1::SignatureAlgorithm alg;
    std::string digest;
    int salt;
    grpc::StatusCode code;
    uint32_t hresult;
    std::string words;
  };
  const Case cases[] = {
      {"nope", v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256, digest, -1, grpc::StatusCode::NOT_FOUND,
       0x80090016, "no signing key has the alias \"nope\""},
      {"rsa", v1::SIGNATURE_ALGORITHM_ECDSA_SHA256, digest, -1, grpc::StatusCode::INVALID_ARGUMENT,
       0x80090008, "does not allow ecdsa-sha256"},
      {"rsa", v1::SIGNATURE_ALGORITHM_UNSPECIFIED, digest, -1, grpc::StatusCode::INVALID_ARGUMENT,
       0x80090008, "no known signature algorithm"},
      {"rsa", v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256, std::string(20, 'x'), -1,
       grpc::StatusCode::INVALID_ARGUMENT, 0x80090004, "digest is 32 bytes; got 20"},
      {"rsa", v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA512, digest, -1,
       grpc::StatusCode::INVALID_ARGUMENT, 0x80090004, "digest is 64 bytes; got 32"},
      {"card", v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256, digest, -1,
       grpc::StatusCode::PERMISSION_DENIED, 0x80070005,
       "CN=signer,O=keywarden test may not use signing key \"card\""},
      {"rsa", v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256, digest, 32,
       grpc::StatusCode::INVALID_ARGUMENT, 0x80070057, "not RSA-PSS"},
      {"rsa", v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256, digest, 223,
       grpc::StatusCode::INVALID_ARGUMENT, 0x80070057, "out of range"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(StrCat(c.alias, " ", c.words));
    grpc::ClientContext ctx;
    v1::SignDigestRequest in;
    in.set_alias(c.alias);
    in.set_algorithm(c.alg);
    in.set_digest(c.digest);
    if (c.salt >= 0) in.set_pss_salt_length(c.salt);
    v1::SignResponse out;
    grpc::Status st = stub->SignDigest(&ctx, in, &out);
    EXPECT_EQ(st.error_code(), c.code) << st.error_message();
    EXPECT_NE(st.error_message().find(c.words), std::string::npos) << st.error_message();
    EXPECT_EQ(DetailOf(st).hresult(), c.hresult) << st.error_message();
    EXPECT_TRUE(out.signature().empty());
  }
  // The largest salt RSA-2048 with SHA-256 takes (256 - 32 - 2) is fine.
  std::string ok_sig;
  EXPECT_TRUE(SignDigest(*stub, "rsa", kRsaAlgs[3], digest, &ok_sig, 222).ok());

  // SignData and GetSigningKey refuse the same way.
  grpc::ClientContext data_ctx;
  v1::SignDataRequest data_in;
  data_in.set_alias("card");
  data_in.set_algorithm(v1::SIGNATURE_ALGORITHM_RSA_PSS_SHA256);
  data_in.set_data("x");
  v1::SignResponse data_out;
  EXPECT_EQ(stub->SignData(&data_ctx, data_in, &data_out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  grpc::ClientContext key_ctx;
  v1::GetSigningKeyRequest key_in;
  key_in.set_alias("card");
  v1::SigningKeyInfo key_out;
  EXPECT_EQ(stub->GetSigningKey(&key_ctx, key_in, &key_out).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);

  // Every refusal is in the audit log, as the principal that was refused.
  const auto records = Audit();
  std::vector<nlohmann::json> refused;
  for (const auto& r : records) {
    if (r.event() != "signing.refused") continue;
    EXPECT_EQ(r.principal(), kSigner);
    refused.push_back(nlohmann::json::parse(r.details()));
  }
  ASSERT_EQ(refused.size(), std::size(cases) + 2);
  for (size_t i = 0; i < std::size(cases); ++i) {
    EXPECT_EQ(refused[i]["rpc"], "SignDigest");
    EXPECT_EQ(refused[i]["alias"], cases[i].alias);
    EXPECT_EQ(refused[i]["hresult"].get<uint32_t>(), cases[i].hresult);
    EXPECT_NE(refused[i]["reason"].get<std::string>().find(cases[i].words), std::string::npos);
  }
  EXPECT_EQ(refused[std::size(cases)]["rpc"], "SignData");
  EXPECT_EQ(refused[std::size(cases) + 1]["rpc"], "GetSigningKey");
}

// Every principal x every alias, for signing and for the key info.
TEST_F(SigningTest, PermissionMatrixOfPrincipalsAndAliases) {
  const std::vector<std::string> principals = {"signer",  "signer2", "enrollee",
                                               "officer", "admin",   "nobody"};
  const std::map<std::string, std::set<std::string>> allowed = {
      {"rsa", {"signer"}}, {"ec", {"signer", "signer2"}}, {"card", {"signer2"}}};
  const std::map<std::string, const Alg*> alg = {
      {"rsa", &kRsaAlgs[0]}, {"ec", &kEcAlgs[0]}, {"card", &kRsaAlgs[3]}};
  int checked = 0;
  for (const auto& who : principals) {
    auto stub = Stub(who);
    const bool signer = who == "signer" || who == "signer2";
    for (const auto& [alias, may] : allowed) {
      SCOPED_TRACE(who + " on " + alias);
      const bool expect_ok = may.count(who) > 0;
      std::string sig;
      grpc::Status st = SignDigest(*stub, alias, *alg.at(alias), std::string(32, '\x01'), &sig);
      EXPECT_EQ(st.ok(), expect_ok) << st.error_message();
      if (!st.ok()) {
        EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
        EXPECT_EQ(DetailOf(st).hresult(), 0x80070005u);
        // Without the Signer role the method table refuses; with it, the alias does.
        EXPECT_NE(
            st.error_message().find(signer ? "may not use signing key" : "needs the role signer"),
            std::string::npos)
            << st.error_message();
      }
      grpc::ClientContext ctx;
      v1::GetSigningKeyRequest in;
      in.set_alias(alias);
      v1::SigningKeyInfo out;
      EXPECT_EQ(stub->GetSigningKey(&ctx, in, &out).ok(), expect_ok);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 18);
  // Refusals by the alias list are audited as signing.refused, by the role as authz.denied.
  int by_alias = 0, by_role = 0;
  for (const auto& r : Audit()) {
    if (r.event() == "signing.refused") ++by_alias;
    if (r.event() == "authz.denied" && r.details().find("Signing") != std::string::npos) ++by_role;
  }
  EXPECT_EQ(by_alias, 2 * 2);  // signer on card, signer2 on rsa; sign + key info each
  // Four principals without the role, two RPCs: the refusals of the three
  // aliases are one record per principal and method (at most one a minute).
  EXPECT_EQ(by_role, 4 * 2);
}

// --- Issuing from a CSR --------------------------------------------------------

TEST_F(SigningTest, CertificatesIssuedFromACsrPassOpensslVerify) {
  const std::string csr_der = OpensslCsr("req", "/CN=front end user/O=keywarden test");

  for (const auto& [who, alias, subject] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"signer", "rsa", ""},
           {"signer2", "ec", "CN=chosen by the front end,O=keywarden test"}}) {
    SCOPED_TRACE(alias);
    v1::IssuedCertificate out;
    grpc::Status st = Issue(who, alias, "User", csr_der, subject, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto cert = CertFromDer(out.certificate());
    ASSERT_NE(cert, nullptr);
    ASSERT_EQ(out.chain_size(), 1);
    auto issuer = CertFromDer(out.chain(0));
    ASSERT_NE(issuer, nullptr);
    WriteFile(tmp_.File(alias + "-leaf.pem"), ToPem(cert.get()));
    WriteFile(tmp_.File(alias + "-issuer.pem"), ToPem(issuer.get()));
    auto v = RunCommand(StrCat("openssl verify -CAfile ", tmp_.File(alias + "-issuer.pem"), " ",
                               tmp_.File(alias + "-leaf.pem")));
    EXPECT_EQ(v.exit_code, 0) << v.output;
    // The issuer is the alias's certificate, not the keywarden CA.
    auto other = RunCommand(StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ",
                                   tmp_.File(alias + "-leaf.pem")));
    EXPECT_NE(other.exit_code, 0) << other.output;
    auto text = RunCommand("openssl x509 -noout -subject -ext extendedKeyUsage -in " +
                           tmp_.File(alias + "-leaf.pem"));
    EXPECT_NE(
        text.output.find(subject.empty() ? "CN = front end user" : "CN = chosen by the front end"),
        std::string::npos)
        << text.output;
    EXPECT_NE(text.output.find("TLS Web Client Authentication"), std::string::npos) << text.output;
    EXPECT_FALSE(out.serial().empty());
  }

  // Refusals: a template the alias does not offer, a broken request, an alias without templates.
  struct Bad {
    std::string alias, template_name, csr;
    uint32_t hresult;
  };
  std::string broken = csr_der;
  broken[broken.size() - 5] ^= 0x01;  // inside the signature
  for (const Bad& b : std::vector<Bad>{{"ec", "WebServer", csr_der, 0x80094800},
                                       {"ec", "User", "not a request", 0x8009310b},
                                       {"ec", "User", broken, 0x80090006},
                                       {"card", "User", csr_der, 0x80094800}}) {
    v1::IssuedCertificate out;
    grpc::Status st = Issue("signer2", b.alias, b.template_name, b.csr, "", &out);
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(DetailOf(st).hresult(), b.hresult) << st.error_message();
    EXPECT_TRUE(out.certificate().empty());
  }
  int issued = 0, refused = 0;
  for (const auto& rec : Audit()) {
    if (rec.event() == "signing.certificate_issued") ++issued;
    if (rec.event() == "signing.refused" &&
        rec.details().find("IssueCertificate") != std::string::npos)
      ++refused;
  }
  EXPECT_EQ(issued, 2);
  EXPECT_EQ(refused, 4);
}

// One key, one owner (issue 13): a key this CA certified to someone is not
// certified for anyone else through a signing alias either.
// [publication]'s URLs go into a certificate issued under this CA's own
// certificate (an alias of the CA key), never into one issued under
// another issuer's (whose CRL this CA does not publish).
TEST_F(SigningTest, IssuedUnderTheCaCertificateTheCertificateCarriesThePublicationUrls) {
  daemon_.reset();
  Start(StrCat(CaAliasToml(),
               "\n[publication]\ncrl_urls = [\"http://pki.example.com/kw/ca.crl\"]\n",
               "ca_issuers_urls = [\"http://pki.example.com/kw/ca.crt\"]\n"));
  ASSERT_NE(daemon_, nullptr);
  const std::string csr_der = OpensslCsr("p", "/CN=published user/O=keywarden test");
  for (const std::string alias : {"ca", "rsa"}) {
    SCOPED_TRACE(alias);
    v1::IssuedCertificate out;
    grpc::Status st = Issue("signer", alias, "User", csr_der, "", &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    auto cert = CertFromDer(out.certificate());
    ASSERT_NE(cert, nullptr);
    const std::string pem = tmp_.File(alias + "-published.pem");
    WriteFile(pem, ToPem(cert.get()));
    auto text = RunCommand("openssl x509 -noout -text -in " + pem);
    ASSERT_EQ(text.exit_code, 0) << text.output;
    const bool under_ca = alias == "ca";
    EXPECT_EQ(Contains(text.output, "URI:http://pki.example.com/kw/ca.crl"), under_ca)
        << text.output;
    EXPECT_EQ(Contains(text.output, "CA Issuers - URI:http://pki.example.com/kw/ca.crt"), under_ca)
        << text.output;
    if (under_ca) {
      auto v = RunCommand("openssl verify -CAfile " + daemon_->ca_cert_path() + " " + pem);
      EXPECT_EQ(v.exit_code, 0) << v.output;
    }
  }
}

// A certificate an alias of the CA key issues under this CA's certificate is
// this CA's certificate like any other: recorded (a request row from the
// signer, resolved by "signing:ca", and the certificate), so a Certificate
// Manager can revoke it and it goes on the CRL; and its key is held for its
// owner (another subject through the alias, or an enrollee, is refused).
// Under another issuer's certificate nothing goes into this CA's database.
TEST_F(SigningTest, IssuedUnderTheCaCertificateTheCertificateIsRecordedRevocableAndHoldsItsKey) {
  daemon_.reset();
  Start(CaAliasToml());
  ASSERT_NE(daemon_, nullptr);
  const std::string csr_der = OpensslCsr("d", "/CN=delegated user/O=keywarden test");
  auto find = [&](const std::string& serial) {
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::FindCertificatesRequest in;
    in.set_serial(serial);
    v1::FindCertificatesResponse out;
    grpc::Status st = officer->FindCertificates(&ctx, in, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return out;
  };

  v1::IssuedCertificate issued;
  grpc::Status st = Issue("signer", "ca", "User", csr_der, "", &issued);
  ASSERT_TRUE(st.ok()) << st.error_message();
  auto cert = CertFromDer(issued.certificate());
  ASSERT_NE(cert, nullptr);
  const std::string pem = tmp_.File("delegated.pem");
  WriteFile(pem, ToPem(cert.get()));
  // The serial as openssl prints it.
  auto printed = RunCommand("openssl x509 -noout -serial -in " + pem);
  ASSERT_EQ(printed.exit_code, 0) << printed.output;
  std::string serial = AsciiLower(printed.output.substr(7));
  while (!serial.empty() && serial.back() == '\n') serial.pop_back();
  EXPECT_EQ(issued.serial(), serial);

  // Recorded, with a request row from the signer.
  v1::FindCertificatesResponse found = find(serial);
  ASSERT_EQ(found.certificates_size(), 1);
  const v1::CertificateInfo& info = found.certificates(0);
  EXPECT_EQ(info.subject(), "O=keywarden test,CN=delegated user");  // RFC 4514: last RDN first
  EXPECT_EQ(info.template_name(), "User");
  ASSERT_GT(info.request_id(), 0);
  {
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::GetRequestRequest in;
    in.set_request_id(info.request_id());
    v1::RequestInfo request;
    st = officer->GetRequest(&ctx, in, &request);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(request.requester(), kSigner);
    EXPECT_EQ(request.disposition(), v1::DISPOSITION_ISSUED);
  }
  int audited = 0;
  for (const auto& rec : Audit()) {
    if (rec.event() == "signing.certificate_issued" && Contains(rec.details(), serial) &&
        Contains(rec.details(), StrCat("\"request_id\":", info.request_id()))) {
      ++audited;
    }
  }
  EXPECT_EQ(audited, 1);

  // The key is held for its owner: not for another subject through the
  // alias, nor for an enrollee.
  v1::IssuedCertificate other;
  st = Issue("signer", "ca", "User", csr_der, "CN=mallory,O=keywarden test", &other);
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), StrCat("certificate ", serial))) << st.error_message();
  EXPECT_TRUE(other.certificate().empty());
  {
    auto enrollment = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(csr_der);
    in.set_template_name("User");
    v1::EnrollmentResult out;
    st = enrollment->Submit(&ctx, in, &out);
    EXPECT_FALSE(st.ok() && out.disposition() == v1::DISPOSITION_ISSUED);
    EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  }

  // Revocable by a Certificate Manager, and on the next CRL (openssl reads it).
  {
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::RevokeRequest in;
    in.set_serial(serial);
    in.set_reason(1);  // keyCompromise
    v1::CertificateInfo out;
    st = officer->Revoke(&ctx, in, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_TRUE(out.revoked());
  }
  {
    auto admin = v1::Administration::NewStub(daemon_->Channel("admin"));
    grpc::ClientContext ctx;
    v1::Crl crl;
    st = admin->PublishCrl(&ctx, v1::PublishCrlRequest(), &crl);
    ASSERT_TRUE(st.ok()) << st.error_message();
    WriteFile(tmp_.File("ca.crl"), crl.crl());
    auto text = RunCommand("openssl crl -inform DER -noout -text -in " + tmp_.File("ca.crl"));
    ASSERT_EQ(text.exit_code, 0) << text.output;
    EXPECT_TRUE(Contains(AsciiLower(text.output), StrCat("serial number: ", serial)))
        << text.output;
    WriteFile(tmp_.File("ca.crl.pem"), "");
    auto pem_crl = RunCommand("openssl crl -inform DER -in " + tmp_.File("ca.crl") + " -out " +
                              tmp_.File("ca.crl.pem"));
    ASSERT_EQ(pem_crl.exit_code, 0) << pem_crl.output;
    auto v = RunCommand("openssl verify -crl_check -CAfile " + daemon_->ca_cert_path() +
                        " -CRLfile " + tmp_.File("ca.crl.pem") + " " + pem);
    EXPECT_NE(v.exit_code, 0) << v.output;
    EXPECT_TRUE(Contains(v.output, "certificate revoked")) << v.output;
  }

  // Under another issuer's certificate (alias "rsa"): not this CA's, not recorded.
  v1::IssuedCertificate elsewhere;
  st = Issue("signer", "rsa", "User", OpensslCsr("o", "/CN=other issuer user/O=keywarden test"), "",
             &elsewhere);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(find(elsewhere.serial()).certificates_size(), 0);
}

TEST_F(SigningTest, IssueCertificateRefusesAKeyTheCaCertifiedToSomeoneElse) {
  const std::string csr_der = OpensslCsr("alice", "/CN=alice/O=keywarden test");
  v1::EnrollmentResult enrolled;
  {
    auto enrollment = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(csr_der);
    in.set_template_name("User");
    grpc::Status st = enrollment->Submit(&ctx, in, &enrolled);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  // The serial as openssl prints it, lower-cased.
  WriteFile(tmp_.File("alice-cert.der"), enrolled.certificate());
  auto printed = RunCommand(
      StrCat("openssl x509 -inform DER -noout -serial -in ", tmp_.File("alice-cert.der")));
  ASSERT_EQ(printed.exit_code, 0) << printed.output;
  ASSERT_EQ(printed.output.rfind("serial=", 0), 0u) << printed.output;
  std::string serial = AsciiLower(printed.output.substr(7));
  while (!serial.empty() && serial.back() == '\n') serial.pop_back();
  v1::IssuedCertificate out;
  grpc::Status st = Issue("signer", "rsa", "User", csr_der, "CN=mallory,O=keywarden test", &out);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  EXPECT_NE(st.error_message().find(StrCat("certificate ", serial)), std::string::npos)
      << st.error_message();
  EXPECT_TRUE(out.certificate().empty());
}

// --- Load, counters ------------------------------------------------------------

// 16 clients, each on its own connection, 1000 signatures each: every one
// verifies, none is lost, and the audit log counts them all.
TEST_F(SigningTest, SixteenClientsTimesAThousandSignaturesAllVerifyAndAreCounted) {
  constexpr int kClients = 16;
  constexpr int kEach = 1000;
  auto rsa_pub = PublicKeyFromDer(KeyInfo("signer", "rsa").public_key());
  auto ec_pub = PublicKeyFromDer(KeyInfo("signer2", "ec").public_key());
  ASSERT_TRUE(rsa_pub && ec_pub);
  const std::string tls_ca = Slurp(daemon_->tls_ca_path());

  std::atomic<int> verified{0}, failed_calls{0}, bad_signatures{0};
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      // Even clients: signer with the RSA key; odd: signer2 with the EC key.
      const bool rsa = c % 2 == 0;
      const ClientIdentity& id = daemon_->client(rsa ? "signer" : "signer2");
      grpc::SslCredentialsOptions tls;
      tls.pem_root_certs = tls_ca;
      tls.pem_cert_chain = Slurp(id.cert_path);
      tls.pem_private_key = Slurp(id.key_path);
      grpc::ChannelArguments args;
      args.SetSslTargetNameOverride("localhost");
      args.SetInt("keywarden.test.client", c);  // a connection of its own
      auto stub = v1::Signing::NewStub(
          grpc::CreateCustomChannel(daemon_->target(), grpc::SslCredentials(tls), args));
      const Alg& a = rsa ? kRsaAlgs[0] : kEcAlgs[0];
      for (int i = 0; i < kEach; ++i) {
        const std::string digest = Digest("sha256", StrCat("client ", c, " message ", i));
        std::string sig;
        grpc::Status st = SignDigest(*stub, rsa ? "rsa" : "ec", a, digest, &sig);
        if (!st.ok()) {
          if (failed_calls++ == 0) ADD_FAILURE() << "client " << c << ": " << st.error_message();
          continue;
        }
        if (VerifiesDigest(rsa ? rsa_pub.get() : ec_pub.get(), a, digest, sig)) {
          ++verified;
        } else {
          ++bad_signatures;
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  EXPECT_EQ(failed_calls.load(), 0);
  EXPECT_EQ(bad_signatures.load(), 0);
  EXPECT_EQ(verified.load(), kClients * kEach);

  // Stopping flushes the counters; restart and read them back.
  Restart();
  const auto records = Audit();
  int rsa_records = 0;
  EXPECT_EQ(Counted(records, kSigner, "rsa", &rsa_records), kClients / 2 * kEach);
  EXPECT_EQ(Counted(records, kSigner2, "ec"), kClients / 2 * kEach);
  EXPECT_EQ(Counted(records, kSigner, "ec"), 0);
  // Counted, not logged one by one.
  EXPECT_LT(rsa_records, 200);
  auto audit = v1::Audit::NewStub(daemon_->Channel("auditor"));
  grpc::ClientContext ctx;
  v1::VerifyAuditResponse verdict;
  ASSERT_TRUE(audit->VerifyAudit(&ctx, v1::VerifyAuditRequest(), &verdict).ok());
  EXPECT_TRUE(verdict.ok()) << verdict.problem();
}

TEST_F(SigningTest, UsageIsFlushedPeriodicallyAsOneRecordPerPrincipalAndKey) {
  auto stub = Stub("signer2");
  std::string sig;
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(
        SignDigest(*stub, "ec", kEcAlgs[0], std::string(32, static_cast<char>(i)), &sig).ok());
  }
  ASSERT_TRUE(SignDigest(*stub, "ec", kEcAlgs[1], std::string(48, 'x'), &sig).ok());
  // audit_interval is 1s in this configuration: the counts appear without a restart.
  int64_t counted = 0;
  int records = 0;
  for (int i = 0; i < 100 && counted < 6; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    counted = Counted(Audit(), kSigner2, "ec", &records);
  }
  EXPECT_EQ(counted, 6);
  EXPECT_LE(records, 2);  // not one per signature
  nlohmann::json details;
  for (const auto& r : Audit()) {
    if (r.event() == "signing.usage") details = nlohmann::json::parse(r.details());
  }
  ASSERT_TRUE(details.is_object());
  EXPECT_EQ(details["alias"], "ec");
  EXPECT_TRUE(details["algorithms"].contains("ecdsa-sha256") ||
              details["algorithms"].contains("ecdsa-sha384"))
      << details.dump();
  EXPECT_LE(details["from"].get<int64_t>(), details["to"].get<int64_t>());
}

// --- Batches (SignDigests) -------------------------------------------------------

// Every signature of a batch verifies with the openssl command line against
// its own data, in the order of the digests (a signature in another place
// does not verify), with PKCS#1 v1.5, PSS and ECDSA; each is counted.
TEST_F(SigningTest, BatchSignaturesVerifyWithOpensslEachAgainstItsOwnDigest) {
  struct Case {
    std::string alias, who;
    const Alg* alg;
    int count;
  };
  const Case cases[] = {{"rsa", "signer", &kRsaAlgs[0], 24},
                        {"rsa", "signer", &kRsaAlgs[4], 5},
                        {"ec", "signer2", &kEcAlgs[0], 24}};
  for (const Case& c : cases) {
    SCOPED_TRACE(StrCat(c.alias, " ", c.alg->name));
    const std::string pub = PublicKeyFile(c.who, c.alias);
    auto stub = Stub(c.who);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SignDigestsRequest in;
    in.set_alias(c.alias);
    in.set_algorithm(c.alg->id);
    std::vector<std::string> data_files;
    for (int i = 0; i < c.count; ++i) {
      const std::string data = StrCat("batch ", c.alias, " ", c.alg->name, " message ", i, "\n");
      data_files.push_back(tmp_.File(StrCat("batch-", c.alias, "-", c.alg->name, "-", i, ".txt")));
      WriteFile(data_files.back(), data);
      in.add_digests(Digest(c.alg->digest, data));
    }
    v1::SignDigestsResponse out;
    grpc::Status st = stub->SignDigests(&ctx, in, &out);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(out.signatures_size(), c.count);
    const std::string sigopts =
        c.alg->pss ? StrCat(" -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:", c.alg->size)
                   : "";
    for (int i = 0; i < c.count; ++i) {
      const std::string sig = tmp_.File(StrCat("batch-sig-", c.alias, "-", i, ".bin"));
      WriteFile(sig, out.signatures(i));
      auto v = RunCommand(StrCat("openssl dgst -", c.alg->digest, " -verify ", pub, sigopts,
                                 " -signature ", sig, " ", data_files[static_cast<size_t>(i)]));
      EXPECT_EQ(v.exit_code, 0) << i << ": " << v.output;
      EXPECT_NE(v.output.find("Verified OK"), std::string::npos) << v.output;
      // The same signature against the next message's data does not verify.
      auto wrong = RunCommand(StrCat("openssl dgst -", c.alg->digest, " -verify ", pub, sigopts,
                                     " -signature ", sig, " ",
                                     data_files[static_cast<size_t>((i + 1) % c.count)]));
      EXPECT_NE(wrong.exit_code, 0) << i << ": " << wrong.output;
      if (!c.alg->ec) {
        EXPECT_EQ(out.signatures(i).size(), 256u);
      }
    }
  }
  Restart();
  const auto records = Audit();
  EXPECT_EQ(Counted(records, kSigner, "rsa"), 24 + 5);
  EXPECT_EQ(Counted(records, kSigner2, "ec"), 24);
}

// Each refusal of a batch is a clear error, audited, and signs nothing: a
// principal without the role, an alias the principal may not use, an
// unknown alias, a digest of the wrong length among good ones, too many
// digests, none.
TEST_F(SigningTest, BatchRefusalsAreAuditedAndSignNothing) {
  const std::string good(32, '\x42');
  auto batch = [&](const std::string& who, const std::string& alias,
                   const std::vector<std::string>& digests, v1::SignDigestsResponse* out,
                   v1::SignatureAlgorithm alg = v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    v1::SignDigestsRequest in;
    in.set_alias(alias);
    in.set_algorithm(alg);
    for (const auto& d : digests) in.add_digests(d);
    return Stub(who)->SignDigests(&ctx, in, out);
  };
  constexpr auto kPkcs1 = v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA256;
  std::vector<std::string> one_short(8, good);
  one_short[5] = std::string(20, 'x');
  struct Case {
    std::string who, alias;
    std::vector<std::string> digests;
    v1::SignatureAlgorithm alg;
    grpc::StatusCode code;
    uint32_t hresult;
    std::string words;
  };
  const Case cases[] = {
      {"signer",
       "card",
       {good, good},
       kPkcs1,
       grpc::StatusCode::PERMISSION_DENIED,
       0x80070005,
       "may not use signing key \"card\""},
      {"signer",
       "nope",
       {good},
       kPkcs1,
       grpc::StatusCode::NOT_FOUND,
       0x80090016,
       "no signing key has the alias \"nope\""},
      {"signer", "rsa", one_short, kPkcs1, grpc::StatusCode::INVALID_ARGUMENT, 0x80090004,
       "digests[5]: a rsa-pkcs1-sha256 digest is 32 bytes; got 20"},
      {"signer", "rsa", std::vector<std::string>(257, good), kPkcs1,
       grpc::StatusCode::INVALID_ARGUMENT, 0x80070057, "257 digests in one call; the limit is 256"},
      // Another algorithm: refusals of the same principal, alias, HRESULT and
      // algorithm within a minute share one audit record.
      {"signer",
       "rsa",
       {},
       v1::SIGNATURE_ALGORITHM_RSA_PKCS1_SHA384,
       grpc::StatusCode::INVALID_ARGUMENT,
       0x80070057,
       "no digests to sign"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.words);
    v1::SignDigestsResponse out;
    grpc::Status st = batch(c.who, c.alias, c.digests, &out, c.alg);
    EXPECT_EQ(st.error_code(), c.code) << st.error_message();
    EXPECT_NE(st.error_message().find(c.words), std::string::npos) << st.error_message();
    EXPECT_EQ(DetailOf(st).hresult(), c.hresult) << st.error_message();
    EXPECT_EQ(out.signatures_size(), 0);
  }
  // Without the Signer role the method table refuses.
  v1::SignDigestsResponse denied;
  grpc::Status st = batch("enrollee", "rsa", {good}, &denied);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::PERMISSION_DENIED) << st.error_message();
  EXPECT_NE(st.error_message().find("needs the role signer"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(denied.signatures_size(), 0);
  // The limit is 256: 256 good digests are signed.
  v1::SignDigestsResponse full;
  ASSERT_TRUE(batch("signer", "rsa", std::vector<std::string>(256, good), &full).ok());
  EXPECT_EQ(full.signatures_size(), 256);

  Restart();
  const auto records = Audit();
  std::vector<nlohmann::json> refused;
  int role_denied = 0;
  for (const auto& r : records) {
    if (r.event() == "authz.denied" && r.details().find("SignDigests") != std::string::npos) {
      ++role_denied;
    }
    if (r.event() != "signing.refused") continue;
    EXPECT_EQ(r.principal(), kSigner);
    refused.push_back(nlohmann::json::parse(r.details()));
  }
  EXPECT_EQ(role_denied, 1) << [&] {
    std::string all;
    for (const auto& r : records) all += r.event() + " " + r.principal() + " " + r.details() + "\n";
    return all;
  }();
  ASSERT_EQ(refused.size(), std::size(cases));
  for (size_t i = 0; i < std::size(cases); ++i) {
    EXPECT_EQ(refused[i]["rpc"], "SignDigests");
    EXPECT_EQ(refused[i]["alias"], cases[i].alias);
    EXPECT_EQ(refused[i]["hresult"].get<uint32_t>(), cases[i].hresult);
    EXPECT_NE(refused[i]["reason"].get<std::string>().find(cases[i].words), std::string::npos)
        << refused[i].dump();
  }
  // Nothing was signed but the 256: the usage records count exactly those.
  EXPECT_EQ(Counted(records, kSigner, "rsa"), 256);
  EXPECT_EQ(Counted(records, kSigner, "card"), 0);
}

// --- Python ----------------------------------------------------------------------

TEST_F(SigningTest, ThePythonGrpcioClientCanSign) {
  const std::string python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
  const std::string data = "signed from python\n";
  WriteFile(tmp_.File("data.bin"), data);
  auto run = [&](const std::string& who, const std::string& alias, const std::string& alg,
                 const std::string& extra) {
    const ClientIdentity& id = daemon_->client(who);
    const std::string out = tmp_.File("py.out"), err = tmp_.File("py.err");
    CommandResult r = RunCommand(StrCat(
        "(", python, " ", KEYWARDEN_PY_SIGN, " --proto-dir ", KEYWARDEN_PROTO_DIR, " --target ",
        daemon_->target(), " --cert ", id.cert_path, " --key ", id.key_path, " --ca ",
        daemon_->tls_ca_path(), " --server-name localhost --alias ", alias, " --algorithm ", alg,
        " ", extra, " ", tmp_.File("data.bin"), " > ", out, " 2> ", err, ")"));
    r.output = Slurp(out) + Slurp(err);
    return r;
  };
  for (const auto& [who, alias, alg, salt] :
       std::vector<std::tuple<std::string, std::string, std::string, std::string>>{
           {"signer", "rsa", "rsa-pss-sha384", "17"},
           {"signer", "rsa", "rsa-pkcs1-sha256", ""},
           {"signer2", "ec", "ecdsa-sha256", ""}}) {
    SCOPED_TRACE(alias + " " + alg);
    auto r = run(who, alias, alg, salt.empty() ? "" : "--salt " + salt);
    ASSERT_EQ(r.exit_code, 0) << r.output;
    auto j = nlohmann::json::parse(Slurp(tmp_.File("py.out")), nullptr, false);
    ASSERT_TRUE(j.is_object()) << r.output;
    EXPECT_EQ(j["alias"], alias);
    auto pub = PublicKeyFromDer(Base64Decode(j["public_key_der_b64"].get<std::string>()));
    ASSERT_NE(pub, nullptr);
    WriteFile(tmp_.File("py-pub.pem"), PublicKeyPem(pub.get()));
    WriteFile(tmp_.File("py-sig-data.bin"), Base64Decode(j["data_signature_b64"]));
    WriteFile(tmp_.File("py-sig-digest.bin"), Base64Decode(j["digest_signature_b64"]));
    const std::string md = alg.substr(alg.rfind('-') + 1);
    WriteFile(tmp_.File("py-digest.bin"), Digest(md.c_str(), data));
    std::string sigopts, pkeyopts = " -pkeyopt digest:" + md;
    if (alg.find("pss") != std::string::npos) {
      sigopts = " -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:" + salt;
      pkeyopts += " -pkeyopt rsa_padding_mode:pss -pkeyopt rsa_pss_saltlen:" + salt;
    }
    auto v = RunCommand(StrCat("openssl dgst -", md, " -verify ", tmp_.File("py-pub.pem"), sigopts,
                               " -signature ", tmp_.File("py-sig-data.bin"), " ",
                               tmp_.File("data.bin")));
    EXPECT_EQ(v.exit_code, 0) << v.output;
    auto p = RunCommand(StrCat("openssl pkeyutl -verify -pubin -inkey ", tmp_.File("py-pub.pem"),
                               " -in ", tmp_.File("py-digest.bin"), " -sigfile ",
                               tmp_.File("py-sig-digest.bin"), pkeyopts));
    EXPECT_EQ(p.exit_code, 0) << p.output;
  }
  // A refusal reaches Python as PERMISSION_DENIED, exit status 1.
  auto denied = run("signer", "card", "rsa-pss-sha256", "");
  EXPECT_EQ(denied.exit_code, 1) << denied.output;
  EXPECT_NE(denied.output.find("PERMISSION_DENIED"), std::string::npos) << denied.output;
}

// --- Start-up checks ---------------------------------------------------------------

TEST(SigningStartTest, AnAlgorithmTheKeyCannotDoStopsTheDaemonNamingTheAlias) {
  DaemonHarness::Options options;
  options.before_launch = [](DaemonHarness& h) {
    return MakeSigningKeys(h,
                           "\n[[signing.keys]]\nalias = \"wrong\"\n"
                           "key = \"pkcs11:token=keywarden-ca;object=sign-rsa;type=private\"\n"
                           "algorithms = [\"ecdsa-sha256\"]\n"
                           "principals = [\"CN=signer,O=keywarden test\"]\n");
  };
  auto d = DaemonHarness::Start(options);
  ASSERT_FALSE(d.ok());
  const std::string message(d.status().message());
  EXPECT_NE(message.find("signing key \"wrong\""), std::string::npos) << message;
  EXPECT_NE(message.find("ecdsa-sha256 needs an EC key"), std::string::npos) << message;
}

TEST(SigningStartTest, AKeyOnAnotherTokenWithoutAPinStopsTheDaemon) {
  DaemonHarness::Options options;
  options.before_launch = [](DaemonHarness& h) {
    if (auto st = MakeSigningKeys(h, ""); !st.ok()) return st;
    // Drop the card's pin_source line from the configuration.
    std::string toml = Slurp(h.config_path());
    const size_t at = toml.find("pin_source = \"file:" + h.tokens().PinFile("kra-card-1"));
    if (at == std::string::npos) return absl::InternalError("test bug: no card pin_source");
    toml.erase(at, toml.find('\n', at) + 1 - at);
    std::ofstream(h.config_path(), std::ios::trunc) << toml;
    return absl::OkStatus();
  };
  auto d = DaemonHarness::Start(options);
  ASSERT_FALSE(d.ok());
  const std::string message(d.status().message());
  EXPECT_NE(message.find("signing key \"card\" is on token \"kra-card-1\""), std::string::npos)
      << message;
  EXPECT_NE(message.find("give the key a pin_source"), std::string::npos) << message;
}

}  // namespace
}  // namespace keywarden::testing
