// Issue 13, items 2-4, against a real keywardend with SoftHSM2 tokens:
//   - one key, one owner: bob replaying alice's archival request is refused
//     (CRYPT_E_EXISTS naming alice's certificate), nothing is archived under
//     bob, and it is audited; alice's own replay is reported as a replay; a
//     renewal with the same key by the same owner is allowed;
//   - request rows tell the truth: the resolved template on every row; a
//     request refused by an integrity check is a failed row with its reason
//     and without key material (the SQLite file's bytes are searched);
//   - codes that name the cause: one HRESULT per failed check, and an
//     OAEP-SHA256 request the token cannot decrypt is the token's failure.
// Expected values come from the requests the test builds and from the
// openssl command line, never from the code under test.
#include <openssl/core_names.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <fstream>
#include <iterator>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/cmc_builder.h"
#include "pki/private_key_blob.h"
#include "service/ca/issuer.h"
#include "service/storage/store.h"
#include "tests/service/daemon_harness.h"
#include "tests/service/rpc_test_util.h"
#include "tests/service/soft_ca.h"
#include "tests/service/store_peek.h"

namespace keywarden::testing {
namespace {

namespace v1 = keywarden::v1;

std::string Str(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

std::string BlobOf(EVP_PKEY* key) {
  auto blob = pki::SerializePrivateKeyBlob(key, pki::kCalgRsaKeyx);
  EXPECT_TRUE(blob.ok()) << blob.status();
  return std::string(reinterpret_cast<const char*>(blob->data()), blob->size());
}

// As the CLI prints a status code: "0x80090002".
std::string HResultText(uint32_t code) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", code);
  return buf;
}

class KeyOwnerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    kra_ca_ = SoftCa::Make("KRA Issuing CA");
    WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca_.cert.get()));
    kra_ = kra_ca_.Issue("kra0");
    WriteFile(tmp_.File("kra0.pem"), ToPem(kra_.cert.get()));
    WriteFile(tmp_.File("kra-ca.crl"), kra_ca_.Crl());
    DaemonHarness::Options options;
    options.extra_flags = "enable_foreign = true";
    options.extra_toml =
        StrCat("\n[kra]\ncertificates = [\"", tmp_.File("kra0.pem"), "\"]\ncount = 1\ntrust = [\"",
               tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n", R"(
[[template]]
name = "PendingArchival"
key_usage = ["keyEncipherment"]
archival = "required"
subject = "principal"
pend = true
)",
               kEcClientAuthTemplateToml);
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CertificateChain chain;
    ASSERT_TRUE(
        stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain).ok());
    const unsigned char* p = reinterpret_cast<const unsigned char*>(chain.certificate().data());
    exchange_.reset(d2i_X509(nullptr, &p, static_cast<long>(chain.certificate().size())));
    ASSERT_TRUE(exchange_);
  }

  grpc::Status Submit(const std::string& who, const std::string& request, const std::string& tmpl,
                      v1::EnrollmentResult* out) {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(request);
    in.set_template_name(tmpl);
    return stub->Submit(&ctx, in, out);
  }

  // `who` sending `request` is refused because of the key's owner or its
  // archive (CRYPT_E_EXISTS, 0x80092005); nothing is issued.
  void ExpectKeyRefused(const std::string& who, const std::string& request,
                        const std::string& tmpl) {
    v1::EnrollmentResult out;
    grpc::Status st = Submit(who, request, tmpl, &out);
    ASSERT_FALSE(st.ok()) << who << " was issued the key";
    EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  }

  // A Windows-layout archival request for a new key (empty subject: the
  // CA takes the requester's name, as for autoenrollment).
  std::string NewArchivalRequest(ossl::UniquePtr<EVP_PKEY>* key, std::string* csr = nullptr,
                                 ArchivalPart* part_out = nullptr) {
    std::string request_csr = MakeRequestDer("", 2048, key);
    ArchivalPart part;
    part.encrypted_key = EncryptToExchange(BlobOf(key->get()), exchange_.get());
    part.hash = Sha1Of(part.encrypted_key);
    if (csr != nullptr) *csr = request_csr;
    if (part_out != nullptr) *part_out = part;
    return MakeCmcDer(request_csr, key->get(), &part);
  }

  std::unique_ptr<service::Store> OpenStore() { return OpenHarnessStore(*daemon_); }

  std::vector<service::AuditRecord> AuditEvents(const std::string& event) {
    return HarnessAuditEvents(*daemon_, event);
  }

  CommandResult Kw(const std::string& who, const std::string& args) const {
    const ClientIdentity& id = daemon_->client(who);
    return RunCommand(StrCat(KEYWARDEN_CLI, " --server ", daemon_->target(), " --client-cert ",
                             id.cert_path, " --client-key ", id.key_path, " --server-ca ",
                             daemon_->tls_ca_path(), " --server-name localhost ", args));
  }

  // SHA-256 of a file's bytes, by the openssl command line.
  std::string OpensslSha256(const std::string& path) {
    auto r = RunCommand(StrCat("openssl dgst -sha256 -r ", path));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output.substr(0, 64);
  }
  // SHA-256 of a DER certificate's SubjectPublicKeyInfo, by openssl.
  std::string OpensslSpkiSha256(const std::string& cert_der) {
    const std::string path = tmp_.File("spki-cert.der");
    WriteFile(path, cert_der);
    auto r = RunCommand(StrCat("openssl x509 -inform DER -in ", path, " -noout -pubkey | ",
                               "openssl pkey -pubin -outform DER | openssl dgst -sha256 -r"));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output.substr(0, 64);
  }

  // Every byte of the CA database (the file and its WAL).
  std::string DatabaseBytes() {
    std::string all;
    for (const std::string& path : {daemon_->db_path(), daemon_->db_path() + "-wal"}) {
      std::ifstream in(path, std::ios::binary);
      all.append(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
    return all;
  }

  // Requests holding an archived key.
  static size_t Archives(service::Store& store) {
    auto all = store.ListRequests(std::nullopt, 1000);
    EXPECT_TRUE(all.ok());
    size_t n = 0;
    if (all.ok()) {
      for (const auto& r : *all) n += r.archived_key ? 1 : 0;
    }
    return n;
  }

  static std::string SerialOf(const std::string& cert_der) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(cert_der.data());
    ossl::UniquePtr<X509> cert(d2i_X509(nullptr, &p, static_cast<long>(cert_der.size())));
    if (!cert) return {};
    ossl::UniquePtr<BIGNUM> bn(ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
    char* hex = BN_bn2hex(bn.get());
    std::string out = AsciiLower(hex);
    OPENSSL_free(hex);
    if (out.size() % 2 != 0) out = "0" + out;
    return out;
  }

  TempDir tmp_;
  SoftCa kra_ca_;
  SoftCa::Issued kra_;
  std::unique_ptr<DaemonHarness> daemon_;
  ossl::UniquePtr<X509> exchange_;
};

// The reproduction of issue 13: bob submits alice's archival request file
// to a subject = "principal" template.
TEST_F(KeyOwnerTest, BobReplayingAlicesArchivalRequestIsRefusedNothingArchivedAndAudited) {
  ossl::UniquePtr<EVP_PKEY> alice_key;
  std::string alice_csr;
  const std::string alice_request = NewArchivalRequest(&alice_key, &alice_csr);
  v1::EnrollmentResult alice;
  grpc::Status st = Submit("enrollee", alice_request, "ArchivalUser", &alice);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(alice.disposition(), v1::DISPOSITION_ISSUED);
  const std::string alice_serial = SerialOf(alice.certificate());
  ASSERT_FALSE(alice_serial.empty());

  // The key index holds what openssl computes for alice's certificate.
  {
    auto store = OpenStore();
    auto cert = store->GetCertificate(alice_serial);
    ASSERT_TRUE(cert.ok()) << cert.status();
    EXPECT_EQ(cert->spki_sha256, OpensslSpkiSha256(alice.certificate()));
    auto row = store->GetRequest(alice.request_id());
    ASSERT_TRUE(row.ok());
    EXPECT_EQ(row->spki_sha256, cert->spki_sha256);
    EXPECT_EQ(row->template_name, "ArchivalUser");
  }

  // bob sends the very same bytes.
  v1::EnrollmentResult bob;
  st = Submit("enrollee2", alice_request, "ArchivalUser", &bob);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::ALREADY_EXISTS) << st.error_message();
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  EXPECT_EQ(DetailOf(st).symbol(), "CRYPT_E_EXISTS");
  EXPECT_NE(st.error_message().find(StrCat("certificate ", alice_serial)), std::string::npos)
      << st.error_message();
  EXPECT_EQ(st.error_message().find("replay"), std::string::npos) << st.error_message();
  EXPECT_TRUE(bob.certificate().empty());

  auto store = OpenStore();
  auto denied = store->ListRequests(service::Disposition::kDenied, 10);
  ASSERT_TRUE(denied.ok());
  ASSERT_EQ(denied->size(), 1u);
  const service::RequestRecord& row = denied->front();
  EXPECT_EQ(row.requester, daemon_->client("enrollee2").principal);
  EXPECT_EQ(row.status_code, 0x80092005u);
  EXPECT_FALSE(row.archived_key.has_value()) << "alice's key was archived under bob's request";
  service::CertificateQuery by_request;
  by_request.request_id = row.id;
  EXPECT_TRUE(store->FindCertificates(by_request)->empty());
  service::CertificateQuery bob_cn;
  bob_cn.common_name = "bob";
  EXPECT_TRUE(store->FindCertificates(bob_cn)->empty()) << "a certificate names bob";
  // Only alice's request holds an archive.
  EXPECT_EQ(Archives(*store), 1u);

  auto audited = AuditEvents("request.key_in_use");
  ASSERT_EQ(audited.size(), 1u);
  auto details = nlohmann::json::parse(audited[0].details);
  EXPECT_EQ(details["request_id"], row.id);
  EXPECT_EQ(details["requester"], daemon_->client("enrollee2").principal);
  EXPECT_EQ(details["replay"], false);
  EXPECT_NE(details["reason"].get<std::string>().find(alice_serial), std::string::npos);

  // bob with alice's bare PKCS#10 under a template that takes the
  // request's subject: refused too (another requester).
  v1::EnrollmentResult plain;
  st = Submit("enrollee2", alice_csr, "User", &plain);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
}

