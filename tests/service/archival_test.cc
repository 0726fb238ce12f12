// Key archival end to end: a real keywardend with real SoftHSM2 tokens
// receives Windows-format CMC archival requests, checks the submitted key,
// and archives it to round-robin KRAs. Every archive is opened with the
// independent `openssl cms -decrypt` and a KRA key in software; every
// refusal is checked for its code, for nothing issued, and for its audit.
#include <openssl/bn.h>
#include <openssl/cms.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include <gtest/gtest.h>

#include "hsm/keys.h"
#include "hsm/open.h"
#include "hsm/provider/provider.h"
#include "hsm/strings.h"
#include "keywarden/v1/keywarden.grpc.pb.h"
#include "pki/certificate.h"
#include "pki/cmc.h"
#include "pki/der.h"
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
using service::ArchivedKey;

std::string Str(const std::vector<uint8_t>& v) {
  return std::string(v.begin(), v.end());
}

// The ASN.1 shape of DER, for comparing layouts: every tag, nested; OIDs
// spelled out; the first INTEGER of a SEQUENCE (a version) with its value;
// OCTET STRINGs up to 16 bytes (IVs) with their length; a Name (SEQUENCE
// of SETs) as "Name"; other values dropped (keys, serials, ciphertext).
std::string AsnShape(std::span<const uint8_t> der) {
  auto hex = [](uint8_t tag) {
    char b[3];
    std::snprintf(b, sizeof b, "%02x", tag);
    return std::string(b);
  };
  std::string out;
  pki::DerReader r(der);
  pki::DerElement e;
  bool first = true;
  while (r.Next(&e)) {
    if ((e.tag & 0x20) != 0) {
      pki::DerReader inner(e.contents);
      pki::DerElement child;
      if (e.tag == 0x30 && inner.Next(&child) && child.tag == 0x31) {
        out += "Name ";
      } else {
        out += StrCat(hex(e.tag), "{ ", AsnShape(e.contents), "} ");
      }
    } else if (e.tag == 0x06) {
      out += StrCat("OID(", pki::OidToText(e.contents), ") ");
    } else if (e.tag == 0x02 && first && e.contents.size() == 1) {
      out += StrCat("INT(", static_cast<int>(e.contents[0]), ") ");
    } else if (e.tag == 0x04 && e.contents.size() <= 16) {
      out += StrCat("OCTETS(", e.contents.size(), ") ");
    } else {
      out += StrCat(hex(e.tag), " ");
    }
    first = false;
  }
  if (!r.empty()) out += "(not DER)";
  return out;
}

// An archival requester: its key pair and the pieces of its request.
struct Requester {
  ossl::UniquePtr<EVP_PKEY> key;
  std::string csr;
};

Requester NewRequester(const std::string& cn) {
  Requester r;
  r.csr = MakeRequestDer(cn, 2048, &r.key);
  return r;
}

std::string BlobOf(EVP_PKEY* key, uint32_t alg = pki::kCalgRsaKeyx) {
  auto blob = pki::SerializePrivateKeyBlob(key, alg);
  EXPECT_TRUE(blob.ok()) << blob.status();
  return std::string(reinterpret_cast<const char*>(blob->data()), blob->size());
}

// The Windows-format request: `plaintext` encrypted to `exchange`, hashed
// into the signed control, signed by `signer` (normally the request key).
std::string ArchivalRequest(const Requester& r, const std::string& plaintext, X509* exchange,
                            EVP_PKEY* signer = nullptr, const std::string* hash = nullptr) {
  ArchivalPart part;
  part.encrypted_key = EncryptToExchange(plaintext, exchange);
  part.hash = hash != nullptr ? *hash : Sha1Of(part.encrypted_key);
  return MakeCmcDer(r.csr, signer != nullptr ? signer : r.key.get(), &part);
}

class ArchivalTest : public ::testing::Test {
 protected:
  // Three valid KRAs from a foreign CA with a current CRL, N of them per archival.
  std::string KraToml(int count, const std::vector<std::string>& certs) {
    std::string list;
    for (const auto& c : certs) list += (list.empty() ? "\"" : ", \"") + c + "\"";
    return StrCat("\n[kra]\ncertificates = [", list, "]\ncount = ", count, "\ntrust = [\"",
                  tmp_.File("kra-ca.pem"), "\"]\ncrls = [\"", tmp_.File("kra-ca.crl"), "\"]\n");
  }

  void MakeKras(int n) {
    kra_ca_ = SoftCa::Make("KRA Issuing CA");
    WriteFile(tmp_.File("kra-ca.pem"), ToPem(kra_ca_.cert.get()));
    for (int i = 0; i < n; ++i) {
      kras_.push_back(kra_ca_.Issue(StrCat("kra", i)));
      kra_paths_.push_back(tmp_.File(StrCat("kra", i, ".pem")));
      WriteFile(kra_paths_.back(), ToPem(kras_.back().cert.get()));
      WriteFile(tmp_.File(StrCat("kra", i, ".key")), PrivateKeyPem(kras_.back().key.get()));
    }
    WriteFile(tmp_.File("kra-ca.crl"), kra_ca_.Crl());
  }

  void Start(DaemonHarness::Options options) {
    auto d = DaemonHarness::Start(options);
    ASSERT_TRUE(d.ok()) << d.status();
    daemon_ = std::move(*d);
  }

