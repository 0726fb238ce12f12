// libFuzzer target: the requester's encrypted private key in a Windows
// archival request (CMC attribute 1.3.6.1.4.1.311.21.13), taken the way the
// archiver takes it: parsed as CMS EnvelopedData, matched to an exchange
// certificate by its RecipientInfo, decrypted with the exchange key, and
// the plaintext parsed as a PRIVATEKEYBLOB or PKCS#8. The exchange key is
// the published Windows vectors' one (in software here, on the token in the
// CA) with a certificate bearing the issuer and serial the vectors'
// envelopes name, so mutations of real envelopes reach the decryption and
// the key parser. Never a crash.
#include <openssl/cms.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <vector>

#include "pki/cmc.h"
#include "pki/envelope.h"
#include "pki/private_key_blob.h"

namespace {

using namespace keywarden;

std::vector<uint8_t> ReadVector(const char* name) {
  std::ifstream f(std::string(KEYWARDEN_VECTORS_DIR) + "/" + name, std::ios::binary);
  return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), {});
}

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "encrypted_key_fuzzer: %s (vectors in %s)\n", what, KEYWARDEN_VECTORS_DIR);
  std::abort();
}

struct Exchange {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> certificate;  // issuer and serial as user-enroll-1 names them
  ossl::UniquePtr<X509> other;        // an exchange certificate no envelope names
};

ossl::UniquePtr<X509> SelfSigned(EVP_PKEY* key, const X509_NAME* issuer,
                                 const ASN1_INTEGER* serial) {
  ossl::UniquePtr<X509> x(X509_new());
  X509_set_version(x.get(), 2);
  X509_set_serialNumber(x.get(), const_cast<ASN1_INTEGER*>(serial));
  X509_set_issuer_name(x.get(), issuer);
  X509_set_subject_name(x.get(), issuer);
  X509_gmtime_adj(X509_getm_notBefore(x.get()), 0);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), 86400);
  X509_set_pubkey(x.get(), key);
  if (X509_sign(x.get(), key, EVP_sha256()) <= 0) Die("cannot sign the exchange certificate");
  return x;
}

const Exchange& TheExchange() {
  static const Exchange* exchange = [] {
    auto* e = new Exchange;
    const std::vector<uint8_t> pem = ReadVector("ca-exchange-key.pem");
    ossl::UniquePtr<BIO> bio(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
    e->key.reset(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr));
    if (!e->key) Die("cannot read ca-exchange-key.pem");
    const std::vector<uint8_t> request = ReadVector("user-enroll-1.der");
    auto cmc = pki::ParseCmcRequest(request);
    if (!cmc.ok() || !cmc->encrypted_key) Die("user-enroll-1.der carries no encrypted key");
    const unsigned char* p = cmc->encrypted_key->data();
    ossl::UniquePtr<CMS_ContentInfo> cms(
        d2i_CMS_ContentInfo(nullptr, &p, static_cast<long>(cmc->encrypted_key->size())));
    if (!cms) Die("user-enroll-1.der's encrypted key is not CMS");
    CMS_RecipientInfo* ri = sk_CMS_RecipientInfo_value(CMS_get0_RecipientInfos(cms.get()), 0);
    ASN1_OCTET_STRING* keyid = nullptr;
    X509_NAME* issuer = nullptr;
    ASN1_INTEGER* serial = nullptr;
    if (ri == nullptr || CMS_RecipientInfo_ktri_get0_signer_id(ri, &keyid, &issuer, &serial) != 1 ||
        issuer == nullptr || serial == nullptr) {
      Die("user-enroll-1.der's envelope names no issuer and serial");
    }
    e->certificate = SelfSigned(e->key.get(), issuer, serial);
    ossl::UniquePtr<ASN1_INTEGER> one(ASN1_INTEGER_new());
    ASN1_INTEGER_set(one.get(), 1);
    e->other = SelfSigned(e->key.get(), issuer, one.get());
    return e;
  }();
  return *exchange;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)TheExchange();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const Exchange& x = TheExchange();
  auto envelope = pki::ClientEnvelope::Parse(std::span<const uint8_t>(data, size), nullptr);
  if (!envelope.ok()) return 0;
  X509* candidates[] = {x.other.get(), x.certificate.get()};
  const std::optional<size_t> matched = envelope->Match(candidates);
  if (!matched) return 0;
  auto plaintext = envelope->Decrypt(x.key.get(), candidates[*matched]);
  if (!plaintext.ok()) return 0;
  bool was_blob = false;
  uint32_t ai_key_alg = 0;
  (void)pki::ParsePrivateKeyPlaintext(plaintext->span(), &was_blob, &ai_key_alg);
  return 0;
}