TEST_F(KeyOwnerTest, SamePrincipalReplayIsReportedAsReplayAndRenewalWithTheSameKeyIsAllowed) {
  ossl::UniquePtr<EVP_PKEY> key;
  std::string csr;
  const std::string request = NewArchivalRequest(&key, &csr);
  v1::EnrollmentResult first;
  ASSERT_TRUE(Submit("enrollee", request, "ArchivalUser", &first).ok());
  const std::string serial = SerialOf(first.certificate());

  v1::EnrollmentResult again;
  grpc::Status st = Submit("enrollee", request, "ArchivalUser", &again);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  EXPECT_NE(st.error_message().find("replay:"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find(serial), std::string::npos) << st.error_message();
  auto audited = AuditEvents("request.key_in_use");
  ASSERT_EQ(audited.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(audited[0].details)["replay"], true);

  // A renewal with the same key and no archival (DECISIONS.md): issued,
  // the audit record names the earlier certificate.
  v1::EnrollmentResult renewal;
  st = Submit("enrollee", csr, "User", &renewal);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(renewal.disposition(), v1::DISPOSITION_ISSUED);
  bool named = false;
  for (const auto& r : AuditEvents("request.issued")) {
    auto d = nlohmann::json::parse(r.details);
    if (d["request_id"] == renewal.request_id()) named = d.value("same_key_as", "") == serial;
  }
  EXPECT_TRUE(named) << "request.issued of the renewal does not name " << serial;
}

// The owner check reads the holders of a key by kind, not certificate by
// certificate up to a limit: an archive issued after more than a hundred
// renewals of the same key (the old limit) is still seen, and the replay of
// its request is refused.
TEST_F(KeyOwnerTest, AnArchiveAfterAHundredRenewalsOfItsKeyStillRefusesItsReplay) {
  ossl::UniquePtr<EVP_PKEY> key;
  std::string csr;
  const std::string request = NewArchivalRequest(&key, &csr);
  for (int i = 0; i < 101; ++i) {
    v1::EnrollmentResult renewal;
    grpc::Status st = Submit("enrollee", csr, "User", &renewal);
    ASSERT_TRUE(st.ok()) << i << ": " << st.error_message();
    ASSERT_EQ(renewal.disposition(), v1::DISPOSITION_ISSUED);
  }
  v1::EnrollmentResult archived;
  grpc::Status st = Submit("enrollee", request, "ArchivalUser", &archived);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(archived.disposition(), v1::DISPOSITION_ISSUED);
  const std::string serial = SerialOf(archived.certificate());

  v1::EnrollmentResult again;
  st = Submit("enrollee", request, "ArchivalUser", &again);
  ASSERT_FALSE(st.ok()) << "the key was archived twice";
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  EXPECT_NE(st.error_message().find("replay:"), std::string::npos) << st.error_message();
  EXPECT_NE(st.error_message().find(serial), std::string::npos) << st.error_message();
  auto store = OpenStore();
  EXPECT_EQ(Archives(*store), 1u);
  // Another requester sending the plain request is still refused.
  ExpectKeyRefused("enrollee2", csr, "User");
}

// The same RSA key in a second encoding (BER inside the SubjectPublicKeyInfo,
// which OpenSSL decodes to the same key, signed by it): the certificate would
// carry those bytes and be indexed under their hash, so the key would have
// two index entries and could be certified to two owners. Such a request is
// refused as not DER and stores nothing; the DER request of the same key is
// issued and then holds the key against everyone else, in any encoding.
TEST_F(KeyOwnerTest, AKeyInASecondEncodingIsRefusedAndCannotGetASecondOwner) {
  ossl::UniquePtr<EVP_PKEY> key;
  const std::string der_csr = MakeRequestDer("", 2048, &key);
  const std::string ber_csr = MakeBerKeyRequestDer("", key.get());
  ASSERT_FALSE(ber_csr.empty());
  {  // openssl itself accepts it: same key, verified signature
    WriteFile(tmp_.File("ber.der"), ber_csr);
    auto r = RunCommand(
        StrCat("openssl req -inform DER -in ", tmp_.File("ber.der"), " -noout -verify 2>&1"));
    ASSERT_NE(r.output.find("verify OK"), std::string::npos) << r.output;
  }
  auto store = OpenStore();
  auto before = store->ListRequests(std::nullopt, 1000);
  ASSERT_TRUE(before.ok());
  v1::EnrollmentResult refused;
  grpc::Status st = Submit("enrollee", ber_csr, "User", &refused);
  ASSERT_FALSE(st.ok()) << "a BER-encoded key was certified";
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("not in DER"), std::string::npos) << st.error_message();
  auto after = store->ListRequests(std::nullopt, 1000);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), before->size()) << "the refused request was stored";

  v1::EnrollmentResult issued;
  st = Submit("enrollee", der_csr, "User", &issued);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(issued.disposition(), v1::DISPOSITION_ISSUED);
  for (const char* who : {"enrollee", "enrollee2"}) {
    v1::EnrollmentResult again;
    st = Submit(who, ber_csr, "User", &again);
    EXPECT_FALSE(st.ok()) << who << ": the BER encoding of an issued key was certified";
  }
  ExpectKeyRefused("enrollee2", der_csr, "User");
}