  ossl::UniquePtr<X509> Exchange() {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel("enrollee"));
    grpc::ClientContext ctx;
    v1::CertificateChain chain;
    EXPECT_TRUE(
        stub->GetExchangeCertificate(&ctx, v1::GetExchangeCertificateRequest(), &chain).ok());
    const unsigned char* p = reinterpret_cast<const unsigned char*>(chain.certificate().data());
    return ossl::UniquePtr<X509>(
        d2i_X509(nullptr, &p, static_cast<long>(chain.certificate().size())));
  }

  grpc::Status Submit(const std::string& request, const std::string& tmpl,
                      v1::EnrollmentResult* out, const std::string& who = "enrollee") {
    auto stub = v1::Enrollment::NewStub(daemon_->Channel(who));
    grpc::ClientContext ctx;
    v1::SubmitRequest in;
    in.set_request(request);
    in.set_template_name(tmpl);
    return stub->Submit(&ctx, in, out);
  }

  v1::KeyRecoveryAgents Kras(bool reload = false) {
    auto stub = v1::Administration::NewStub(daemon_->Channel("admin"));
    grpc::ClientContext ctx;
    v1::KeyRecoveryAgents out;
    grpc::Status st =
        reload ? stub->ReloadKeyRecoveryAgents(&ctx, v1::ReloadKeyRecoveryAgentsRequest(), &out)
               : stub->ListKeyRecoveryAgents(&ctx, v1::ListKeyRecoveryAgentsRequest(), &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return out;
  }

  std::unique_ptr<service::Store> OpenStore() { return OpenHarnessStore(*daemon_); }

  std::vector<service::AuditRecord> AuditEvents(const std::string& event) {
    return HarnessAuditEvents(*daemon_, event);
  }

  // `openssl cms -decrypt` of an archive with KRA `i`'s software key: the
  // PKCS#8 DER, or empty with the command's output in `error`.
  std::string OpensslDecrypt(const std::vector<uint8_t>& envelope, size_t i,
                             std::string* error = nullptr) {
    const std::string in = tmp_.File("envelope.der"), out = tmp_.File("plain.der");
    WriteFile(in, envelope);
    std::remove(out.c_str());
    auto r = RunCommand(StrCat("openssl cms -decrypt -binary -inform DER -in ", in, " -recip ",
                               kra_paths_[i], " -inkey ", tmp_.File(StrCat("kra", i, ".key")),
                               " -out ", out));
    if (r.exit_code != 0) {
      if (error != nullptr) *error = r.output;
      return {};
    }
    return Str(ReadFile(out));
  }

  // The recovered PKCS#8's public key equals `expected`'s.
  static bool SameKey(const std::string& pkcs8, EVP_PKEY* expected) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(pkcs8.data());
    ossl::UniquePtr<EVP_PKEY> k(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(pkcs8.size())));
    return k && EVP_PKEY_eq(k.get(), expected) == 1;
  }

  // A denied archival: the code, no certificate, the row denied, audited.
  void ExpectRefused(const std::string& request, const std::string& tmpl, uint32_t hresult,
                     const std::string& words) {
    const size_t refused_before = AuditEvents("archival.refused").size();
    v1::EnrollmentResult result;
    grpc::Status st = Submit(request, tmpl, &result);
    ASSERT_FALSE(st.ok()) << "expected a refusal containing \"" << words << "\"";
    EXPECT_EQ(DetailOf(st).hresult(), hresult) << st.error_message();
    EXPECT_NE(st.error_message().find(words), std::string::npos) << st.error_message();
    EXPECT_TRUE(result.certificate().empty());
    auto store = OpenStore();
    auto denied = store->ListRequests(service::Disposition::kDenied, 1);
    ASSERT_TRUE(denied.ok());
    ASSERT_FALSE(denied->empty());
    EXPECT_EQ(denied->front().status_code, hresult);
    EXPECT_FALSE(denied->front().archived_key.has_value());
    service::CertificateQuery q;
    q.request_id = denied->front().id;
    EXPECT_TRUE(store->FindCertificates(q)->empty());
    if (hresult != 0x80094800) {  // template refusals come before archival
      EXPECT_EQ(AuditEvents("archival.refused").size(), refused_before + 1) << words;
    }
  }

  TempDir tmp_;
  SoftCa kra_ca_;
  std::vector<SoftCa::Issued> kras_;
  std::vector<std::string> kra_paths_;
  std::unique_ptr<DaemonHarness> daemon_;
};

TEST_F(ArchivalTest, ThreeKrasTwoPerArchivalRoundRobinAndOpensslOpensEachArchive) {
  MakeKras(3);
  DaemonHarness::Options options;
  options.extra_toml = KraToml(2, kra_paths_);
  ASSERT_NO_FATAL_FAILURE(Start(options));

  auto status = Kras();
  ASSERT_EQ(status.agents_size(), 3);
  for (const auto& a : status.agents()) EXPECT_EQ(a.state(), "valid") << a.message();
  EXPECT_TRUE(status.archival_enabled());
  EXPECT_EQ(status.per_archival(), 2u);
  std::map<std::string, size_t> index_of;
  for (size_t i = 0; i < kras_.size(); ++i) index_of[pki::Sha1Thumbprint(kras_[i].cert.get())] = i;

  auto exchange = Exchange();
  ASSERT_TRUE(exchange);
  std::vector<std::vector<size_t>> windows;
  for (int n = 0; n < 4; ++n) {
    Requester r = NewRequester("");
    const std::string request = ArchivalRequest(r, BlobOf(r.key.get()), exchange.get());
    v1::EnrollmentResult result;
    grpc::Status st = Submit(request, "ArchivalUser", &result);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(result.disposition(), v1::DISPOSITION_ISSUED) << result.message();
    ASSERT_FALSE(result.certificate().empty());

    auto store = OpenStore();
    auto row = store->GetRequest(result.request_id());
    ASSERT_TRUE(row.ok());
    ASSERT_TRUE(row->archived_key.has_value());
    const ArchivedKey& archived = *row->archived_key;
    EXPECT_EQ(archived.scheme, "des3-rsa-pkcs1");
    ASSERT_EQ(archived.kra_sha1.size(), 2u);
    std::vector<size_t> window;
    for (const auto& sha1 : archived.kra_sha1) window.push_back(index_of.at(sha1));
    windows.push_back(window);
    // The stored request no longer carries the key encrypted to the CA.
    const std::string oid_21_13("\x06\x09\x2b\x06\x01\x04\x01\x82\x37\x15\x0d", 11);
    EXPECT_NE(request.find(oid_21_13), std::string::npos);
    EXPECT_EQ(Str(row->raw).find(oid_21_13), std::string::npos) << "the 21.13 attribute was stored";

    // Exactly the two chosen KRAs open it (openssl, software keys); the third cannot.
    ossl::UniquePtr<CMS_ContentInfo> cms;
    {
      const unsigned char* p = archived.envelope.data();
      cms.reset(d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(archived.envelope.size())));
    }
    ASSERT_TRUE(cms);
    EXPECT_EQ(sk_CMS_RecipientInfo_num(CMS_get0_RecipientInfos(cms.get())), 2);
    for (size_t i = 0; i < kras_.size(); ++i) {
      std::string error;
      const std::string pkcs8 = OpensslDecrypt(archived.envelope, i, &error);
      const bool chosen = std::find(window.begin(), window.end(), i) != window.end();
      if (chosen) {
        EXPECT_TRUE(SameKey(pkcs8, r.key.get())) << "KRA " << i << ": " << error;
      } else {
        EXPECT_TRUE(pkcs8.empty()) << "KRA " << i << " was not chosen but opened the archive";
      }
    }

    // The CMC response: CA-signed, 21.17 = SHA-1 of the certificate, 21.21 = the request's hash.
    ASSERT_FALSE(result.cmc_response().empty());
    WriteFile(tmp_.File("response.der"), result.cmc_response());
    auto verify = RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ",
                                    tmp_.File("response.der"), " -CAfile ", daemon_->ca_cert_path(),
                                    " -out ", tmp_.File("pkiresp.der")));
    ASSERT_EQ(verify.exit_code, 0) << verify.output;
    const std::string pki_response = Str(ReadFile(tmp_.File("pkiresp.der")));
    EXPECT_NE(pki_response.find(Sha1Of(result.certificate())), std::string::npos);
    EXPECT_NE(pki_response.find(Str(archived.encrypted_key_hash)), std::string::npos);
    EXPECT_NE(pki_response.find("Issued"), std::string::npos);
    auto print = RunCommand(
        StrCat("openssl cms -cmsout -print -inform DER -in ", tmp_.File("response.der")));
    EXPECT_NE(print.output.find("1.3.6.1.5.5.7.12.3"), std::string::npos) << print.output;
  }
  // Round robin: each window is two consecutive KRAs, the next starts where it ended.
  for (size_t k = 0; k < windows.size(); ++k) {
    EXPECT_EQ(windows[k][1], (windows[k][0] + 1) % 3);
    if (k > 0) {
      EXPECT_EQ(windows[k][0], (windows[k - 1][0] + 2) % 3);
    }
  }
  EXPECT_EQ(AuditEvents("archival.done").size(), 4u);
}

