// The client's CMC key archival request (pki/cmc_builder.h): our parser
// accepts it, its ASN.1 layout is a Windows request's, the openssl command
// line verifies its signature and decrypts its key, and tampering is refused.
#include "pki/cmc_builder.h"

#include <algorithm>

#include <gtest/gtest.h>

#include "hsm/keys.h"
#include "hsm/strings.h"
#include "pki/cmc.h"
#include "pki/der.h"
#include "pki/private_key_blob.h"
#include "tests/pki/exchange_test_certs.h"
#include "tests/test_util.h"

#ifndef KEYWARDEN_VECTORS
#error "KEYWARDEN_VECTORS must name shared/vectors/windows-key-archival"
#endif

namespace keywarden::testing {
namespace {

std::vector<uint8_t> Sha(const char* name, std::span<const uint8_t> data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, EVP_get_digestbyname(name), nullptr);
  return {out, out + len};
}

size_t Find(const std::vector<uint8_t>& hay, const std::vector<uint8_t>& needle) {
  auto it = std::search(hay.begin(), hay.end(), needle.begin(), needle.end());
  return it == hay.end() ? std::string::npos : static_cast<size_t>(it - hay.begin());
}

// The ASN.1 skeleton of a request: one line per element with its depth and
// tag, OIDs and small INTEGERs with their values, descending into the
// PKIData OCTET STRING. The parts that legitimately differ between any two
// requests are collapsed: the PKCS#10 (subject, extensions) and names.
void Skeleton(std::span<const uint8_t> data, int depth, uint8_t parent_tag, std::string* out) {
  pki::DerReader r(data);
  pki::DerElement e;
  int index = 0;
  while (r.Next(&e)) {
    std::string line(static_cast<size_t>(depth) * 2, ' ');
    char tag[8];
    std::snprintf(tag, sizeof tag, "%02x", e.tag);
    line += tag;
    if (e.tag == pki::der::kOid) line += " " + pki::OidToText(e.contents);
    int64_t v = 0;
    if (e.tag == pki::der::kInteger && e.contents.size() <= 2 && pki::ReadSmallInt(e.contents, &v))
      line += " " + std::to_string(v);
    pki::DerReader probe(e.contents);
    pki::DerElement first;
    const bool is_name =
        e.tag == pki::der::kSequence && probe.Next(&first) && first.tag == pki::der::kSet;
    const bool is_pkcs10 = e.tag == pki::der::kSequence && parent_tag == 0xa0 && index == 1;
    if (is_name) {
      line += " Name";
    } else if (is_pkcs10) {
      line += " PKCS#10";
    }
    *out += line + "\n";
    const bool econtent = e.tag == pki::der::kOctetString && parent_tag == 0xa0 && index == 0;
    if (!is_name && !is_pkcs10 && ((e.tag & 0x20) != 0 || econtent)) {
      Skeleton(e.contents, depth + 1, e.tag, out);
    }
    ++index;
  }
  if (!r.empty()) *out += "MALFORMED\n";
}

std::string Skeleton(std::span<const uint8_t> der) {
  std::string out;
  Skeleton(der, 0, 0, &out);
  return out;
}

class CmcBuilderTest : public ::testing::Test {
 protected:
  ArchivalCa ca_;
  ossl::UniquePtr<EVP_PKEY> key_ = SoftwareRsaKey(2048);
  TempDir dir_;

  pki::ArchivalRequestOptions Options() const {
    pki::ArchivalRequestOptions o;
    o.template_name = "ArchivalUser";
    return o;
  }

  std::vector<uint8_t> Build(const pki::ArchivalRequestOptions& o) {
    auto der = pki::BuildArchivalRequest(key_.get(), ca_.exchange.get(), o);
    EXPECT_TRUE(der.ok()) << der.status();
    return der.ok() ? *der : std::vector<uint8_t>();
  }

