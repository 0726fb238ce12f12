// Software CA and CA exchange certificates for the key archival client
// tests: a good exchange certificate and the broken ones the client must
// refuse (wrong signer, no exchange EKU, no keyEncipherment, expired, EC).
#pragma once

#include <string>

#include <openssl/x509v3.h>

#include "pki/certificate.h"
#include "tests/test_util.h"

namespace keywarden::testing {

struct ExchangeCertSpec {
  bool exchange_eku = true;                            // 1.3.6.1.4.1.311.21.5
  std::string key_usage = "critical,keyEncipherment";  // empty: no keyUsage extension
  long not_before = -60;                               // seconds from now
  long not_after = 7L * 24 * 3600;                     // seconds from now
  EVP_PKEY* sign_with = nullptr;                       // default: the CA key
  std::string cn = "keywarden Test CA-Xchg";
};

// An exchange certificate for `key`, issued in `ca`'s name.
inline ossl::UniquePtr<X509> MakeExchangeCert(X509* ca, EVP_PKEY* ca_key, EVP_PKEY* key,
                                              const ExchangeCertSpec& spec = {}) {
  ossl::UniquePtr<X509> x(X509_new());
  X509_set_version(x.get(), X509_VERSION_3);
  auto serial = pki::RandomSerial();
  if (!serial.ok()) return nullptr;
  X509_set_serialNumber(x.get(), serial->get());
  X509_NAME* name = X509_get_subject_name(x.get());
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8,
                             reinterpret_cast<const unsigned char*>(spec.cn.c_str()), -1, -1, 0);
  X509_set_issuer_name(x.get(), X509_get_subject_name(ca));
  X509_gmtime_adj(X509_getm_notBefore(x.get()), spec.not_before);
  X509_gmtime_adj(X509_getm_notAfter(x.get()), spec.not_after);
  X509_set_pubkey(x.get(), key);
  if (!spec.key_usage.empty() && !pki::AddExtension(x.get(), ca, NID_key_usage, spec.key_usage)) {
    return nullptr;
  }
  const std::string eku = spec.exchange_eku ? "1.3.6.1.4.1.311.21.5" : "emailProtection";
  if (!pki::AddExtension(x.get(), ca, NID_ext_key_usage, eku) ||
      !pki::AddExtension(x.get(), ca, NID_subject_key_identifier, "hash") ||
      !pki::AddExtension(x.get(), ca, NID_authority_key_identifier, "keyid:always")) {
    return nullptr;
  }
  if (X509_sign(x.get(), spec.sign_with != nullptr ? spec.sign_with : ca_key, EVP_sha256()) <= 0) {
    return nullptr;
  }
  return x;
}

// A CA key and certificate with a good exchange certificate.
struct ArchivalCa {
  ossl::UniquePtr<EVP_PKEY> ca_key = SoftwareRsaKey(2048);
  ossl::UniquePtr<X509> ca = SelfSignedCa(nullptr, ca_key.get(), "keywarden Test CA");
  ossl::UniquePtr<EVP_PKEY> exchange_key = SoftwareRsaKey(2048);
  ossl::UniquePtr<X509> exchange = MakeExchangeCert(ca.get(), ca_key.get(), exchange_key.get());
};

}  // namespace keywarden::testing