// The Windows vectors: a CA named CN=Issuer2 whose exchange certificate has
// the serial the requests name and whose exchange key (imported to the CA
// token for the test) is the published vector key.
TEST_F(ArchivalTest, WindowsVectorsArchiveWithTheVectorExchangeKey) {
  MakeKras(1);
  DaemonHarness::Options options;
  options.ca_subject = "CN=Issuer2";
  options.extra_toml = KraToml(1, kra_paths_);
  ASSERT_NO_FATAL_FAILURE(Start(options));
  ASSERT_TRUE(daemon_->Stop().ok());

  // The vector exchange key onto the CA token, certified by the CA key.
  const std::string vectors = KEYWARDEN_VECTORS;
  const auto pk8 = ReadRequiredFile(vectors + "/ca-exchange-key.pk8.der");
  const unsigned char* p = pk8.data();
  ossl::UniquePtr<EVP_PKEY> xkey(d2i_AutoPrivateKey(nullptr, &p, static_cast<long>(pk8.size())));
  ASSERT_TRUE(xkey);
  {
    auto uri = hsm::Pkcs11Uri::Parse("pkcs11:token=keywarden-ca");
    ASSERT_TRUE(uri.ok());
    hsm::OpenOptions open;
    open.default_module = SoftHsmFixture::module_path();
    open.pin = hsm::PinSource::File(daemon_->tokens().PinFile(SoftHsmFixture::kCaToken));
    auto token = hsm::OpenToken(*uri, open);
    ASSERT_TRUE(token.ok()) << token.status();
    hsm::KeyUsage usage;
    usage.sign = false;
    usage.decrypt = true;
    auto imported = hsm::ImportRsaPrivateKey(*token, xkey.get(), "vector-xchg", usage);
    ASSERT_TRUE(imported.ok()) << imported.status();
    auto ca_key = hsm::FindPrivateKey(*token, "ca-signing");
    ASSERT_TRUE(ca_key.ok()) << ca_key.status();
    auto crypto = hsm::CryptoContext::Create();
    ASSERT_TRUE(crypto.ok());
    auto ca_pkey = (*crypto)->Load(*ca_key);
    ASSERT_TRUE(ca_pkey.ok());
    auto ca_certs = pki::ReadPemCertificates(daemon_->ca_cert_path());
    ASSERT_TRUE(ca_certs.ok());
    X509* ca = ca_certs->front().get();

    ossl::UniquePtr<X509> x(X509_new());
    X509_set_version(x.get(), X509_VERSION_3);
    ossl::UniquePtr<BIGNUM> bn;
    BIGNUM* raw = nullptr;
    BN_hex2bn(&raw, "57de0e626d8b863629bafc07367785a1e2319737");
    bn.reset(raw);
    BN_to_ASN1_INTEGER(bn.get(), X509_get_serialNumber(x.get()));
    auto subject = pki::ParseName("CN=Issuer2-Xchg");
    X509_set_subject_name(x.get(), subject->get());
    X509_set_issuer_name(x.get(), X509_get_subject_name(ca));
    X509_gmtime_adj(X509_getm_notBefore(x.get()), -60);
    X509_gmtime_adj(X509_getm_notAfter(x.get()), 3600L * 24 * 7);
    X509_set_pubkey(x.get(), xkey.get());
    pki::AddExtension(x.get(), ca, NID_key_usage, "critical,keyEncipherment");
    pki::AddExtension(x.get(), ca, NID_ext_key_usage, "1.3.6.1.4.1.311.21.5");
    ASSERT_TRUE(
        pki::SignCertificate((*crypto)->libctx(), x.get(), ca_pkey->get(), pki::SignatureOptions{})
            .ok());

    auto store = OpenStore();
    ASSERT_TRUE(store);
    auto copy = pki::SoftwareCopy(x.get());
    const auto record = service::CertificateRecordFor(copy.get(), 0, "CAExchange");
    ASSERT_TRUE(store->InsertCertificate(record).ok());
    auto serials = store->GetSetting("exchange.serials");
    ASSERT_TRUE(serials.ok());
    ASSERT_TRUE(store->PutSetting("exchange.serials", *serials + "," + record.serial).ok());
  }
  ASSERT_TRUE(daemon_->Restart().ok());

  for (const char* name : {"user-enroll-1.der", "user-enroll-2.der", "user-enroll-3.der"}) {
    const auto request = ReadRequiredFile(vectors + "/" + name);
    v1::EnrollmentResult result;
    grpc::Status st = Submit(Str(request), "ArchivalUser", &result);
    ASSERT_TRUE(st.ok()) << name << ": " << st.error_message();
    ASSERT_EQ(result.disposition(), v1::DISPOSITION_ISSUED) << name << ": " << result.message();
    auto store = OpenStore();
    auto row = store->GetRequest(result.request_id());
    ASSERT_TRUE(row.ok());
    ASSERT_TRUE(row->archived_key.has_value()) << name;
    // The archive opens with the KRA key to the request's own private key.
    const std::string pkcs8 = OpensslDecrypt(row->archived_key->envelope, 0);
    const unsigned char* c = reinterpret_cast<const unsigned char*>(result.certificate().data());
    ossl::UniquePtr<X509> cert(
        d2i_X509(nullptr, &c, static_cast<long>(result.certificate().size())));
    ASSERT_TRUE(cert);
    EXPECT_TRUE(SameKey(pkcs8, X509_get0_pubkey(cert.get()))) << name;
    // k = 1 (no [kra] threshold) keeps the Windows layout: the stored
    // archive has exactly the ASN.1 shape of the EnvelopedData the Windows
    // client itself made for the CA (ContentInfo envelopedData, version 0,
    // one KeyTransRecipientInfo v0 by issuerAndSerialNumber, rsaEncryption
    // with NULL, id-data, des-ede3-cbc with an 8-byte IV, [0] IMPLICIT
    // ciphertext), which is what the seed's "Recovery BLOB Structure" shows.
    auto cmc = pki::ParseCmcRequest(request);
    ASSERT_TRUE(cmc.ok()) << name << ": " << cmc.status();
    ASSERT_TRUE(cmc->encrypted_key.has_value()) << name;
    const std::string windows_shape = AsnShape(*cmc->encrypted_key);
    EXPECT_NE(windows_shape.find("OID(1.2.840.113549.3.7) OCTETS(8)"), std::string::npos)
        << windows_shape;
    EXPECT_EQ(AsnShape(row->archived_key->envelope), windows_shape) << name;

    // And the recovery blob around it: openssl verifies the CA signature
    // and the signed content is the stored archive byte for byte.
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::GetArchivedKeyRequest in;
    ossl::UniquePtr<BIGNUM> serial_bn(
        ASN1_INTEGER_to_BN(X509_get0_serialNumber(cert.get()), nullptr));
    char* serial_hex = BN_bn2hex(serial_bn.get());
    in.set_search(serial_hex);
    OPENSSL_free(serial_hex);
    in.set_blob(true);
    v1::GetArchivedKeyResponse got;
    grpc::Status gst = officer->GetArchivedKey(&ctx, in, &got);
    ASSERT_TRUE(gst.ok()) << name << ": " << gst.error_message();
    const std::string blob_path = tmp_.File(StrCat(name, ".rec"));
    WriteFile(blob_path, got.recovery_blob());
    auto verify =
        RunCommand(StrCat("openssl cms -verify -binary -purpose any -inform DER -in ", blob_path,
                          " -CAfile ", daemon_->ca_cert_path(), " -out ", blob_path, ".inner"));
    ASSERT_EQ(verify.exit_code, 0) << name << ": " << verify.output;
    EXPECT_EQ(ReadFile(blob_path + ".inner"), row->archived_key->envelope) << name;
  }
  // A request encrypted to another CA's exchange certificate names it.
  v1::EnrollmentResult result;
  grpc::Status st =
      Submit(Str(ReadRequiredFile(vectors + "/user-enroll-4.der")), "ArchivalUser", &result);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x8009200cu) << st.error_message();
  EXPECT_NE(st.error_message().find("CN=msae_ca"), std::string::npos) << st.error_message();
}