// A PKCS#10 for the EC `key`, signed by it, with its point or curve
// written as `param` = `value` says (OpenSSL writes a key as its
// conversion-format and encoding parameters say); empty if it cannot be made.
std::string EcRequestDer(EVP_PKEY* key, const char* param, const char* value) {
  ossl::UniquePtr<EVP_PKEY> copy(EVP_PKEY_dup(key));
  if (!copy || EVP_PKEY_set_utf8_string_param(copy.get(), param, value) != 1) return {};
  auto req = UnsignedRequest("", copy.get());
  return SignedRequestDer(req.get(), key);
}

// The same EC key with a compressed or hybrid point, or with its curve
// spelled out: OpenSSL decodes each to the same key and writes it back the
// way it came, so each passes a DER check and would be indexed under its
// own hash, a second key to the one-key-one-owner check. Each is refused,
// stores nothing, and cannot take the key from the owner of the named,
// uncompressed encoding.
TEST_F(KeyOwnerTest, AnEcKeyHasOneEncoding) {
  ossl::UniquePtr<EVP_PKEY> key(EVP_EC_gen("P-256"));
  ASSERT_TRUE(key);
  auto plain_req = UnsignedRequest("", key.get());
  const std::string plain = SignedRequestDer(plain_req.get(), key.get());
  struct Variant {
    const char* name;
    std::string csr;
    const char* why;
  };
  const std::vector<Variant> variants = {
      {"compressed",
       EcRequestDer(key.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "compressed"),
       "not an uncompressed EC point"},
      {"hybrid", EcRequestDer(key.get(), OSSL_PKEY_PARAM_EC_POINT_CONVERSION_FORMAT, "hybrid"),
       "not an uncompressed EC point"},
      {"explicit", EcRequestDer(key.get(), OSSL_PKEY_PARAM_EC_ENCODING, "explicit"),
       "does not name its curve"},
  };
  auto store = OpenStore();
  auto before = store->ListRequests(std::nullopt, 1000);
  ASSERT_TRUE(before.ok());
  for (const auto& v : variants) {
    SCOPED_TRACE(v.name);
    ASSERT_FALSE(v.csr.empty());
    ASSERT_NE(v.csr, plain);
    // openssl itself accepts it: the same key, its signature verifies.
    WriteFile(tmp_.File("variant.der"), v.csr);
    auto r = RunCommand(StrCat("openssl req -inform DER -in ", tmp_.File("variant.der"),
                               " -noout -verify -text 2>&1"));
    ASSERT_NE(r.output.find("verify OK"), std::string::npos) << r.output;
    v1::EnrollmentResult refused;
    grpc::Status st = Submit("enrollee", v.csr, "ClientAuth", &refused);
    ASSERT_FALSE(st.ok()) << "a " << v.name << " EC key was certified";
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
    EXPECT_NE(st.error_message().find(v.why), std::string::npos) << st.error_message();
  }
  auto after = store->ListRequests(std::nullopt, 1000);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->size(), before->size()) << "a refused request was stored";

  v1::EnrollmentResult issued;
  grpc::Status st = Submit("enrollee", plain, "ClientAuth", &issued);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(issued.disposition(), v1::DISPOSITION_ISSUED);
  for (const auto& v : variants) {
    v1::EnrollmentResult again;
    st = Submit("enrollee2", v.csr, "ClientAuth", &again);
    EXPECT_FALSE(st.ok()) << v.name << ": a second encoding of an issued key was certified";
  }
  ExpectKeyRefused("enrollee2", plain, "ClientAuth");
}