  // `openssl cms -decrypt` of the request's 21.13 envelope with the exchange key.
  CommandResult OpensslDecrypt(const std::vector<uint8_t>& envelope, const std::string& out) {
    WriteFile(dir_.File("env.der"), envelope);
    WriteFile(dir_.File("xchg.key"), PrivateKeyPem(ca_.exchange_key.get()));
    return RunCommand(StrCat("openssl cms -decrypt -binary -inform DER -in ", dir_.File("env.der"),
                             " -inkey ", dir_.File("xchg.key"), " -out ", out));
  }
};

TEST_F(CmcBuilderTest, OurParserAcceptsTheRequestAndSeesEveryPart) {
  ASSERT_NE(ca_.exchange, nullptr);
  auto subject = pki::ParseName("CN=alice,O=keywarden test");
  ASSERT_TRUE(subject.ok());
  auto o = Options();
  o.subject = subject->get();
  o.template_oid = "1.3.6.1.4.1.311.21.8.1.2";
  const auto der = Build(o);
  auto req = pki::ParseCmcRequest(der);
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->digest, "SHA1");
  EXPECT_TRUE(req->signer_by_key_id);
  EXPECT_EQ(req->pkcs10_body_part_id, 1);
  EXPECT_EQ(req->pkcs10.template_name, "ArchivalUser");
  EXPECT_EQ(req->pkcs10.template_oid, "1.3.6.1.4.1.311.21.8.1.2");
  EXPECT_FALSE(req->pkcs10.empty_subject);
  EXPECT_EQ(pki::FormatName(X509_REQ_get_subject_name(req->pkcs10.req.get())),
            "CN=alice,O=keywarden test");
  EXPECT_EQ(EVP_PKEY_eq(req->pkcs10.public_key(), key_.get()), 1);
  ASSERT_TRUE(req->encrypted_key.has_value());
  ASSERT_TRUE(req->encrypted_key_hash.has_value());
  EXPECT_EQ(*req->encrypted_key_hash, Sha("SHA1", *req->encrypted_key));
  EXPECT_TRUE(req->client_info.empty());
  // The PKCS#10 asks for key encipherment (a signature-only key is not archivable).
  X509_REQ* csr = req->pkcs10.req.get();
  STACK_OF(X509_EXTENSION)* exts = X509_REQ_get_extensions(csr);
  ASSERT_NE(exts, nullptr);
  bool ku = false, ski = false;
  for (int i = 0; i < sk_X509_EXTENSION_num(exts); ++i) {
    const int nid = OBJ_obj2nid(X509_EXTENSION_get_object(sk_X509_EXTENSION_value(exts, i)));
    ku |= nid == NID_key_usage;
    ski |= nid == NID_subject_key_identifier;
  }
  sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
  EXPECT_TRUE(ku);
  EXPECT_TRUE(ski);
}

TEST_F(CmcBuilderTest, LayoutIsTheWindowsRequestLayout) {
  const auto windows = ReadRequiredFile(std::string(KEYWARDEN_VECTORS) + "/user-enroll-1.der");
  const std::string expected = Skeleton(windows);
  ASSERT_EQ(expected.find("MALFORMED"), std::string::npos);
  // Spot checks that the skeleton sees what the README describes.
  EXPECT_NE(expected.find("06 1.3.6.1.4.1.311.21.13"), std::string::npos) << expected;
  EXPECT_NE(expected.find("06 1.2.840.113549.3.7"), std::string::npos) << expected;
  EXPECT_NE(expected.find(" PKCS#10"), std::string::npos) << expected;

  auto o = Options();
  o.template_oid = "1.3.6.1.4.1.311.21.8.1.2";  // Windows v2 requests name the template by OID
  EXPECT_EQ(Skeleton(Build(o)), expected);
  // With the subject and client info the sample request carries, the
  // control holds one more attribute, as in sample-request.der.
  o.client_info = pki::RequestClientInfo{9, "host.example", "EXAMPLE\\alice", "keywarden"};
  const std::string with_info = Skeleton(Build(o));
  const std::string sample =
      Skeleton(ReadRequiredFile(std::string(KEYWARDEN_VECTORS) + "/sample-request.der"));
  auto control = [](const std::string& s) { return s.substr(0, s.find(" PKCS#10")); };
  EXPECT_EQ(control(with_info), control(sample));
}