TEST_F(ArchivalTest, EveryBadSubmissionIsRefusedClearlyAndNothingIsIssued) {
  MakeKras(2);
  DaemonHarness::Options options;
  options.extra_toml = KraToml(2, kra_paths_) + R"(
[[template]]
name = "SigningOnly"
key_usage = ["digitalSignature"]
archival = "allowed"
subject = "principal"

[[template]]
name = "AnyKey"
key_usage = ["keyEncipherment"]
archival = "required"
key_types = ["rsa", "ec"]
subject = "principal"
)";
  ASSERT_NO_FATAL_FAILURE(Start(options));
  auto exchange = Exchange();
  ASSERT_TRUE(exchange);

  // The private key of somebody else.
  Requester r = NewRequester("");
  Requester other = NewRequester("");
  ExpectRefused(ArchivalRequest(r, BlobOf(other.key.get()), exchange.get()), "ArchivalUser",
                0x80090003, "does not pair with the request's public key");
  // A Windows AT_SIGNATURE blob.
  ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get(), pki::kCalgRsaSign), exchange.get()),
                "ArchivalUser", 0x8009000a, "signature key");
  // A template that issues signature-only certificates.
  ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "SigningOnly", 0x8009000a,
                "signature-only");
  // Not a key at all.
  ExpectRefused(ArchivalRequest(r, std::string(300, 'x'), exchange.get()), "ArchivalUser",
                0x80090005, "not usable");
  // A damaged envelope (EnvelopedData's version an OCTET STRING, hashed as
  // sent): once freed twice by the daemon. Refused, and the daemon answers
  // the next request.
  {
    ArchivalPart part;
    part.encrypted_key = EncryptToExchange(BlobOf(r.key.get()), exchange.get());
    // ContentInfo SEQUENCE (4) + OID (11) + [0] (4) + SEQUENCE (4): version.
    ASSERT_EQ(part.encrypted_key.substr(23, 3), std::string("\x02\x01\x00", 3));
    part.encrypted_key[23] = 0x04;
    part.hash = Sha1Of(part.encrypted_key);
    ExpectRefused(MakeCmcDer(r.csr, r.key.get(), &part), "ArchivalUser", 0x8009400c,
                  "is not a DER CMS ContentInfo");
  }
  // Encrypted to an exchange certificate this CA never made.
  {
    SoftCa rogue = SoftCa::Make("Rogue CA");
    auto fake = rogue.Issue("Rogue-Xchg", "1.3.6.1.4.1.311.21.5");
    ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get()), fake.cert.get()), "ArchivalUser",
                  0x8009200c, "CN=Rogue CA");
  }
  // A template that does not archive, and one this CA does not offer.
  ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "User", 0x80094810,
                "does not archive keys");
  ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "NoSuchTemplate",
                0x80094800, "NoSuchTemplate");

  // Refused by an integrity check: tampered hash, wrong signer, EC key. Each
  // is a failed row with its code, and nothing of the key is stored
  // (tests/service/key_owner_test.cc checks the database bytes).
  auto store = OpenStore();
  const size_t rows_before = store->ListRequests(std::nullopt, 100000)->size();
  {
    const std::string wrong_hash = Sha1Of("something else");
    v1::EnrollmentResult result;
    grpc::Status st =
        Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get(), nullptr, &wrong_hash),
               "ArchivalUser", &result);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(DetailOf(st).hresult(), 0x80090002u) << st.error_message();
    EXPECT_NE(st.error_message().find("does not match the encrypted private key"),
              std::string::npos)
        << st.error_message();
  }
  {
    v1::EnrollmentResult result;
    grpc::Status st =
        Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get(), other.key.get()),
               "ArchivalUser", &result);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(DetailOf(st).hresult(), 0x8009100eu) << st.error_message();
    EXPECT_NE(st.error_message().find("signer"), std::string::npos) << st.error_message();
  }
  {
    ossl::UniquePtr<EVP_PKEY> ec(EVP_EC_gen("P-256"));
    ossl::UniquePtr<X509_REQ> req(X509_REQ_new());
    X509_REQ_set_pubkey(req.get(), ec.get());
    X509_REQ_sign(req.get(), ec.get(), EVP_sha256());
    unsigned char* der = nullptr;
    int len = i2d_X509_REQ(req.get(), &der);
    Requester ecr;
    ecr.csr.assign(reinterpret_cast<char*>(der), static_cast<size_t>(len));
    OPENSSL_free(der);
    ArchivalPart part;
    part.encrypted_key = EncryptToExchange(BlobOf(r.key.get()), exchange.get());
    part.hash = Sha1Of(part.encrypted_key);
    v1::EnrollmentResult result;
    grpc::Status st = Submit(MakeCmcDer(ecr.csr, ec.get(), &part), "AnyKey", &result);
    ASSERT_FALSE(st.ok());
    EXPECT_EQ(DetailOf(st).hresult(), 0x80090008u) << st.error_message();
    EXPECT_NE(st.error_message().find("RSA"), std::string::npos) << st.error_message();
  }
  auto after = store->ListRequests(std::nullopt, 100000);
  ASSERT_TRUE(after.ok());
  ASSERT_EQ(after->size(), rows_before + 3);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*after)[i].disposition, service::Disposition::kFailed);
    EXPECT_TRUE((*after)[i].raw.empty());
    EXPECT_FALSE((*after)[i].archived_key.has_value());
  }

  // A PKCS#8 plaintext (not a Windows blob) is accepted.
  auto pkcs8 = pki::ToPkcs8(r.key.get());
  ASSERT_TRUE(pkcs8.ok());
  v1::EnrollmentResult result;
  grpc::Status st = Submit(
      ArchivalRequest(r, std::string(reinterpret_cast<const char*>(pkcs8->data()), pkcs8->size()),
                      exchange.get()),
      "ArchivalUser", &result);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(result.disposition(), v1::DISPOSITION_ISSUED);
  // An archival template refuses a request without a key.
  v1::EnrollmentResult plain;
  st = Submit(r.csr, "ArchivalUser", &plain);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(DetailOf(st).hresult(), 0x80094804u);
}

TEST_F(ArchivalTest, WithoutKrasArchivalIsNotConfigured) {
  ASSERT_NO_FATAL_FAILURE(Start(DaemonHarness::Options()));
  auto status = Kras();
  EXPECT_EQ(status.agents_size(), 0);
  EXPECT_FALSE(status.archival_enabled());
  EXPECT_EQ(status.archival_status_code(), 0x8009400au);
  auto exchange = Exchange();
  Requester r = NewRequester("");
  ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "ArchivalUser", 0x8009400a,
                "not configured for key archival");
}

