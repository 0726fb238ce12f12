// A software CA for tests that need certificates from "another CA": KRA
// certificates (EKU 1.3.6.1.4.1.311.21.6) for the daemon's [kra] section,
// and the CRL that makes them usable there.
#pragma once

#include <ctime>
#include <string>
#include <vector>

#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "hsm/ossl.h"
#include "pki/certificate.h"
#include "tests/test_util.h"

namespace keywarden::testing {

inline constexpr char kKraEku[] = "1.3.6.1.4.1.311.21.6";

// A software CA that issues KRA certificates (a "foreign" issuer for the
// daemon), with a CRL it can publish.
struct SoftCa {
  ossl::UniquePtr<EVP_PKEY> key;
  ossl::UniquePtr<X509> cert;
  std::vector<X509*> revoked;

  static SoftCa Make(const std::string& cn) {
    SoftCa ca;
    ca.key = SoftwareRsaKey(2048);
    ca.cert = SelfSignedCa(nullptr, ca.key.get(), cn);
    return ca;
  }

  struct Issued {
    ossl::UniquePtr<EVP_PKEY> key;
    ossl::UniquePtr<X509> cert;
  };
  Issued Issue(const std::string& cn, const char* eku = kKraEku, long not_before = -3600,
               long not_after = 3600L * 24 * 365, const char* ku = "keyEncipherment") {
    Issued out;
    out.key = SoftwareRsaKey(2048);
    out.cert.reset(X509_new());
    X509* x = out.cert.get();
    X509_set_version(x, X509_VERSION_3);
    auto serial = pki::RandomSerial();
    X509_set_serialNumber(x, serial->get());
    auto name = pki::ParseName("CN=" + cn + ",O=keywarden test");
    X509_set_subject_name(x, name->get());
    X509_set_issuer_name(x, X509_get_subject_name(cert.get()));
    X509_gmtime_adj(X509_getm_notBefore(x), not_before);
    X509_gmtime_adj(X509_getm_notAfter(x), not_after);
    X509_set_pubkey(x, out.key.get());
    pki::AddExtension(x, cert.get(), NID_basic_constraints, "critical,CA:FALSE");
    if (ku != nullptr) pki::AddExtension(x, cert.get(), NID_key_usage, ku);
    if (eku != nullptr) pki::AddExtension(x, cert.get(), NID_ext_key_usage, eku);
    pki::AddExtension(x, cert.get(), NID_subject_key_identifier, "hash");
    X509_sign(x, key.get(), EVP_sha256());
    return out;
  }

  std::string Crl() const {
    ossl::UniquePtr<X509_CRL> crl(X509_CRL_new());
    X509_CRL_set_version(crl.get(), 1);
    X509_CRL_set_issuer_name(crl.get(), X509_get_subject_name(cert.get()));
    ossl::UniquePtr<ASN1_STRING> now(ASN1_TIME_adj(nullptr, time(nullptr), 0, -60));
    ossl::UniquePtr<ASN1_STRING> next(ASN1_TIME_adj(nullptr, time(nullptr), 7, 0));
    X509_CRL_set1_lastUpdate(crl.get(), now.get());
    X509_CRL_set1_nextUpdate(crl.get(), next.get());
    for (X509* r : revoked) {
      X509_REVOKED* entry = X509_REVOKED_new();
      X509_REVOKED_set_serialNumber(entry, X509_get_serialNumber(r));
      X509_REVOKED_set_revocationDate(entry, now.get());
      X509_CRL_add0_revoked(crl.get(), entry);
    }
    X509_CRL_sort(crl.get());
    X509_CRL_sign(crl.get(), key.get(), EVP_sha256());
    ossl::UniquePtr<BIO> b(BIO_new(BIO_s_mem()));
    PEM_write_bio_X509_CRL(b.get(), crl.get());
    char* data = nullptr;
    long len = BIO_get_mem_data(b.get(), &data);
    return std::string(data, static_cast<size_t>(len));
  }
};

}  // namespace keywarden::testing