TEST_F(KeyOwnerTest, PendingArchivalHoldsItsKeyAgainstOtherRequesters) {
  ossl::UniquePtr<EVP_PKEY> key;
  const std::string request = NewArchivalRequest(&key);
  v1::EnrollmentResult alice;
  ASSERT_TRUE(Submit("enrollee", request, "PendingArchival", &alice).ok());
  ASSERT_EQ(alice.disposition(), v1::DISPOSITION_PENDING);
  v1::EnrollmentResult bob;
  grpc::Status st = Submit("enrollee2", request, "PendingArchival", &bob);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80092005u) << st.error_message();
  EXPECT_NE(st.error_message().find(StrCat("pending request ", alice.request_id())),
            std::string::npos)
      << st.error_message();
  auto store = OpenStore();
  EXPECT_EQ(Archives(*store), 1u);
  // The pending row shows its template (officer show).
  auto show = Kw("officer", StrCat("officer show ", alice.request_id()));
  EXPECT_EQ(show.exit_code, 0) << show.output;
  EXPECT_NE(show.output.find("PendingArchival"), std::string::npos) << show.output;
}

// The template a request names itself (v2 OID in the PKCS#10, no hint) is
// stored on its row, issued or not.
TEST_F(KeyOwnerTest, TheResolvedTemplateIsOnEveryRequestRow) {
  ossl::UniquePtr<EVP_PKEY> key(EVP_RSA_gen(2048));
  pki::ArchivalRequestOptions options;
  options.template_oid = "1.3.6.1.4.1.311.21.8.1.1";  // "User" in the harness configuration
  auto csr = pki::BuildArchivalPkcs10(key.get(), options);
  ASSERT_TRUE(csr.ok()) << csr.status();
  v1::EnrollmentResult issued;
  grpc::Status st = Submit("enrollee", Str(*csr), "", &issued);
  ASSERT_TRUE(st.ok()) << st.error_message();
  // An archival request naming it: denied (User does not archive), the row still says User.
  ossl::UniquePtr<EVP_PKEY> key2(EVP_RSA_gen(2048));
  auto archival = pki::BuildArchivalRequest(key2.get(), exchange_.get(), options);
  ASSERT_TRUE(archival.ok()) << archival.status();
  v1::EnrollmentResult denied;
  st = Submit("enrollee", Str(*archival), "", &denied);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80094810u) << st.error_message();

  auto list = Kw("officer", "--json officer list");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  auto json = nlohmann::json::parse(list.output);
  ASSERT_EQ(json["requests"].size(), 2u) << list.output;
  for (const auto& r : json["requests"]) EXPECT_EQ(r["template"], "User") << r.dump();
}