TEST_F(ArchivalTest, UnusableKrasAreReportedAuditedAndTooFewRefuseArchival) {
  MakeKras(1);                                         // kra0: valid
  SoftCa offline_ca = SoftCa::Make("Offline KRA CA");  // trusted, publishes no CRL yet
  SoftCa untrusted_ca = SoftCa::Make("Untrusted KRA CA");
  WriteFile(tmp_.File("offline-ca.pem"), ToPem(offline_ca.cert.get()));
  struct Bad {
    std::string name;
    SoftCa::Issued issued;
    std::string state;
  };
  std::vector<Bad> bad;
  bad.push_back({"expired", kra_ca_.Issue("expired", kKraEku, -7200, -3600), "expired"});
  bad.push_back({"revoked", kra_ca_.Issue("revoked"), "revoked"});
  bad.push_back({"no-eku", kra_ca_.Issue("no-eku", "clientAuth"), "not-a-kra-certificate"});
  bad.push_back({"offline", offline_ca.Issue("offline"), "revocation-offline"});
  bad.push_back({"untrusted", untrusted_ca.Issue("untrusted"), "untrusted"});
  kra_ca_.revoked.push_back(bad[1].issued.cert.get());
  WriteFile(tmp_.File("kra-ca.crl"), kra_ca_.Crl());
  std::vector<std::string> paths = {kra_paths_[0]};
  for (auto& b : bad) {
    paths.push_back(tmp_.File(b.name + ".pem"));
    WriteFile(paths.back(), ToPem(b.issued.cert.get()));
    WriteFile(tmp_.File(b.name + ".key"), PrivateKeyPem(b.issued.key.get()));
  }
  paths.push_back(tmp_.File("missing.pem"));
  paths.push_back("0123456789abcdef0123456789abcdef01234567");

  DaemonHarness::Options options;
  options.extra_toml =
      StrCat("\n[kra]\ncertificates = [\"", StrJoin(paths, "\", \""), "\"]\ncount = 2\ntrust = [\"",
             tmp_.File("kra-ca.pem"), "\", \"", tmp_.File("offline-ca.pem"), "\"]\ncrls = [\"",
             tmp_.File("kra-ca.crl"), "\", \"", tmp_.File("offline-ca.crl"), "\"]\n");
  ASSERT_NO_FATAL_FAILURE(Start(options));

  auto status = Kras();
  ASSERT_EQ(status.agents_size(), 8);
  EXPECT_EQ(status.agents(0).state(), "valid") << status.agents(0).message();
  for (size_t i = 0; i < bad.size(); ++i) {
    const auto& a = status.agents(static_cast<int>(i + 1));
    EXPECT_EQ(a.state(), bad[i].state) << bad[i].name << ": " << a.message();
    EXPECT_FALSE(a.message().empty());
    EXPECT_NE(a.status_code(), 0u);
  }
  EXPECT_NE(status.agents(4).message().find("revocation server was offline"), std::string::npos);
  EXPECT_EQ(status.agents(4).status_code(), 0x80092013u);
  EXPECT_EQ(status.agents(2).status_code(), 0x80092010u);
  EXPECT_EQ(status.agents(6).state(), "not-found");
  EXPECT_EQ(status.agents(7).state(), "not-found");
  EXPECT_EQ(status.agents(7).status_code(), 0x80092004u);
  EXPECT_FALSE(status.archival_enabled());
  EXPECT_EQ(status.archival_status_code(), 0x8009400bu);
  EXPECT_EQ(AuditEvents("kra.unusable").size(), 7u);
  EXPECT_EQ(AuditEvents("kra.archival_disabled").size(), 1u);

  auto exchange = Exchange();
  Requester r = NewRequester("");
  ExpectRefused(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "ArchivalUser", 0x8009400b,
                "1 of 8 configured KRA certificates are valid");

  // The offline issuer publishes a CRL; a reload makes its KRA usable.
  WriteFile(tmp_.File("offline-ca.crl"), offline_ca.Crl());
  status = Kras(/*reload=*/true);
  EXPECT_EQ(status.agents(4).state(), "valid") << status.agents(4).message();
  EXPECT_TRUE(status.archival_enabled());
  v1::EnrollmentResult result;
  grpc::Status st =
      Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "ArchivalUser", &result);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(result.disposition(), v1::DISPOSITION_ISSUED);
  auto row = OpenStore()->GetRequest(result.request_id());
  ASSERT_TRUE(row.ok() && row->archived_key);
  std::set<std::string> used(row->archived_key->kra_sha1.begin(),
                             row->archived_key->kra_sha1.end());
  EXPECT_EQ(used, (std::set<std::string>{pki::Sha1Thumbprint(kras_[0].cert.get()),
                                         pki::Sha1Thumbprint(bad[3].issued.cert.get())}));
}

// A KRA certificate issued by this CA, named by thumbprint; revoking it and
// reloading takes it out of use.
TEST_F(ArchivalTest, KraIssuedByThisCaIsCheckedAgainstItsDatabase) {
  DaemonHarness::Options options;
  options.extra_toml = R"(
[[template]]
name = "KeyRecoveryAgent"
key_usage = ["keyEncipherment"]
extended_key_usage = ["1.3.6.1.4.1.311.21.6"]
enrollees = ["CN=alice,O=keywarden test"]
)";
  ASSERT_NO_FATAL_FAILURE(Start(options));
  ossl::UniquePtr<EVP_PKEY> kra_key;
  const std::string csr = MakeRequestDer("Recovery Agent", 2048, &kra_key);
  v1::EnrollmentResult kra;
  ASSERT_TRUE(Submit(csr, "KeyRecoveryAgent", &kra).ok());
  ASSERT_EQ(kra.disposition(), v1::DISPOSITION_ISSUED);
  const unsigned char* p = reinterpret_cast<const unsigned char*>(kra.certificate().data());
  ossl::UniquePtr<X509> kra_cert(
      d2i_X509(nullptr, &p, static_cast<long>(kra.certificate().size())));
  const std::string thumbprint = pki::Sha1Thumbprint(kra_cert.get());

  ASSERT_TRUE(daemon_->Stop().ok());
  {
    std::ofstream config(daemon_->config_path(), std::ios::app);
    config << "\n[kra]\ncertificates = [\"" << thumbprint << "\"]\ncount = 1\n";
  }
  ASSERT_TRUE(daemon_->Restart().ok());
  auto status = Kras();
  ASSERT_EQ(status.agents_size(), 1);
  EXPECT_EQ(status.agents(0).state(), "valid") << status.agents(0).message();
  EXPECT_TRUE(status.agents(0).issued_by_this_ca());

  auto exchange = Exchange();
  Requester r = NewRequester("");
  v1::EnrollmentResult result;
  ASSERT_TRUE(
      Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "ArchivalUser", &result)
          .ok());
  EXPECT_EQ(result.disposition(), v1::DISPOSITION_ISSUED);

  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::RevokeRequest revoke;
  revoke.set_serial(service::SerialHex(kra_cert.get()));
  revoke.set_reason(1);
  v1::CertificateInfo revoked;
  ASSERT_TRUE(officer->Revoke(&ctx, revoke, &revoked).ok());
  status = Kras(/*reload=*/true);
  EXPECT_EQ(status.agents(0).state(), "revoked");
  EXPECT_FALSE(status.archival_enabled());
  // A new key: sending r's again would be a replay (one key, one owner).
  Requester r2 = NewRequester("");
  ExpectRefused(ArchivalRequest(r2, BlobOf(r2.key.get()), exchange.get()), "ArchivalUser",
                0x8009400b, "0 of 1");
}