TEST_F(CmcBuilderTest, OpensslVerifiesTheSignatureWithTheRequestKey) {
  const auto der = Build(Options());
  WriteFile(dir_.File("req.der"), der);
  // CMS needs a certificate to verify with: a throwaway one carrying the
  // request key, whose key id (SHA-1 of the key bits) the SignerInfo names.
  ossl::UniquePtr<X509> signer(X509_new());
  X509_set_version(signer.get(), X509_VERSION_3);
  ASN1_INTEGER_set(X509_get_serialNumber(signer.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(signer.get()), -60);
  X509_gmtime_adj(X509_getm_notAfter(signer.get()), 60);
  X509_set_pubkey(signer.get(), key_.get());
  ASSERT_TRUE(pki::AddExtension(signer.get(), signer.get(), NID_subject_key_identifier, "hash"));
  ASSERT_GT(X509_sign(signer.get(), key_.get(), EVP_sha256()), 0);
  WriteFile(dir_.File("signer.pem"), ToPem(signer.get()));
  auto r = RunCommand(StrCat("openssl cms -verify -noverify -binary -inform DER -in ",
                             dir_.File("req.der"), " -certfile ", dir_.File("signer.pem"), " -out ",
                             dir_.File("content.der")));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  // The verified content is the PKIData: our parser's PKCS#10 is inside it.
  auto req = pki::ParseCmcRequest(der);
  ASSERT_TRUE(req.ok());
  EXPECT_NE(Find(ReadFile(dir_.File("content.der")), req->pkcs10.der), std::string::npos);

  // A different key does not verify.
  auto other = SoftwareRsaKey(2048);
  X509_set_pubkey(signer.get(), other.get());
  ASSERT_GT(X509_sign(signer.get(), other.get(), EVP_sha256()), 0);
  WriteFile(dir_.File("other.pem"), ToPem(signer.get()));
  auto bad = RunCommand(StrCat("openssl cms -verify -noverify -binary -inform DER -in ",
                               dir_.File("req.der"), " -certfile ", dir_.File("other.pem"),
                               " -out ", dir_.File("content2.der")));
  EXPECT_NE(bad.exit_code, 0) << bad.output;
}

TEST_F(CmcBuilderTest, OpensslDecryptsAPrivateKeyBlobThatPairsWithTheRequest) {
  const auto der = Build(Options());
  auto req = pki::ParseCmcRequest(der);
  ASSERT_TRUE(req.ok()) << req.status();
  WriteFile(dir_.File("env.der"), *req->encrypted_key);
  auto print = RunCommand("openssl cms -cmsout -print -inform DER -in " + dir_.File("env.der"));
  ASSERT_EQ(print.exit_code, 0) << print.output;
  EXPECT_NE(print.output.find("des-ede3-cbc"), std::string::npos) << print.output;
  EXPECT_NE(print.output.find("rsaEncryption"), std::string::npos) << print.output;
  EXPECT_NE(print.output.find("issuerAndSerialNumber"), std::string::npos) << print.output;

  auto r = OpensslDecrypt(*req->encrypted_key, dir_.File("blob.bin"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const auto blob = ReadFile(dir_.File("blob.bin"));
  ASSERT_EQ(blob.size(), pki::PrivateKeyBlobSize(2048));
  pki::KeySpec spec = pki::KeySpec::kSignature;
  auto recovered = pki::ParsePrivateKeyBlob(blob, &spec);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_EQ(spec, pki::KeySpec::kExchange);
  EXPECT_TRUE(pki::CheckKeyPairMatches(recovered->get(), req->pkcs10.public_key()).ok());

  // The wrong key cannot open it (check the exit status: openssl still writes -out).
  // -debug_decrypt: without -recip, openssl otherwise answers a failed key
  // transport with a random content key (the Bleichenbacher countermeasure),
  // and about 1 in 256 of those happens to end in valid CBC padding.
  auto stranger = SoftwareRsaKey(2048);
  WriteFile(dir_.File("stranger.key"), PrivateKeyPem(stranger.get()));
  auto no = RunCommand(StrCat("openssl cms -decrypt -debug_decrypt -binary -inform DER -in ",
                              dir_.File("env.der"), " -inkey ", dir_.File("stranger.key"), " -out ",
                              dir_.File("junk.bin")));
  EXPECT_NE(no.exit_code, 0);
}

TEST_F(CmcBuilderTest, AesPkcs8AndSha256RequestsParseAndDecrypt) {
  auto o = Options();
  o.cipher = pki::ContentCipher::kAes256Cbc;
  o.key_format = pki::ArchivedKeyFormat::kPkcs8;
  o.digest = "sha-256";
  const auto der = Build(o);
  auto req = pki::ParseCmcRequest(der);
  ASSERT_TRUE(req.ok()) << req.status();
  EXPECT_EQ(req->digest, "SHA256");
  EXPECT_EQ(X509_REQ_get_signature_nid(req->pkcs10.req.get()), NID_sha256WithRSAEncryption);
  ASSERT_EQ(req->encrypted_key_hash->size(), 32u);
  EXPECT_EQ(*req->encrypted_key_hash, Sha("SHA256", *req->encrypted_key));
  WriteFile(dir_.File("env.der"), *req->encrypted_key);
  auto print = RunCommand("openssl cms -cmsout -print -inform DER -in " + dir_.File("env.der"));
  EXPECT_NE(print.output.find("aes-256-cbc"), std::string::npos) << print.output;
  auto r = OpensslDecrypt(*req->encrypted_key, dir_.File("key.p8"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  bool was_blob = true;
  auto recovered = pki::ParsePrivateKeyPlaintext(ReadFile(dir_.File("key.p8")), &was_blob, nullptr);
  ASSERT_TRUE(recovered.ok()) << recovered.status();
  EXPECT_FALSE(was_blob);
  EXPECT_TRUE(pki::CheckKeyPairMatches(recovered->get(), req->pkcs10.public_key()).ok());
}

TEST_F(CmcBuilderTest, ClientInfoIsCarriedInTheControlAndThePkcs10) {
  auto o = Options();
  o.client_info = pki::RequestClientInfo{9, "host.example", "EXAMPLE\\alice", "keywarden"};
  const auto der = Build(o);
  auto req = pki::ParseCmcRequest(der);
  ASSERT_TRUE(req.ok()) << req.status();
  ASSERT_FALSE(req->client_info.empty());
  WriteFile(dir_.File("info.der"), req->client_info);
  auto r = RunCommand("openssl asn1parse -inform DER -in " + dir_.File("info.der"));
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find(":09"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("UTF8STRING        :host.example"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find(":EXAMPLE\\alice"), std::string::npos) << r.output;
  EXPECT_EQ(Find(req->pkcs10.der, req->client_info) != std::string::npos, true);
}

TEST_F(CmcBuilderTest, TamperingIsRefusedByTheParserNamingTheCheck) {
  const auto original = Build(Options());
  auto parsed = pki::ParseCmcRequest(original);
  ASSERT_TRUE(parsed.ok());
  const size_t key_at = Find(original, *parsed->encrypted_key);
  const size_t hash_at = Find(original, *parsed->encrypted_key_hash);
  const size_t csr_at = Find(original, parsed->pkcs10.der);
  ASSERT_NE(key_at, std::string::npos);
  ASSERT_NE(hash_at, std::string::npos);
  ASSERT_NE(csr_at, std::string::npos);

  struct Case {
    size_t at;
    const char* expect;
  } cases[] = {
      {key_at + parsed->encrypted_key->size() - 5, "1.3.6.1.4.1.311.21.21"},  // ciphertext
      {hash_at + 3, "messageDigest"},                                         // signed hash
      {csr_at + 40, "PKCS#10"},                                               // the CSR body
      {key_at - 40, "CMS signature does not verify"},                         // signature value
  };
  for (const Case& c : cases) {
    auto bad = original;
    bad[c.at] ^= 0x01;
    auto r = pki::ParseCmcRequest(bad);
    ASSERT_FALSE(r.ok()) << "byte " << c.at << " changed, still accepted";
    EXPECT_NE(r.status().message().find(c.expect), absl::string_view::npos)
        << c.expect << " / " << r.status();
  }

  // A request signed by another key than the PKCS#10's (the signer names its own key).
  auto other = SoftwareRsaKey(2048);
  auto mixed = pki::BuildArchivalRequest(other.get(), ca_.exchange.get(), Options());
  ASSERT_TRUE(mixed.ok());
  auto other_req = pki::ParseCmcRequest(*mixed);
  ASSERT_TRUE(other_req.ok());
  std::vector<uint8_t> swapped = *mixed;
  const size_t at = Find(swapped, other_req->pkcs10.der);
  ASSERT_NE(at, std::string::npos);
  // Same length (both 2048-bit keys, same template): put our PKCS#10 in.
  ASSERT_EQ(other_req->pkcs10.der.size(), parsed->pkcs10.der.size());
  std::copy(parsed->pkcs10.der.begin(), parsed->pkcs10.der.end(), swapped.begin() + at);
  auto r = pki::ParseCmcRequest(swapped);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("key identifier is not the PKCS#10 key's"),
            absl::string_view::npos)
      << r.status();
}

TEST_F(CmcBuilderTest, WhatCannotBeArchivedIsRefusedClearly) {
  auto ec = ossl::UniquePtr<EVP_PKEY>(EVP_EC_gen("P-256"));
  auto r = pki::BuildArchivalRequest(ec.get(), ca_.exchange.get(), Options());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("must be RSA"), absl::string_view::npos) << r.status();

  // An EC exchange certificate cannot be encrypted to.
  auto ec_xchg = MakeExchangeCert(ca_.ca.get(), ca_.ca_key.get(), ec.get());
  ASSERT_NE(ec_xchg, nullptr);
  r = pki::BuildArchivalRequest(key_.get(), ec_xchg.get(), Options());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not RSA"), absl::string_view::npos) << r.status();

  auto o = Options();
  o.digest = "MD5";
  r = pki::BuildArchivalRequest(key_.get(), ca_.exchange.get(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("unsupported digest \"MD5\""), absl::string_view::npos);

  o = Options();
  o.template_oid = "not an oid";
  r = pki::BuildArchivalRequest(key_.get(), ca_.exchange.get(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not a dotted OID"), absl::string_view::npos);

  r = pki::BuildArchivalRequest(key_.get(), nullptr, Options());
  ASSERT_FALSE(r.ok());
}

}  // namespace
}  // namespace keywarden::testing