// Integrity failures: one HRESULT per check, a failed row each with its
// reason and no key material, listed by `officer list --failed`; the
// request.rejected audit record stays rate limited.
TEST_F(KeyOwnerTest, IntegrityFailuresAreFailedRowsWithTheirCodeAndNoKeyMaterial) {
  ossl::UniquePtr<EVP_PKEY> key;
  std::string csr;
  ArchivalPart part;
  const std::string good = NewArchivalRequest(&key, &csr, &part);
  ossl::UniquePtr<EVP_PKEY> other(EVP_RSA_gen(2048));

  struct Case {
    std::string name;
    std::string request;
    uint32_t hresult;
    std::string words;
  };
  std::vector<Case> cases;
  {
    ArchivalPart bad_hash = part;
    bad_hash.hash = Sha1Of("something else");
    cases.push_back({"key hash", MakeCmcDer(csr, key.get(), &bad_hash), 0x80090002u,
                     "does not match the encrypted private key"});
  }
  cases.push_back({"signer", MakeCmcDer(csr, other.get(), &part), 0x8009100eu, "signer"});
  {
    // messageDigest: one bit of the signed attribute's value flipped
    // (OID 1.2.840.113549.1.9.4, SET, OCTET STRING of 32 bytes).
    std::string mutated = good;
    const std::string oid("\x06\x09\x2a\x86\x48\x86\xf7\x0d\x01\x09\x04\x31\x22\x04\x20", 15);
    const size_t at = mutated.find(oid);
    ASSERT_NE(at, std::string::npos);
    mutated[at + oid.size() + 5] ^= 0x01;
    cases.push_back({"messageDigest", mutated, 0x80091007u, "messageDigest"});
  }
  {
    // The CMS signature: the first 256-byte OCTET STRING (the encrypted
    // key's wrapped key comes later, in the unsigned attributes).
    std::string mutated = good;
    const size_t at = mutated.find(std::string("\x04\x82\x01\x00", 4));
    ASSERT_NE(at, std::string::npos);
    mutated[at + 4 + 100] ^= 0x01;
    cases.push_back({"signature", mutated, 0x80090006u, "signature does not verify"});
  }
  {
    ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
    ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
    X509_REQ_set_pubkey(req.get(), ec.get());
    X509_REQ_sign(req.get(), ec.get(), EVP_sha256());
    unsigned char* der = nullptr;
    int len = i2d_X509_REQ(req.get(), &der);
    std::string ec_csr(reinterpret_cast<char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    cases.push_back({"EC key", MakeCmcDer(ec_csr, ec.get(), &part), 0x80090008u, "EC key"});
  }
  {
    // Structure, once the PKCS#10 was read: the signed contentType
    // attribute is not id-cct-PKIData (its second occurrence; the first is
    // the eContentType). 1.3.6.1.5.5.7.12.2 -> .3
    std::string mutated = good;
    const std::string oid("\x06\x08\x2b\x06\x01\x05\x05\x07\x0c\x02", 10);
    const size_t first = mutated.find(oid);
    ASSERT_NE(first, std::string::npos);
    const size_t at = mutated.find(oid, first + 1);
    ASSERT_NE(at, std::string::npos);
    mutated[at + oid.size() - 1] = 0x03;
    cases.push_back({"contentType", mutated, 0x8009310bu, "contentType attribute"});
  }

  for (const Case& c : cases) {
    v1::EnrollmentResult result;
    grpc::Status st = Submit("enrollee", c.request, "ArchivalUser", &result);
    ASSERT_FALSE(st.ok()) << c.name;
    EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.name;
    EXPECT_EQ(DetailOf(st).hresult(), c.hresult) << c.name << ": " << st.error_message();
    EXPECT_NE(st.error_message().find(c.words), std::string::npos)
        << c.name << ": " << st.error_message();
  }

  // Listed as failed requests, newest first, with reason, code, template
  // and the request's SHA-256 (computed by openssl from the bytes sent).
  auto list = Kw("officer", "--json officer list --failed");
  ASSERT_EQ(list.exit_code, 0) << list.output;
  auto json = nlohmann::json::parse(list.output);
  ASSERT_EQ(json["requests"].size(), cases.size()) << list.output;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[cases.size() - 1 - i];
    const auto& r = json["requests"][i];
    EXPECT_EQ(r["disposition"], "failed") << c.name;
    EXPECT_EQ(r["status_code"], HResultText(c.hresult)) << c.name << ": " << r.dump();
    EXPECT_NE(r["message"].get<std::string>().find(c.words), std::string::npos) << r.dump();
    EXPECT_EQ(r["template"], "ArchivalUser") << c.name;
    EXPECT_EQ(r["has_archived_key"], false);
    EXPECT_EQ(r["requester"], daemon_->client("enrollee").principal);
    WriteFile(tmp_.File("sent.der"), c.request);
    EXPECT_EQ(r["request_sha256"], OpensslSha256(tmp_.File("sent.der"))) << c.name;
  }
  // Bytes that are not a request at all make no row: a truncated file,
  // and a CMC whose eContentType is not id-cct-PKIData (refused before its
  // PKCS#10 is read).
  {
    std::string not_pki_data = good;
    const std::string oid("\x06\x08\x2b\x06\x01\x05\x05\x07\x0c\x02", 10);
    not_pki_data[not_pki_data.find(oid) + oid.size() - 1] = 0x03;
    for (const std::string& bytes : {good.substr(0, good.size() - 40), not_pki_data}) {
      v1::EnrollmentResult result;
      grpc::Status st = Submit("enrollee", bytes, "ArchivalUser", &result);
      ASSERT_FALSE(st.ok());
      EXPECT_EQ(DetailOf(st).hresult(), 0x8009310bu) << st.error_message();
    }
    auto again = Kw("officer", "--json officer list");
    EXPECT_EQ(nlohmann::json::parse(again.output)["requests"].size(), cases.size());
  }
  // Rows past the PKCS#10 know its key (the key hash case); `officer show`.
  auto show =
      Kw("officer",
         StrCat("officer show ", json["requests"][cases.size() - 1]["request_id"].get<int64_t>()));
  ASSERT_EQ(show.exit_code, 0) << show.output;
  EXPECT_NE(show.output.find("failed"), std::string::npos) << show.output;
  EXPECT_NE(show.output.find("0x80090002"), std::string::npos) << show.output;

  // No key material anywhere in the database file: not the encrypted key
  // (nor a 64-byte piece of it), not the request bodies.
  auto store = OpenStore();
  auto failed = store->ListRequests(service::Disposition::kFailed, 100);
  ASSERT_TRUE(failed.ok());
  EXPECT_EQ(failed->size(), cases.size());
  for (const auto& r : *failed) {
    EXPECT_TRUE(r.raw.empty()) << "request " << r.id << " kept its body";
    EXPECT_FALSE(r.archived_key.has_value());
  }
  store.reset();
  const std::string db = DatabaseBytes();
  ASSERT_FALSE(db.empty());
  EXPECT_EQ(db.find(part.encrypted_key), std::string::npos);
  EXPECT_EQ(db.find(part.encrypted_key.substr(part.encrypted_key.size() / 2, 64)),
            std::string::npos);
  for (const Case& c : cases) {
    EXPECT_EQ(db.find(c.request.substr(c.request.size() / 2, 64)), std::string::npos) << c.name;
  }
  // Six refusals within a minute from one principal: one audit record.
  auto rejected = AuditEvents("request.rejected");
  ASSERT_EQ(rejected.size(), 1u);
  EXPECT_EQ(nlohmann::json::parse(rejected[0].details)["check"], "key-hash");
}