// Pending archival, the modern scheme, and manual archival with the CLI.
TEST_F(ArchivalTest, PendingArchivalModernSchemeAndImportPfx) {
  MakeKras(3);
  DaemonHarness::Options options;
  options.extra_flags = "enable_foreign = true\narchival_scheme = \"aes256-rsa-oaep\"";
  options.extra_toml = KraToml(1, kra_paths_) + R"(
[[template]]
name = "PendingArchival"
key_usage = ["keyEncipherment"]
archival = "required"
pend = true
subject = "principal"

[[template]]
name = "ArchivalAllowed"
key_usage = ["digitalSignature", "keyEncipherment"]
archival = "allowed"
enrollees = ["enrollee"]
)";
  ASSERT_NO_FATAL_FAILURE(Start(options));
  auto exchange = Exchange();
  ASSERT_TRUE(exchange);

  // Pending: archived at submission (to KRAs, not kept for the CA), issued on approval.
  Requester r = NewRequester("");
  v1::EnrollmentResult pending;
  ASSERT_TRUE(
      Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "PendingArchival", &pending)
          .ok());
  ASSERT_EQ(pending.disposition(), v1::DISPOSITION_PENDING);
  EXPECT_FALSE(pending.cmc_response().empty());
  std::vector<uint8_t> envelope;
  {
    auto row = OpenStore()->GetRequest(pending.request_id());
    ASSERT_TRUE(row.ok() && row->archived_key);
    EXPECT_EQ(row->archived_key->scheme, "aes256-rsa-oaep");
    envelope = row->archived_key->envelope;
  }
  auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
  grpc::ClientContext ctx;
  v1::ApproveRequest approve;
  approve.set_request_id(pending.request_id());
  v1::EnrollmentResult issued;
  grpc::Status st = officer->Approve(&ctx, approve, &issued);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(issued.disposition(), v1::DISPOSITION_ISSUED) << issued.message();
  auto row = OpenStore()->GetRequest(pending.request_id());
  ASSERT_TRUE(row.ok() && row->archived_key);
  EXPECT_EQ(row->archived_key->envelope, envelope);
  // AES-256 + RSA-OAEP opens with openssl too.
  size_t kra = 0;
  for (size_t i = 0; i < kras_.size(); ++i) {
    if (row->archived_key->kra_sha1[0] == pki::Sha1Thumbprint(kras_[i].cert.get())) kra = i;
  }
  std::string error;
  EXPECT_TRUE(SameKey(OpensslDecrypt(envelope, kra, &error), r.key.get())) << error;
  auto print =
      RunCommand(StrCat("openssl cms -cmsout -print -inform DER -in ", tmp_.File("envelope.der")));
  EXPECT_NE(print.output.find("aes-256-cbc"), std::string::npos) << print.output;
  EXPECT_NE(print.output.find("rsaesOaep"), std::string::npos) << print.output;

  // importpfx: a certificate this CA issued without archival.
  const auto cli = [&](const std::string& who, const std::string& args) {
    const auto& id = daemon_->client(who);
    return RunCommand(StrCat(KEYWARDEN_CLI, " --server ", daemon_->target(), " --client-cert ",
                             id.cert_path, " --client-key ", id.key_path, " --server-ca ",
                             daemon_->tls_ca_path(), " --server-name localhost ", args));
  };
  ossl::UniquePtr<EVP_PKEY> key;
  v1::EnrollmentResult plain;
  ASSERT_TRUE(Submit(MakeRequestDer("pfx user", 2048, &key), "ArchivalAllowed", &plain).ok());
  ASSERT_EQ(plain.disposition(), v1::DISPOSITION_ISSUED);
  {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(plain.certificate().data());
    ossl::UniquePtr<X509> cert(
        d2i_X509(nullptr, &p, static_cast<long>(plain.certificate().size())));
    WriteFile(tmp_.File("user.pem"), ToPem(cert.get()));
  }
  WriteFile(tmp_.File("user.key"), PrivateKeyPem(key.get()));
  WriteFile(tmp_.File("pw"), "s3cret pfx\n");
  auto exp = RunCommand(StrCat("openssl pkcs12 -export -in ", tmp_.File("user.pem"), " -inkey ",
                               tmp_.File("user.key"), " -passout pass:'s3cret pfx' -out ",
                               tmp_.File("user.pfx")));
  ASSERT_EQ(exp.exit_code, 0) << exp.output;
  auto wrong = cli("admin", StrCat("importpfx ", tmp_.File("user.pfx"), " -p nope"));
  EXPECT_NE(wrong.exit_code, 0);
  EXPECT_NE(wrong.output.find("wrong password"), std::string::npos) << wrong.output;
  EXPECT_EQ(cli("officer", StrCat("importpfx ", tmp_.File("user.pfx"),
                                  " --password-source file:", tmp_.File("pw")))
                .exit_code,
            3);
  auto ok = cli("admin", StrCat("importpfx ", tmp_.File("user.pfx"),
                                " --password-source file:", tmp_.File("pw")));
  ASSERT_EQ(ok.exit_code, 0) << ok.output;
  row = OpenStore()->GetRequest(plain.request_id());
  ASSERT_TRUE(row.ok() && row->archived_key);
  kra = 0;
  for (size_t i = 0; i < kras_.size(); ++i) {
    if (row->archived_key->kra_sha1[0] == pki::Sha1Thumbprint(kras_[i].cert.get())) kra = i;
  }
  EXPECT_TRUE(SameKey(OpensslDecrypt(row->archived_key->envelope, kra, &error), key.get()))
      << error;
  auto again = cli("admin", StrCat("importpfx ", tmp_.File("user.pfx"),
                                   " --password-source file:", tmp_.File("pw")));
  EXPECT_NE(again.exit_code, 0);
  EXPECT_NE(again.output.find("already archived"), std::string::npos) << again.output;

  // A foreign certificate: refused without -f, archived with it (KRAF_ENABLEFOREIGN is set).
  SoftCa other = SoftCa::Make("Other CA");
  auto foreign = other.Issue("foreign user", "emailProtection");
  WriteFile(tmp_.File("f.pem"), ToPem(foreign.cert.get()));
  WriteFile(tmp_.File("f.key"), PrivateKeyPem(foreign.key.get()));
  exp = RunCommand(StrCat("openssl pkcs12 -export -in ", tmp_.File("f.pem"), " -inkey ",
                          tmp_.File("f.key"), " -passout pass:pw -out ", tmp_.File("f.pfx")));
  ASSERT_EQ(exp.exit_code, 0) << exp.output;
  auto refused = cli("admin", StrCat("importpfx ", tmp_.File("f.pfx"), " -p pw"));
  EXPECT_NE(refused.exit_code, 0);
  EXPECT_NE(refused.output.find("0x80092004"), std::string::npos) << refused.output;
  EXPECT_NE(refused.output.find("KRAF_ENABLEFOREIGN"), std::string::npos) << refused.output;
  auto imported = cli("admin", StrCat("--json importpfx ", tmp_.File("f.pfx"), " -p pw -f"));
  ASSERT_EQ(imported.exit_code, 0) << imported.output;
  EXPECT_NE(imported.output.find("\"foreign\": true"), std::string::npos) << imported.output;
  service::CertificateQuery q;
  q.sha1 = pki::Sha1Thumbprint(foreign.cert.get());
  auto found = OpenStore()->FindCertificates(q);
  ASSERT_TRUE(found.ok());
  ASSERT_EQ(found->size(), 1u);
  // A signature-only certificate's key is never archived.
  auto signer =
      other.Issue("signer", "emailProtection", -3600, 3600L * 24, "critical,digitalSignature");
  WriteFile(tmp_.File("s.pem"), ToPem(signer.cert.get()));
  WriteFile(tmp_.File("s.key"), PrivateKeyPem(signer.key.get()));
  exp = RunCommand(StrCat("openssl pkcs12 -export -in ", tmp_.File("s.pem"), " -inkey ",
                          tmp_.File("s.key"), " -passout pass:pw -out ", tmp_.File("s.pfx")));
  ASSERT_EQ(exp.exit_code, 0);
  auto sig = cli("admin", StrCat("importpfx ", tmp_.File("s.pfx"), " -p pw -f"));
  EXPECT_NE(sig.exit_code, 0);
  EXPECT_NE(sig.output.find("signature certificate"), std::string::npos) << sig.output;
  EXPECT_GE(AuditEvents("archival.imported").size(), 2u);
  EXPECT_GE(AuditEvents("archival.import_refused").size(), 3u);
}

// A pended archival request holds its archived key (encrypted to KRAs);
// denied by a Certificate Manager, or denied by policy when approved, it
// loses it in the same transaction, unless [flags] save_bad_request_key
// (KRAF_SAVEBADREQUESTKEY) keeps it. Either way is audited.
TEST_F(ArchivalTest, DeniedPendingArchivalLosesItsKeyUnlessSaveBadRequestKey) {
  MakeKras(3);
  DaemonHarness::Options options;
  options.extra_toml = KraToml(1, kra_paths_) + R"(
[[template]]
name = "PendingArchival"
key_usage = ["keyEncipherment"]
archival = "required"
pend = true
subject = "principal"
)";
  ASSERT_NO_FATAL_FAILURE(Start(options));
  auto exchange = Exchange();
  ASSERT_TRUE(exchange);
  auto submit_pending = [&](const std::string& tmpl) -> int64_t {
    Requester r = NewRequester("");
    v1::EnrollmentResult pending;
    grpc::Status st =
        Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), tmpl, &pending);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(pending.disposition(), v1::DISPOSITION_PENDING);
    auto row = OpenStore()->GetRequest(pending.request_id());
    EXPECT_TRUE(row.ok() && row->archived_key) << "a pending archival request holds its key";
    return pending.request_id();
  };
  // The row's archived-key columns, read with the database's own client
  // (sqlite3 or psql; 1/0 as integers on both).
  auto key_columns = [&](int64_t id) {
    auto r = RunCommand(daemon_->SqlCommand(
        StrCat("SELECT CAST(archived_key IS NULL AS INTEGER), "
               "CAST(archival_scheme IS NULL AS INTEGER), CAST(kra_sha1 IS NULL AS INTEGER), "
               "CAST(encrypted_key_hash IS NULL AS INTEGER) FROM requests WHERE id = ",
               id)));
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return r.output;
  };
  auto audited = [&](const std::string& event, int64_t id) {
    size_t n = 0;
    for (const auto& a : AuditEvents(event)) {
      if (a.details.find(StrCat("\"request_id\":", id, ",")) != std::string::npos ||
          a.details.find(StrCat("\"request_id\":", id, "}")) != std::string::npos) {
        ++n;
      }
    }
    return n;
  };
  // Denied by the Certificate Manager; what Officer/GetRequest says after.
  auto deny = [&](int64_t id) {
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::DenyRequest in;
    in.set_request_id(id);
    in.set_reason("not this one");
    v1::RequestInfo out;
    grpc::Status st = officer->Deny(&ctx, in, &out);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(out.disposition(), v1::DISPOSITION_DENIED);
    grpc::ClientContext get_ctx;
    v1::GetRequestRequest get;
    get.set_request_id(id);
    v1::RequestInfo info;
    st = officer->GetRequest(&get_ctx, get, &info);
    EXPECT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(info.has_archived_key(), out.has_archived_key());
    return info;
  };

  // 1. Denied by a Certificate Manager: the key is gone.
  const int64_t denied = submit_pending("PendingArchival");
  EXPECT_FALSE(deny(denied).has_archived_key());
  {
    auto row = OpenStore()->GetRequest(denied);
    ASSERT_TRUE(row.ok()) << row.status();
    EXPECT_EQ(row->disposition, service::Disposition::kDenied);
    EXPECT_FALSE(row->archived_key.has_value());
  }
  EXPECT_EQ(key_columns(denied), "1|1|1|1\n");
  EXPECT_EQ(audited("archival.key_discarded", denied), 1u);
  EXPECT_EQ(audited("archival.key_kept", denied), 0u);
  EXPECT_EQ(audited("request.denied", denied), 1u);

  // 2. Denied by policy on approval (its template is gone from the
  // configuration when the Certificate Manager approves it): gone too.
  const int64_t orphan = submit_pending("PendingArchival");
  ASSERT_TRUE(daemon_->Stop().ok());
  {
    auto text = ReadFile(daemon_->config_path());
    std::string config(text.begin(), text.end());
    const std::string from = "name = \"PendingArchival\"";
    ASSERT_NE(config.find(from), std::string::npos);
    config.replace(config.find(from), from.size(), "name = \"PendingArchival2\"");
    WriteFile(daemon_->config_path(), config);
  }
  ASSERT_TRUE(daemon_->Restart().ok());
  {
    auto officer = v1::Officer::NewStub(daemon_->Channel("officer"));
    grpc::ClientContext ctx;
    v1::ApproveRequest approve;
    approve.set_request_id(orphan);
    v1::EnrollmentResult out;
    grpc::Status st = officer->Approve(&ctx, approve, &out);
    EXPECT_FALSE(st.ok());
    EXPECT_EQ(DetailOf(st).hresult(), 0x80094800u) << st.error_message();
  }
  EXPECT_EQ(OpenStore()->GetRequest(orphan)->disposition, service::Disposition::kDenied);
  EXPECT_EQ(key_columns(orphan), "1|1|1|1\n");
  EXPECT_EQ(audited("archival.key_discarded", orphan), 1u);

  // 3. With save_bad_request_key = true the denied request keeps its key.
  ASSERT_TRUE(daemon_->Stop().ok());
  {
    auto text = ReadFile(daemon_->config_path());
    std::string config(text.begin(), text.end());
    ASSERT_NE(config.find("[flags]\n"), std::string::npos);
    config.replace(config.find("[flags]\n"), 8, "[flags]\nsave_bad_request_key = true\n");
    WriteFile(daemon_->config_path(), config);
  }
  ASSERT_TRUE(daemon_->Restart().ok());
  const int64_t kept = submit_pending("PendingArchival2");
  std::vector<uint8_t> envelope = OpenStore()->GetRequest(kept)->archived_key->envelope;
  EXPECT_TRUE(deny(kept).has_archived_key());
  {
    auto row = OpenStore()->GetRequest(kept);
    ASSERT_TRUE(row.ok()) << row.status();
    EXPECT_EQ(row->disposition, service::Disposition::kDenied);
    ASSERT_TRUE(row->archived_key.has_value());
    EXPECT_EQ(row->archived_key->envelope, envelope);
  }
  EXPECT_EQ(key_columns(kept), "0|0|0|0\n");
  EXPECT_EQ(audited("archival.key_kept", kept), 1u);
  EXPECT_EQ(audited("archival.key_discarded", kept), 0u);
  // The earlier ones stay discarded.
  EXPECT_EQ(key_columns(denied), "1|1|1|1\n");
}