// An OAEP-SHA256 key transport: SoftHSM2 refuses the mechanism at
// C_DecryptInit (CKR_ARGUMENTS_BAD). That is the CA's token, not bad data:
// not NTE_BAD_DATA, not INVALID_ARGUMENT, a failed row and not a denial.
TEST_F(KeyOwnerTest, OaepSha256RequestIsTheTokensFailureNotTheClients) {
  ossl::UniquePtr<EVP_PKEY> key;
  std::string csr = MakeRequestDer("", 2048, &key);
  WriteFile(tmp_.File("blob.bin"), BlobOf(key.get()));
  WriteFile(tmp_.File("xchg.pem"), ToPem(exchange_.get()));
  auto enc = RunCommand(StrCat("openssl cms -encrypt -binary -outform DER -des3 -in ",
                               tmp_.File("blob.bin"), " -out ", tmp_.File("enc.der"), " -recip ",
                               tmp_.File("xchg.pem"),
                               " -keyopt rsa_padding_mode:oaep -keyopt rsa_oaep_md:sha256"));
  ASSERT_EQ(enc.exit_code, 0) << enc.output;
  ArchivalPart part;
  part.encrypted_key = Str(ReadFile(tmp_.File("enc.der")));
  part.hash = Sha1Of(part.encrypted_key);
  auto print =
      RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", tmp_.File("enc.der")));
  ASSERT_NE(print.output.find("rsaesOaep"), std::string::npos) << print.output;

  v1::EnrollmentResult result;
  grpc::Status st = Submit("enrollee", MakeCmcDer(csr, key.get(), &part), "ArchivalUser", &result);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_NE(DetailOf(st).hresult(), 0x80090005u) << st.error_message();
  for (const char* words : {"CKM_RSA_PKCS_OAEP", "CKM_SHA256", "C_DecryptInit", "CKR_ARGUMENTS_BAD",
                            "failed on the CA's side"}) {
    EXPECT_NE(st.error_message().find(words), std::string::npos)
        << words << " in " << st.error_message();
  }
  auto store = OpenStore();
  auto row = store->GetRequest(result.request_id() != 0 ? result.request_id() : 1);
  ASSERT_TRUE(row.ok());
  EXPECT_EQ(row->disposition, service::Disposition::kFailed);
  EXPECT_EQ(row->status_code, 0u);
  EXPECT_FALSE(row->archived_key.has_value());
  EXPECT_TRUE(AuditEvents("request.denied").empty());
  EXPECT_TRUE(AuditEvents("archival.refused").empty());
  EXPECT_EQ(AuditEvents("request.failed").size(), 1u);
}