// The seed's event 86: a CA token that cannot do what archival needs. The
// SoftHSM2 configuration the daemon starts with disables 3DES CBC (the
// Windows scheme's content cipher); the ceremony made the CA with the full
// token. Archival is refused with 0x80090019 (the CA's side: the request is
// failed, never denied), non-archival enrollment still issues, health takes
// Enrollment out, --check-config says it; once the token is back from an
// outage with 3DES enabled again, the self-test runs again and archival
// works without a restart.
TEST_F(ArchivalTest, ATokenFailingTheArchivalSelfTestRefusesArchivalOnlyWithEvent86) {
  MakeKras(1);
  DaemonHarness::Options options;
  options.extra_toml = KraToml(1, kra_paths_);
  std::string full_conf;
  options.before_launch = [&full_conf](DaemonHarness& h) {
    const std::vector<uint8_t> bytes = ReadFile(h.tokens().conf_path());
    full_conf.assign(bytes.begin(), bytes.end());
    // SoftHSM2 2.6.1 skips the first name of a "-" list: CKM_MD5 stands there.
    WriteFile(h.tokens().conf_path(),
              full_conf + "\nslots.mechanisms = -CKM_MD5,CKM_DES3_CBC_PAD,CKM_DES3_CBC\n");
    return absl::OkStatus();
  };
  ASSERT_NO_FATAL_FAILURE(Start(options));
  constexpr char kEvent86[] =
      "Certificate Services could not use the provider specified in the registry for encryption "
      "keys. The keyset is not defined.";
  // The event line, with the failed mechanism and its CKR value.
  ASSERT_TRUE(daemon_->WaitForLog(StrCat(kEvent86, " 0x80090019 (-2146893799)"), 1).ok());
  ASSERT_TRUE(daemon_->WaitForLog("CKM_DES3_CBC_PAD encrypt -> CKR_MECHANISM_INVALID", 1).ok());
  ASSERT_TRUE(
      daemon_->WaitForLog("did not switch to a default provider for encryption keys", 1).ok());
  EXPECT_EQ(AuditEvents("archival.selftest_failed").size(), 1u);

  // An archival request: refused with the seed's message and code, as the
  // CA's fault (FAILED_PRECONDITION, recorded as failed, not denied).
  auto exchange = Exchange();
  ASSERT_TRUE(exchange);
  Requester r = NewRequester("");
  v1::EnrollmentResult refused;
  grpc::Status st =
      Submit(ArchivalRequest(r, BlobOf(r.key.get()), exchange.get()), "ArchivalUser", &refused);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(st.error_code(), grpc::StatusCode::FAILED_PRECONDITION) << st.error_message();
  EXPECT_EQ(DetailOf(st).hresult(), 0x80090019u) << st.error_message();
  EXPECT_EQ(DetailOf(st).symbol(), "NTE_KEYSET_NOT_DEF");
  EXPECT_TRUE(Contains(st.error_message(), kEvent86)) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "failed on the CA's side")) << st.error_message();
  EXPECT_TRUE(Contains(st.error_message(), "CKM_DES3_CBC_PAD encrypt -> CKR_MECHANISM_INVALID"))
      << st.error_message();
  EXPECT_TRUE(refused.certificate().empty());
  {
    auto store = OpenStore();
    auto failed = store->ListRequests(service::Disposition::kFailed, 10);
    ASSERT_TRUE(failed.ok());
    ASSERT_EQ(failed->size(), 1u);
    EXPECT_EQ(failed->front().status_code, 0x80090019u);
    EXPECT_FALSE(failed->front().archived_key.has_value());
    auto denied = store->ListRequests(service::Disposition::kDenied, 10);
    ASSERT_TRUE(denied.ok());
    EXPECT_TRUE(denied->empty()) << "a CA-side fault must not deny the request";
    service::CertificateQuery q;
    q.request_id = failed->front().id;
    EXPECT_TRUE(store->FindCertificates(q)->empty());
  }

  // Everything else is served: a request without archival is issued, and
  // its certificate verifies (openssl) under the CA's.
  Requester plain = NewRequester("");
  v1::EnrollmentResult issued;
  st = Submit(plain.csr, "User", &issued);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(issued.disposition(), v1::DISPOSITION_ISSUED) << issued.message();
  {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(issued.certificate().data());
    ossl::UniquePtr<X509> cert(
        d2i_X509(nullptr, &p, static_cast<long>(issued.certificate().size())));
    ASSERT_TRUE(cert);
    WriteFile(tmp_.File("issued.pem"), ToPem(cert.get()));
    auto verify = RunCommand(
        StrCat("openssl verify -CAfile ", daemon_->ca_cert_path(), " ", tmp_.File("issued.pem")));
    EXPECT_EQ(verify.exit_code, 0) << verify.output;
  }
  // Health: Enrollment (which archives) and the whole server are out; the
  // services that do not archive serve.
  auto channel = daemon_->Channel("nobody");
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Enrollment"), 2);
  EXPECT_EQ(HealthOf(channel, ""), 2);
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Officer"), 1);
  EXPECT_EQ(HealthOf(channel, "keywarden.v1.Signing"), 1);

  // --check-config runs the same self-test and reports it.
  auto check = RunCommand(
      StrCat(KEYWARDEN_DAEMON, " --config ", daemon_->config_path(), " --check-config 2>&1"));
  EXPECT_EQ(check.exit_code, 1) << check.output;
  EXPECT_TRUE(Contains(check.output, StrCat("FAIL  archival self-test: ", kEvent86)))
      << check.output;
  EXPECT_TRUE(Contains(check.output, "CKM_DES3_CBC_PAD encrypt -> CKR_MECHANISM_INVALID"))
      << check.output;

  // 3DES back in the configuration; the token goes away and comes back (the
  // module is re-initialised and reads its configuration again): the
  // self-test runs again after the recovery and archival works.
  WriteFile(daemon_->tokens().conf_path(), full_conf);
  const std::string tokens = daemon_->tokens().dir() + "/tokens";
  ASSERT_EQ(std::rename(tokens.c_str(), (tokens + ".away").c_str()), 0);
  ASSERT_TRUE(daemon_->WaitForLog("token unavailable", 1).ok());
  ASSERT_EQ(std::rename((tokens + ".away").c_str(), tokens.c_str()), 0);
  ASSERT_TRUE(daemon_->WaitForLog("archival self-test passed", 1, std::chrono::seconds(60)).ok());
  EXPECT_EQ(AuditEvents("archival.selftest_passed").size(), 1u);
  int health = -1;
  for (int i = 0; i < 50 && health != 1; ++i) {
    health = HealthOf(channel, "keywarden.v1.Enrollment");
    if (health != 1) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(health, 1);
  Requester again = NewRequester("");
  v1::EnrollmentResult archived;
  st = Submit(ArchivalRequest(again, BlobOf(again.key.get()), exchange.get()), "ArchivalUser",
              &archived);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(archived.disposition(), v1::DISPOSITION_ISSUED) << archived.message();
}

}  // namespace
}  // namespace keywarden::testing