// importpfx (manual archival, KRAF_ENABLEFOREIGN with -f): another CA's
// certificate naming mallory on the key this CA certified to alice is
// refused; nothing is imported.
TEST_F(KeyOwnerTest, ImportPfxOfAliceKeyUnderAnotherSubjectIsRefused) {
  ossl::UniquePtr<EVP_PKEY> key;
  v1::EnrollmentResult alice;
  grpc::Status st = Submit("enrollee", MakeRequestDer("alice pfx", 2048, &key), "User", &alice);
  ASSERT_TRUE(st.ok()) << st.error_message();
  const std::string serial = SerialOf(alice.certificate());

  SoftCa other = SoftCa::Make("Other CA");
  ossl::UniquePtr<X509> x(X509_new());
  X509_set_version(x.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(x.get()), 4242);
  auto name = pki::ParseName("CN=mallory,O=elsewhere");
  ASSERT_TRUE(name.ok());
  X509_set_subject_name(x.get(), name->get());
  X509_set_issuer_name(x.get(), X509_get_subject_name(other.cert.get()));
  X509_gmtime_adj(X509_getm_notBefore(x.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600);
  X509_set_pubkey(x.get(), key.get());
  pki::AddExtension(x.get(), other.cert.get(), NID_key_usage, "keyEncipherment");
  ASSERT_GT(X509_sign(x.get(), other.key.get(), EVP_sha256()), 0);
  WriteFile(tmp_.File("m.pem"), ToPem(x.get()));
  WriteFile(tmp_.File("m.key"), PrivateKeyPem(key.get()));
  auto exp = RunCommand(StrCat("openssl pkcs12 -export -in ", tmp_.File("m.pem"), " -inkey ",
                               tmp_.File("m.key"), " -passout pass:pw -out ", tmp_.File("m.pfx")));
  ASSERT_EQ(exp.exit_code, 0) << exp.output;

  auto imported = Kw("admin", StrCat("importpfx ", tmp_.File("m.pfx"), " -p pw -f"));
  EXPECT_NE(imported.exit_code, 0) << imported.output;
  EXPECT_NE(imported.output.find("0x80092005"), std::string::npos) << imported.output;
  EXPECT_NE(imported.output.find(serial), std::string::npos) << imported.output;
  auto store = OpenStore();
  service::CertificateQuery q;
  q.sha1 = pki::Sha1Thumbprint(x.get());
  EXPECT_TRUE(store->FindCertificates(q)->empty()) << "mallory's certificate was imported";
  EXPECT_EQ(Archives(*store), 0u);
  EXPECT_EQ(AuditEvents("archival.import_refused").size(), 1u);
}

// Schema 3 on a database made before it: a schema-2 database (the v3
// columns and indexes dropped with the sqlite3 command line) is migrated at
// open, and every stored certificate (and its request) gets the key hash
// openssl computes.
TEST(KeyIndexMigration, SchemaThreeBackfillsTheKeyHashOfStoredCertificates) {
  TempDir tmp;
  const std::string path = tmp.File("ca.db");
  SoftCa ca = SoftCa::Make("Old CA");
  SoftCa::Issued issued = ca.Issue("old-user", "emailProtection");
  std::string serial;
  {
    auto store = service::OpenSqliteStore(path);
    ASSERT_TRUE(store.ok()) << store.status();
    service::RequestRecord r;
    r.requester = "CN=old-user";
    r.template_name = "User";
    r.format = "pkcs10";
    r.raw = {0x30, 0x00};
    r.submitted_at = 1;
    auto id = (*store)->InsertRequest(r);
    ASSERT_TRUE(id.ok()) << id.status();
    auto record = service::CertificateRecordFor(issued.cert.get(), *id, "User");
    serial = record.serial;
    ASSERT_TRUE((*store)->RecordIssued(*id, record, std::nullopt, "policy", 2).ok());
  }
  auto downgrade = RunCommand(StrCat(
      "sqlite3 ", path,
      " 'DROP TABLE archive_history; DROP INDEX certificates_by_email; ALTER TABLE certificates "
      "DROP COLUMN email; "
      "DROP INDEX certificates_by_key; DROP INDEX requests_by_key; "
      "ALTER TABLE certificates DROP COLUMN spki_sha256; ALTER TABLE requests DROP COLUMN "
      "spki_sha256; ALTER TABLE requests DROP COLUMN request_sha256; PRAGMA user_version = 2;'"));
  ASSERT_EQ(downgrade.exit_code, 0) << downgrade.output;
  auto version = RunCommand(StrCat("sqlite3 ", path, " 'PRAGMA user_version'"));
  ASSERT_EQ(version.output, "2\n");

  const std::string der_path = tmp.File("old.der");
  WriteFile(der_path, pki::CertificateDer(issued.cert.get()));
  auto expected = RunCommand(StrCat("openssl x509 -inform DER -in ", der_path,
                                    " -noout -pubkey | openssl pkey -pubin -outform DER | "
                                    "openssl dgst -sha256 -r"));
  ASSERT_EQ(expected.exit_code, 0) << expected.output;

  auto store = service::OpenSqliteStore(path);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_EQ((*store)->admin().SchemaVersion(),
            5);  // 3 (key hashes), 4 (e-mail), 5 (archive history)
  auto cert = (*store)->GetCertificate(serial);
  ASSERT_TRUE(cert.ok()) << cert.status();
  EXPECT_EQ(cert->spki_sha256, expected.output.substr(0, 64));
  service::CertificateQuery q;
  q.spki_sha256 = cert->spki_sha256;
  auto found = (*store)->FindCertificates(q);
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->size(), 1u);
  auto requests = (*store)->FindRequestsByKey(cert->spki_sha256, 10);
  ASSERT_TRUE(requests.ok());
  ASSERT_EQ(requests->size(), 1u);
  EXPECT_EQ(requests->front().id, cert->request_id);
  EXPECT_TRUE((*store)->FindRequestsByKey("", 10)->empty());
  auto index = RunCommand(StrCat("sqlite3 ", path,
                                 " \"SELECT name FROM sqlite_master WHERE type = 'index' AND name "
                                 "IN ('certificates_by_key', 'requests_by_key') ORDER BY name\""));
  EXPECT_EQ(index.output, "certificates_by_key\nrequests_by_key\n");
}

}  // namespace
}  // namespace keywarden::testing
